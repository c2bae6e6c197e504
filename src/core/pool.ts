/**
 * One version of a function: its instances and the requests waiting for them. This is where cold starts happen
 * (`coldStart`), where requests are routed to an instance with a free slot (`dispatch`), and where
 * idle instances scale down (`scaleDown`). Pure scheduling: it starts and stops instances through
 * the IsolationDriver port and never touches HTTP.
 */
import { randomUUID } from 'node:crypto';
import { type AetherError, badGateway, conflict, errorMessage, involving, notFound, timedOut, unavailable } from './errors.js';
import type { InstanceEvent } from './log-writer.js';
import type { ExitInfo, InstanceHandle, IsolationDriver, Logger, Metrics } from './ports.js';
import { afterCrash, keepMinimumCount, type ScalingLimits, scaleDownVictims, scaleUpCount, startsAtOnce } from './scaling.js';
import {
  afterStartFailure,
  type BackoffPolicy,
  failing,
  failingError,
  type StartFailure,
  type StartFailures,
  startsAllowed,
} from './start-failures.js';
import type { FunctionRecord, InstanceInfo, InstanceState } from './types.js';

export interface PoolSettings {
  /** Requests that may wait for a slot per function; beyond that: 503. */
  maxQueue: number;
  /** How long an idle instance beyond the last one lives before it is stopped. */
  scaleDownGraceMs: number;
  startTimeoutMs: number;
  stopGraceMs: number;
  /** Between start attempts of a function whose instances fail to start. */
  startBackoff: BackoffPolicy;
  /** Instances of one function starting at once at most (scaling.ts startsAtOnce); default: no limit. */
  startsAtOnce?: number;
}

export interface PoolDeps {
  driver: IsolationDriver;
  codeDir(hash: string): Promise<string>;
  log: Logger;
  metrics: Metrics;
  settings: PoolSettings;
  /** Shared with the API (and in a cluster with every worker and gateway). */
  startFailures: StartFailures;
  onInstanceLog(fn: FunctionRecord, instanceId: string, stream: 'stdout' | 'stderr', line: string, requestId?: string): void;
  /** Instance lifecycle, e.g. for a cluster worker to announce its instances in discovery. */
  onInstanceReady?(fn: FunctionRecord, instanceId: string): void;
  onInstanceGone?(fn: FunctionRecord, instanceId: string): void;
  /** Started, failed to start, exited, timed out: for the function's platform log lines. */
  onInstanceEvent?(fn: FunctionRecord, instanceId: string, event: InstanceEvent): void;
  now?: () => number;
}

class Instance {
  readonly id = randomUUID();
  readonly startedAt = new Date();
  state: InstanceState = 'starting';
  handle?: InstanceHandle;
  inFlight = 0;
  served = 0;
  lastActive: number;
  /** When it became ready (pool event order): a request that started waiting before then waited for it (a cold start). */
  readyAt = Number.POSITIVE_INFINITY;
  /** Why the instance is ending, once it is known to be (before its exit is). */
  condemned?: string;
  /**
   * The request it is serving when it serves one at a time (concurrency 1): its output lines that
   * carry no request id of their own (server mode) are filed under it.
   */
  soleRequest?: string;
  readonly version: number;
  constructor(
    /** The function as this instance runs it. */
    readonly fn: FunctionRecord,
    now: number,
  ) {
    this.version = fn.version;
    this.lastActive = now;
  }
}

/** A slot on an instance, held for one request. */
export interface Lease {
  readonly instanceId: string;
  readonly handle: InstanceHandle;
  readonly coldStart: boolean;
  /** For a lease on a remote worker (cluster gateway): how to address it. */
  readonly remote?: { pathPrefix: string; headers: Record<string, string>; maxConnections: number };
  /** Why the instance ended, if it did (waits briefly for the exit to be known). */
  exitReason(): Promise<string | undefined>;
  /** The instance is stuck (e.g. a request timed out, named here for its log): replace it. */
  recycle(timedOutRequest?: string): void;
  release(): void;
}

