/**
 * Function management use cases: what the API does, in terms of the ports. Every change is
 * stored first, then announced to the scheduler, so a crash in between loses nothing acknowledged.
 */
import { changeFunction, newFunction, publicView } from './function-spec.js';
import { notFound } from './errors.js';
import { invocationStats, type InvocationStats, type StatsWindow } from './invocation-stats.js';
import { INVOCATIONS_KEPT, type InvocationQuery } from './invocations.js';
import type { LogFilter, LogLine, LogPage, LogQuery } from './logs.js';
import type { ArchiveFormat, CodeStore, FunctionStore, InvocationLog, LogReader, Placement } from './ports.js';
import { functionStatus, type StartFailures } from './start-failures.js';
import type { FunctionRecord, FunctionView, InstanceInfo, InvocationRecord } from './types.js';

export class FunctionService {
  constructor(
    private readonly store: FunctionStore,
    private readonly code: CodeStore,
    private readonly invocationLog: InvocationLog,
    private readonly placement: Placement,
    private readonly startFailures: StartFailures,
    private readonly logReader: LogReader,
  ) {}

  /** The record as the API shows it: env var values masked, and whether the function is failing to start. */
  view(fn: FunctionRecord): FunctionView {
    return { ...publicView(fn), ...functionStatus(this.startFailures.get(fn.id), fn.version) };
  }

  async create(body: unknown): Promise<FunctionRecord> {
    const fn = newFunction(body);
    await this.store.create(fn);
    return fn;
  }

  async get(idOrName: string): Promise<FunctionRecord> {
    const fn = await this.store.get(idOrName);
    if (!fn) throw notFound(`no function ${idOrName}`);
    return fn;
  }

  list(): Promise<FunctionRecord[]> {
    return this.store.list();
  }

  async change(idOrName: string, body: unknown, mode: 'replace' | 'patch'): Promise<FunctionRecord> {
    const fn = await this.get(idOrName);
    const next = changeFunction(fn, body, mode);
    if (next === fn) return fn;
    await this.store.update(next);
    this.placement.updated(next);
    return next;
  }

  async delete(idOrName: string): Promise<void> {
    const fn = await this.get(idOrName);
    await this.store.delete(fn.id);
    this.invocationLog.forget(fn.id);
    this.startFailures.clear(fn.id, Number.POSITIVE_INFINITY);
    await this.placement.removed(fn.id);
    await this.logReader.remove(fn.id);
    if (fn.code_hash && !(await this.store.list()).some((f) => f.code_hash === fn.code_hash)) await this.code.remove(fn.code_hash);
  }

  /**
   * Stores and validates the archive (safe to unpack, and the function's entry point resolves in it)
   * before anything changes: a rejected upload leaves the old code serving.
   */
  async uploadCode(idOrName: string, archive: NodeJS.ReadableStream, format: ArchiveFormat): Promise<FunctionRecord> {
    const { entrypoint } = await this.get(idOrName);
    const stored = await this.code.put(archive, format, { check: { entrypoint } });
    const fn = await this.get(idOrName); // re-read: the function may have changed or gone during the upload
    const next: FunctionRecord = {
      ...fn,
      code_hash: stored.hash,
      code_size: stored.size,
      version: fn.version + 1,
      updated_at: new Date().toISOString(),
    };
    await this.store.update(next);
    this.placement.updated(next);
    return next;
  }

  async instances(idOrName: string): Promise<InstanceInfo[]> {
    return this.placement.instances((await this.get(idOrName)).id);
  }

  async invocations(idOrName: string, query: InvocationQuery): Promise<InvocationRecord[]> {
    return this.invocationLog.query((await this.get(idOrName)).id, query);
  }

  /** Rates, errors and latency over a recent window, from the kept invocation records (at most INVOCATIONS_KEPT read). */
  async stats(idOrName: string, window: StatsWindow, now = Date.now()): Promise<InvocationStats> {
    const records = await this.invocationLog.query((await this.get(idOrName)).id, { limit: INVOCATIONS_KEPT });
    return invocationStats(records, window, now, INVOCATIONS_KEPT);
  }

  async logs(idOrName: string, q: LogQuery): Promise<LogPage> {
    return this.logReader.query((await this.get(idOrName)).id, q);
  }

  /**
   * New lines as they arrive, from every instance (those started later too): after the cursor
   * `after` if given, else from `since`, else from now.
   */
  async followLogs(
    idOrName: string,
    filter: LogFilter,
    from: { after?: string; since?: number },
    signal: AbortSignal,
  ): Promise<AsyncIterable<LogLine[]>> {
    const { id } = await this.get(idOrName);
    const after = from.after ?? (await this.logReader.cursorAt(id, from.since));
    return this.logReader.follow(id, filter, after, signal);
  }
}
