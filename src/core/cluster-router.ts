/**
 * A gateway's routing in cluster mode: picks the worker for each invocation from discovery, and
 * where no instance of the version it runs (the record it is given) exists, asks for a cold start through the
 * provisioning queue and waits for the instance to appear. Knows nothing of etcd or Redis.
 */
import type { Socket } from 'node:net';
import { AetherError, badGateway, errorMessage, involving, timedOut, unavailable } from './errors.js';
import type { Lease } from './pool.js';
import type {
  ExitInfo,
  InstanceHandle,
  Logger,
  Placement,
  ProvisionRequest,
  ProvisionRequests,
  RouteDirectory,
  WorkerInfo,
} from './ports.js';
import type { Router } from './scheduler.js';
import { failing, failingError, type SharedStartFailures, type StartFailure, startsAllowed } from './start-failures.js';
import type { FunctionRecord, InstanceInfo } from './types.js';

export interface ClusterRouterDeps {
  directory: RouteDirectory;
  provision: ProvisionRequests;
  /** Opens a connection to a worker's invocation endpoint. */
  connect(worker: WorkerInfo): Promise<Socket>;
  /** Asks a worker for its instances of a function (their in-flight and served counts). */
  workerInstances(worker: WorkerInfo, functionId: string): Promise<InstanceInfo[]>;
  /** Headers that authenticate a gateway to workers. */
  workerHeaders: Record<string, string>;
  /** Written by workers whose instances fail to start: no cold start is asked for during the backoff. */
  startFailures: SharedStartFailures;
  log: Logger;
  now?: () => number;
}

/** How long a worker that refused a connection is routed around (discovery drops it within its lease TTL). */
const REFUSED_BACKOFF_MS = 3000;
const CONNECTIONS_PER_WORKER = 256;

interface Target {
  worker: WorkerInfo;
  instances: number;
  load: number; // this gateway's requests in flight on it for the function, per instance slot
}

export class ClusterRouter implements Router, Placement {
  private readonly inFlight = new Map<string, number>(); // `${workerId} ${functionId}`
  private readonly refusedUntil = new Map<string, number>();
  private readonly coldStarts = new Map<string, Promise<void>>();
  private readonly handles = new Map<string, { url: string; handle: InstanceHandle; stop(): void }>();
  private readonly now: () => number;

  constructor(private readonly deps: ClusterRouterDeps) {
    this.now = deps.now ?? Date.now;
  }

  async acquire(fn: FunctionRecord, deadline: number): Promise<Lease> {
    let targets = this.targets(fn);
    let cold = false;
    if (targets.length === 0) {
      const blocked = this.backingOff(fn);
      if (blocked) throw failingError(fn.name, blocked, this.now());
      await this.coldStart(fn, 0, deadline);
      cold = true;
      targets = this.targets(fn);
      if (targets.length === 0) throw unavailable(`the instance started for ${fn.name} is gone again`, 'no_capacity');
    }
    const best = targets.reduce((a, b) => (b.load < a.load ? b : a));
    const instances = targets.reduce((n, t) => n + t.instances, 0);
    if (best.load >= fn.concurrency && instances < fn.max_instances && !this.backingOff(fn)) {
      // Every known instance is busy: add one on another worker while this request queues on the best.
      this.coldStart(fn, instances, deadline).catch((err: Error) =>
        this.deps.log.warn({ function: fn.name, err: err.message }, 'scale-out failed'),
      );
    }
    return this.lease(fn, best.worker, cold);
  }

  updated(): void {
    // Workers watch function records themselves and drain old versions.
  }

  async removed(): Promise<void> {
    // Likewise: workers stop the instances of a deleted function when they see the deletion.
  }

  async instances(functionId: string): Promise<InstanceInfo[]> {
    const workers = new Map(this.deps.directory.workers().map((w) => [w.id, w]));
    const withInstances = new Set(this.deps.directory.instances(functionId).map((r) => r.worker_id));
    const lists = await Promise.all(
      [...withInstances].flatMap((id) => {
        const worker = workers.get(id);
        if (!worker) return [];
        return [
          this.deps.workerInstances(worker, functionId).catch((err: unknown) => {
            // Its instances are left out of the answer; discovery drops the worker when its lease expires.
            this.deps.log.warn(
              { worker: id, function_id: functionId, err: errorMessage(err) },
              'worker unreachable: its instances are not listed',
            );
            return [] as InstanceInfo[];
          }),
        ];
      }),
    );
    return lists.flat();
  }

  /** The function's start failure while it forbids new instances (one probe follows the backoff: coldStart shares it). */
  private backingOff(fn: FunctionRecord): StartFailure | undefined {
    const state = this.deps.startFailures.get(fn.id);
    return startsAllowed(state, fn.version, this.now(), 0) === 0 ? failing(state, fn.version) : undefined;
  }

  /** Workers with a ready instance of the record's version, least loaded first. */
  private targets(fn: FunctionRecord): Target[] {
    const now = this.now();
    const workers = new Map(this.deps.directory.workers().map((w) => [w.id, w]));
    this.forgetGoneWorkers(workers);
    const counts = new Map<string, number>();
    for (const r of this.deps.directory.instances(fn.id)) {
      if (r.version !== fn.version || !workers.has(r.worker_id) || (this.refusedUntil.get(r.worker_id) ?? 0) > now) continue;
      counts.set(r.worker_id, (counts.get(r.worker_id) ?? 0) + 1);
    }
    return [...counts].map(([id, instances]) => ({
      worker: workers.get(id)!,
      instances,
      load: (this.inFlight.get(`${id} ${fn.id}`) ?? 0) / instances,
    }));
  }