/** How long a request that lost its instance waits to learn why (the reason goes to the client and the record). */
const EXIT_REASON_WAIT_MS = 2000;

interface Waiter {
  /** When it started waiting, in pool event order. */
  since: number;
  requestId?: string;
  resolve(lease: Lease): void;
  reject(err: AetherError): void;
  timer: NodeJS.Timeout;
}

export class FunctionPool {
  private readonly instances = new Map<string, Instance>();
  private readonly waiters: Waiter[] = [];
  private closed = false;
  private readonly now: () => number;
  private crashStreak = 0;
  /** Orders waiting against instances becoming ready (timestamps could tie). */
  private events = 0;
  private restartTimer?: NodeJS.Timeout;

  constructor(
    private readonly fn: FunctionRecord,
    private readonly deps: PoolDeps,
    private retired = false,
  ) {
    this.now = deps.now ?? Date.now;
    this.keepMinimum();
  }

  get functionId(): string {
    return this.fn.id;
  }

  /** The function's current record. */
  get record(): FunctionRecord {
    return this.fn;
  }

  /** Waits (bounded by the deadline) for a free slot on a ready instance of the current version, for the request. */
  acquire(deadline: number, requestId?: string): Promise<Lease> {
    if (this.closed) return Promise.reject(notFound(`function ${this.fn.name} was deleted`));
    if (!this.fn.code_hash)
      return Promise.reject(conflict(`function ${this.fn.name} has no code yet: upload it with POST /api/functions/${this.fn.id}/code`));
    const inst = this.freeInstance();
    if (inst && this.waiters.length === 0) return Promise.resolve(this.lease(inst, false, requestId));
    const blocked = this.blockedBy();
    if (blocked) return Promise.reject(failingError(this.fn.name, blocked, this.now()));
    if (this.waiters.length >= this.deps.settings.maxQueue + this.slotsComing()) {
      return Promise.reject(
        unavailable(`function ${this.fn.name} is at capacity and its queue is full (${this.deps.settings.maxQueue} waiting)`, 'queue_full'),
      );
    }
    return new Promise<Lease>((resolve, reject) => {
      const waiter: Waiter = {
        since: ++this.events,
        requestId,
        resolve,
        reject,
        timer: setTimeout(
          () => {
            this.removeWaiter(waiter);
            const starting = this.current().some((i) => i.state === 'starting');
            reject(
              starting
                ? involving(timedOut(`function ${this.fn.name} did not start within its timeout of ${this.fn.timeout_ms} ms`), {
                    coldStart: true,
                  })
                : unavailable(
                    `function ${this.fn.name} has no free capacity (max_instances ${this.fn.max_instances}, concurrency ${this.fn.concurrency})`,
                  ),
            );
          },
          Math.max(0, deadline - this.now()),
        ),
      };
      this.waiters.push(waiter);
      this.scaleUp();
      this.dispatch();
    });
  }

  /** Starts one more instance ahead of requests (cluster provisioning); resolves once it is ready. */
  async provision(): Promise<void> {
    if (this.closed || !this.fn.code_hash) throw conflict(`function ${this.fn.name} has no code to start`);
    if (this.current().length >= this.fn.max_instances) return;
    await this.coldStart(true);
  }

  /**
   * A newer version was deployed: this one's instances drain and none are kept warm. The pool still
   * serves invocations pinned to its version (a version number or an alias), starting instances for them.
   */
  retire(): void {
    if (this.retired) return;
    this.retired = true;
    clearTimeout(this.restartTimer);
    for (const inst of this.instances.values()) this.drain(inst);
    this.scaleUp(); // requests waiting for a busy instance that now drains
  }

  /** Retired, with nothing running or waiting: the scheduler may forget it. */
  get empty(): boolean {
    return this.retired && this.instances.size === 0 && this.waiters.length === 0;
  }

