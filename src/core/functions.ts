/**
 * Function management use cases: what the API does, in terms of the ports. Every change is
 * stored first, then announced to the scheduler, so a crash in between loses nothing acknowledged.
 */
import { changeFunction, newFunction, publicView } from './function-spec.js';
import { notFound } from './errors.js';
import { invocationStats, type InvocationStats, type StatsWindow } from './invocation-stats.js';
import { INVOCATIONS_KEPT, type InvocationQuery } from './invocations.js';
import type { LogFilter, LogLine, LogPage, LogQuery } from './logs.js';
import type { ArchiveFormat, AsyncQueue, CodeStore, FunctionStore, InvocationLog, LogReader, Placement } from './ports.js';
import { functionStatus, type StartFailures } from './start-failures.js';
import type { AliasRecord, FunctionRecord, FunctionView, InstanceInfo, InvocationRecord } from './types.js';
import { aliasNotFound, newAlias, putAliasSchema, type Resolved, resolveQualified, versionRecord, versionsToRemove } from './versions.js';
import { validate } from './validate.js';

export interface FunctionSettings {
  /** The newest versions whose code is kept (besides those an alias runs); older ones are removed. */
  versionsKept: number;
}

export class FunctionService {
  constructor(
    private readonly store: FunctionStore,
    private readonly code: CodeStore,
    private readonly invocationLog: InvocationLog,
    private readonly placement: Placement,
    private readonly startFailures: StartFailures,
    private readonly logReader: LogReader,
    private readonly settings: FunctionSettings,
    /** Where a deleted function's async events and dead letters go from (where async invocations are taken). */
    private readonly asyncQueue?: Pick<AsyncQueue, 'forget'>,
  ) {}

  /** The record as the API shows it: env var values masked, whether the function is failing to start, and how it starts. */
  view(fn: FunctionRecord): FunctionView {
    const start = this.placement.startMode?.(fn.id);
    return { ...publicView(fn), ...functionStatus(this.startFailures.get(fn.id), fn.version), ...(start && { start }) };
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
    await this.deployed(next);
    return next;
  }

  async delete(idOrName: string): Promise<void> {
    const fn = await this.get(idOrName);
    const versions = await this.store.versions(fn.id);
    await this.store.delete(fn.id);
    this.invocationLog.forget(fn.id);
    this.startFailures.clear(fn.id, Number.POSITIVE_INFINITY);
    await this.placement.removed(fn.id);
    await this.logReader.remove(fn.id);
    await this.asyncQueue?.forget(fn.id);
    await this.removeUnusedCode([fn, ...versions]);
  }

  /** What an invocation of `idOrName` with `qualifier` (none, `$LATEST`, a version number or an alias) runs. */
  resolve(idOrName: string, qualifier?: string): Promise<Resolved> {
    return resolveQualified(this.store, idOrName, qualifier);
  }

  /** Newest first; the current version is always among them. */
  async versions(idOrName: string): Promise<FunctionRecord[]> {
    const fn = await this.get(idOrName);
    const versions = await this.store.versions(fn.id);
    // A function deployed before versions were stored has only its current record.
    return fn.version >= 1 && versions[0]?.version !== fn.version ? [fn, ...versions] : versions;
  }

  async version(idOrName: string, version: number): Promise<FunctionRecord> {
    return versionRecord(this.store, await this.get(idOrName), version);
  }

  async aliases(idOrName: string): Promise<AliasRecord[]> {
    return this.store.aliases((await this.get(idOrName)).id);
  }

  async alias(idOrName: string, name: string): Promise<AliasRecord> {
    const fn = await this.get(idOrName);
    const alias = await this.store.alias(fn.id, name);
    if (!alias) throw aliasNotFound(fn, name);
    return alias;
  }

  /** Creates or moves an alias: invocations through it run the new version(s) from the next one on. */
  async putAlias(idOrName: string, name: string, body: unknown): Promise<AliasRecord> {
    const input = validate(putAliasSchema, body);
    const fn = await this.get(idOrName);
    const known = new Set((await this.versions(fn.id)).filter((v) => v.code_hash !== null).map((v) => v.version));
    const alias = newAlias(fn, name, input, (v) => known.has(v), await this.store.alias(fn.id, name));
    await this.store.putAlias(alias);
    return alias;
  }

  async deleteAlias(idOrName: string, name: string): Promise<void> {
    const fn = await this.get(idOrName);
    if (!(await this.store.deleteAlias(fn.id, name))) throw aliasNotFound(fn, name);
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
    await this.deployed(next);
    return next;
  }

  /** Stores a new version, announces it, and removes what retention no longer keeps. */
  private async deployed(next: FunctionRecord): Promise<void> {
    await this.store.update(next);
    this.placement.updated(next);
    const [versions, aliases] = await Promise.all([this.store.versions(next.id), this.store.aliases(next.id)]);
    const doomed = versionsToRemove(versions, next.version, aliases, this.settings.versionsKept);
    if (doomed.length === 0) return;
    await this.store.removeVersions(
      next.id,
      doomed.map((v) => v.version),
    );
    await this.removeUnusedCode(doomed);
  }

  /** The code of these records that no function or version runs any more. */
  private async removeUnusedCode(records: FunctionRecord[]): Promise<void> {
    for (const hash of new Set(records.map((r) => r.code_hash))) {
      if (hash && !(await this.store.codeInUse(hash))) await this.code.remove(hash);
    }
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