  /**
   * One provisioning job per function version and slot, shared by every request waiting for it on
   * this gateway (one deadline for all of them); other gateways are deduplicated by the queue.
   */
  private coldStart(fn: FunctionRecord, slot: number, deadline: number): Promise<void> {
    const key = `${fn.id}@${fn.version}#${slot}`;
    let pending = this.coldStarts.get(key);
    if (!pending) {
      pending = this.provisionAndWait(fn, slot, deadline).finally(() => this.coldStarts.delete(key));
      this.coldStarts.set(key, pending);
    }
    return pending;
  }

  private async provisionAndWait(fn: FunctionRecord, slot: number, deadline: number): Promise<void> {
    const target = this.placement(fn);
    if (!target) throw unavailable('no live worker can take a new instance', 'no_capacity');
    const req: ProvisionRequest = { functionId: fn.id, version: fn.version, slot, targetWorker: target.id, deadline };
    // A worker that fails to start the instance records it (etcd): no need to wait for the deadline then.
    let stopListening = () => {};
    const failed = new Promise<never>((_, reject) => {
      stopListening = this.deps.startFailures.onRecorded(fn.id, (state) => {
        if (state.version !== fn.version) return;
        const err = badGateway(`function ${fn.name} failed to start: ${state.lastError}`, 'start_failed');
        reject(involving(err, { instanceId: state.instanceId, coldStart: true }));
      });
    });
    failed.catch(() => {}); // it may reject before the race below is set up; the race still sees it
    try {
      const { jobId, enqueued } = await this.deps.provision.request(req);
      try {
        await Promise.race([this.deps.directory.waitForInstance(fn.id, fn.version, deadline), failed]);
      } catch (err) {
        if (enqueued) {
          await this.deps.provision
            .cancel(jobId, req)
            .catch((cancelErr: unknown) =>
              this.deps.log.warn({ function: fn.name, job_id: jobId, err: errorMessage(cancelErr) }, 'could not cancel a provisioning job'),
            );
        }
        if (err instanceof AetherError && err.code === 'start_failed') throw err;
        throw involving(timedOut(`function ${fn.name} did not start in time`), { coldStart: true });
      }
    } finally {
      stopListening();
    }
  }

  /**
   * Where a new instance goes: a live worker with room, preferring one that runs fewer instances of
   * this function (spread for availability), then the most free capacity — not whichever worker
   * pops the queue first.
   */
  private placement(fn: FunctionRecord): WorkerInfo | undefined {
    const now = this.now();
    const mine = new Map<string, number>();
    for (const r of this.deps.directory.instances(fn.id)) mine.set(r.worker_id, (mine.get(r.worker_id) ?? 0) + 1);
    const score = (w: WorkerInfo) => [mine.get(w.id) ?? 0, w.instances - w.max_instances];
    let best: WorkerInfo | undefined;
    for (const w of this.deps.directory.workers()) {
      if ((this.refusedUntil.get(w.id) ?? 0) > now || w.instances >= w.max_instances) continue;
      if (!best || lexLess(score(w), score(best))) best = w;
    }
    return best;
  }

  private lease(fn: FunctionRecord, worker: WorkerInfo, coldStart: boolean): Lease {
    const key = `${worker.id} ${fn.id}`;
    this.inFlight.set(key, (this.inFlight.get(key) ?? 0) + 1);
    let released = false;
    return {
      instanceId: worker.id,
      handle: this.handleFor(worker),
      coldStart,
      // The worker runs the version this gateway chose (it may be pinned by a version or an alias).
      remote: { pathPrefix: `/functions/${fn.id}:${fn.version}`, headers: this.deps.workerHeaders, maxConnections: CONNECTIONS_PER_WORKER },
      exitReason: async () => undefined,
      recycle: () => this.refusedUntil.set(worker.id, this.now() + REFUSED_BACKOFF_MS),
      release: () => {
        if (released) return;
        released = true;
        const n = (this.inFlight.get(key) ?? 1) - 1;
        if (n > 0) this.inFlight.set(key, n);
        else this.inFlight.delete(key);
      },
    };
  }

  /** One handle (so one keep-alive connection pool) per worker address. */
  private handleFor(worker: WorkerInfo): InstanceHandle {
    const known = this.handles.get(worker.id);
    if (known && known.url === worker.url) return known.handle;
    known?.stop();
    let stop!: () => void;
    const exited = new Promise<ExitInfo>(
      (resolve) => (stop = () => resolve({ code: null, signal: null, reason: 'worker left the cluster' })),
    );
    const handle: InstanceHandle = {
      id: worker.id,
      connect: () => this.deps.connect(worker),
      condemned: exited.then((exit) => exit.reason!),
      exited,
      stop: async () => stop(),
    };
    this.handles.set(worker.id, { url: worker.url, handle, stop });
    return handle;
  }

  private forgetGoneWorkers(live: Map<string, WorkerInfo>): void {
    for (const [id, h] of this.handles) {
      if (!live.has(id)) {
        h.stop();
        this.handles.delete(id);
      }
    }
  }
}

function lexLess(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]!;
  return false;
}