  /** Stops everything; waiting requests fail. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.restartTimer);
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(notFound(`function ${this.fn.name} was deleted`));
    }
    await Promise.all([...this.instances.values()].map((inst) => this.stop(inst)));
  }

  info(): InstanceInfo[] {
    return [...this.instances.values()].map((i) => ({
      id: i.id,
      state: i.state,
      version: i.version,
      started_at: i.startedAt.toISOString(),
      in_flight: i.inFlight,
      served: i.served,
      prewarmed: i.handle?.prewarmed ?? false,
    }));
  }

  /** Called periodically: stops idle extras after the grace period and the last one after idle_timeout_s. */
  scaleDown(): void {
    const victims = scaleDownVictims(
      {
        limits: this.limits(),
        waiting: this.waiters.length,
        ready: this.current().filter((i) => i.state === 'ready'),
        graceMs: this.deps.settings.scaleDownGraceMs,
        idleTimeoutMs: this.fn.idle_timeout_s * 1000,
      },
      this.now(),
    );
    for (const { instance: inst, idleMs, last } of victims) {
      this.deps.log.info(
        { function: this.fn.name, instance: inst.id, idle_ms: idleMs },
        last ? 'scaling to zero' : 'scaling down idle instance',
      );
      this.drain(inst);
    }
  }

  private limits(): ScalingLimits {
    return {
      concurrency: this.fn.concurrency,
      minInstances: this.retired ? 0 : this.fn.min_instances,
      maxInstances: this.fn.max_instances,
    };
  }

  /** Slots on instances that are starting or may still be started: requests waiting for them are not "queued". */
  private slotsComing(): number {
    const live = this.current();
    const starting = live.filter((i) => i.state === 'starting').length;
    const room = Math.max(0, this.fn.max_instances - live.length);
    return (starting + room) * this.fn.concurrency;
  }

  private current(): Instance[] {
    return [...this.instances.values()].filter((i) => i.version === this.fn.version && (i.state === 'starting' || i.state === 'ready'));
  }

  /** The least loaded ready instance of the current version with a free slot. */
  private freeInstance(): Instance | undefined {
    let best: Instance | undefined;
    for (const inst of this.instances.values()) {
      if (inst.state !== 'ready' || inst.version !== this.fn.version || inst.inFlight >= this.fn.concurrency) continue;
      if (!best || inst.inFlight < best.inFlight) best = inst;
    }
    return best;
  }

  private lease(inst: Instance, coldStart: boolean, requestId?: string): Lease {
    inst.inFlight++;
    if (inst.fn.concurrency === 1) inst.soleRequest = requestId;
    inst.lastActive = this.now();
    let released = false;
    const handle = inst.handle!;
    return {
      instanceId: inst.id,
      handle,
      coldStart,
      exitReason: async () => {
        // A crash is usually seen by the request a moment before the exit is reaped and explained (its
        // cgroup read for an OOM kill), which can take over half a second on a busy host; a slower
        // teardown (gVisor's) must not hide the cause the host already knows.
        const exit = await Promise.race([handle.exited, new Promise<undefined>((r) => setTimeout(r, EXIT_REASON_WAIT_MS))]);
        return exit ? describeExit(exit) : inst.condemned;
      },
      recycle: (timedOutRequest) => {
        this.deps.log.warn({ function: this.fn.name, instance: inst.id }, 'recycling stuck instance');
        if (timedOutRequest) this.deps.onInstanceEvent?.(inst.fn, inst.id, { type: 'timeout', request_id: timedOutRequest });
        void this.stop(inst);
      },
      release: () => {
        if (released) return;
        released = true;
        inst.inFlight--;
        if (inst.soleRequest === requestId) inst.soleRequest = undefined;
        inst.served++;
        inst.lastActive = this.now();
        if (inst.state === 'draining' && inst.inFlight === 0) void this.stop(inst);
        else this.dispatch();
      },
    };
  }

  /** Hands waiting requests to free slots, oldest first. */
  private dispatch(fresh?: Instance): void {
    while (this.waiters.length > 0) {
      const inst = fresh && fresh.inFlight < this.fn.concurrency && fresh.state === 'ready' ? fresh : this.freeInstance();
      if (!inst) return;
      const waiter = this.waiters.shift()!;
      clearTimeout(waiter.timer);
      waiter.resolve(this.lease(inst, inst.readyAt > waiter.since, waiter.requestId));
    }
  }

  /** Starts as many instances as the waiting requests need, up to max_instances. */
  private scaleUp(): void {
    if (this.closed || !this.fn.code_hash) return;
    const n = scaleUpCount({ limits: this.limits(), waiting: this.waiters.length, live: this.current(), startable: this.startable() });
    for (let i = 0; i < n; i++) void this.coldStart();
  }

  private keepMinimum(): void {
    if (this.closed || !this.fn.code_hash) return;
    const n = keepMinimumCount({ limits: this.limits(), live: this.current().length, startable: this.startable() });
    for (let i = 0; i < n; i++) void this.coldStart();
  }

  /** How many instances may start now: a function failing to start backs off (start-failures.ts). */
  private startable(): number {
    const starting = this.current().filter((i) => i.state === 'starting').length;
    const limit = this.deps.settings.startsAtOnce ?? Number.POSITIVE_INFINITY;
    return Math.min(
      startsAllowed(this.deps.startFailures.get(this.fn.id), this.fn.version, this.now(), starting),
      startsAtOnce(starting, limit),
    );
  }

  /** The start failure that leaves a request nothing to wait for: no instance, and none may start yet. */
  private blockedBy(): StartFailure | undefined {
    if (this.current().length > 0 || this.startable() > 0) return undefined;
    return failing(this.deps.startFailures.get(this.fn.id), this.fn.version);
  }

  /** Records the failure (which sets the backoff) and brings min_instances back once it is over. */
  private startFailed(fn: FunctionRecord, error: string, instanceId: string): void {
    const { startFailures, settings, log } = this.deps;
    const now = this.now();
    const state = afterStartFailure(startFailures.get(fn.id), fn, { error, instanceId }, now, settings.startBackoff);
    startFailures.record(state);
    log.warn({ function: fn.name, version: fn.version, failures: state.failures, retry_in_ms: state.retryAt - now }, 'function is failing');
    if (this.limits().minInstances === 0) return;
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => this.keepMinimum(), state.retryAt - now);
    this.restartTimer.unref();
  }

  /** A cold start: a new instance of the current version, through the isolation driver. */
  private async coldStart(rethrow = false): Promise<void> {
    const fn = this.fn;
    const inst = new Instance(fn, this.now());
    this.instances.set(inst.id, inst);
    const started = this.now();
    let handle: InstanceHandle;
    try {
      handle = await this.deps.driver.start({
        instanceId: inst.id,
        functionId: fn.id,
        codeDir: await this.deps.codeDir(fn.code_hash!),
        entrypoint: fn.entrypoint ?? undefined,
        env: fn.env_vars,
        port: fn.port,
        memoryMb: fn.memory_mb,
        vcpu: fn.vcpu,
        concurrency: fn.concurrency,
        functionName: fn.name,
        eventFormat: fn.event_format,
        startTimeoutMs: this.deps.settings.startTimeoutMs,
        onLog: (stream, line, requestId) => this.deps.onInstanceLog(fn, inst.id, stream, line, requestId ?? inst.soleRequest),
      });
    } catch (err) {
      this.instances.delete(inst.id);
      const message = errorMessage(err);
      this.deps.metrics.startFailed(fn);
      this.deps.log.error({ function: fn.name, instance: inst.id, err: message }, 'instance failed to start');
      this.deps.onInstanceEvent?.(fn, inst.id, { type: 'start_failed', error: message });
      if (!this.closed && fn.version === this.fn.version) this.startFailed(fn, message, inst.id);
      this.failWaitersIfHopeless(message, inst.id);
      if (rethrow) throw badGateway(`function ${fn.name} failed to start: ${message}`, 'start_failed');
      return;
    }
    // From here on the instance runs: whatever fails now is not a failed start, and the pool owns the instance.
    inst.handle = handle;
    void handle.condemned.then((reason) => this.onCondemned(inst, reason));
    void handle.exited.then((exit) => {
      const expected = inst.state === 'draining' || inst.state === 'stopped';
      this.deps.onInstanceEvent?.(fn, inst.id, { type: 'exited', exit, expected });
      this.onExit(inst, exit);
    });
    const ms = this.now() - started;
    this.deps.metrics.coldStart(fn, ms, handle.boot);
    this.deps.log.info({ function: fn.name, instance: inst.id, version: inst.version, ms }, 'instance ready');
    if (inst.state === 'draining' || this.closed) {
      void this.stop(inst);
      return;
    }
    inst.state = 'ready';
    inst.lastActive = this.now();
    inst.readyAt = ++this.events;
    try {
      this.deps.onInstanceEvent?.(fn, inst.id, { type: 'started', cold_start_ms: ms });
      if (this.deps.startFailures.get(fn.id)) this.deps.startFailures.clear(fn.id, fn.version);
      this.deps.onInstanceReady?.(fn, inst.id);
    } catch (err) {
      this.deps.log.error({ function: fn.name, instance: inst.id, err: errorMessage(err) }, 'instance ready, but announcing it failed');
    }
    this.dispatch(inst);
    // A start slot is free (startsAtOnce): what is still waiting, or min_instances, may need another.
    this.scaleUp();
    this.keepMinimum();
  }

  /** With nothing ready or starting, waiting requests would only time out: tell them why now. */
  private failWaitersIfHopeless(reason: string, instanceId: string): void {
    if (this.current().length > 0) return;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(
        involving(badGateway(`function ${this.fn.name} failed to start: ${reason}`, 'start_failed'), { instanceId, coldStart: true }),
      );
    }
  }

  /** The instance is ending (killed, crashed): route nothing more to it, and start its replacement now. */
  private onCondemned(inst: Instance, reason: string): void {
    inst.condemned = reason;
    if (inst.state !== 'ready' && inst.state !== 'starting') return; // the pool is stopping it
    inst.state = 'stopping';
    this.deps.log.warn({ function: this.fn.name, instance: inst.id, reason }, 'instance is ending: no more requests to it');
    this.scaleUp();
  }

  private onExit(inst: Instance, exit: ExitInfo): void {
    const expected = inst.state === 'draining' || inst.state === 'stopped';
    inst.state = 'stopped';
    this.forget(inst);
    if (exit.oom) this.deps.metrics.oomKilled(this.fn);
    if (!expected) {
      this.deps.log.warn(
        { function: this.fn.name, instance: inst.id, code: exit.code, signal: exit.signal, reason: exit.reason },
        'instance exited unexpectedly',
      );
      this.scaleUp(); // requests waiting now are served at once
      // Warm instances (min_instances) come back with a growing delay while they keep dying young.
      const { streak, restartDelayMs } = afterCrash(this.crashStreak, inst.startedAt.getTime(), this.now());
      this.crashStreak = streak;
      clearTimeout(this.restartTimer);
      this.restartTimer = setTimeout(() => this.keepMinimum(), restartDelayMs);
      this.restartTimer.unref();
    }
  }

  private drain(inst: Instance): void {
    if (inst.state === 'stopped' || inst.state === 'stopping') return;
    inst.state = 'draining';
    if (inst.inFlight === 0 && inst.handle) void this.stop(inst);
  }

  private async stop(inst: Instance): Promise<void> {
    if (inst.state !== 'stopped' && inst.state !== 'stopping') inst.state = 'draining';
    await inst.handle?.stop(this.deps.settings.stopGraceMs);
    inst.state = 'stopped';
    this.forget(inst);
    this.keepMinimum();
  }

  private forget(inst: Instance): void {
    if (this.instances.delete(inst.id) && inst.handle) this.deps.onInstanceGone?.(this.fn, inst.id);
  }

  private removeWaiter(w: Waiter): void {
    const i = this.waiters.indexOf(w);
    if (i >= 0) this.waiters.splice(i, 1);
  }
}

export function describeExit(exit: ExitInfo): string {
  if (exit.reason) return exit.reason;
  if (exit.signal) return `the instance was killed by ${exit.signal}`;
  return `the instance exited with code ${exit.code}`;
}
