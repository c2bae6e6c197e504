/**
 * Routes each invocation to the pool of its function's version (an instance runs exactly one
 * version), creating pools on demand, and drives the periodic scale-down. The single entry point
 * the invocation adapters use. The latest version's pool keeps min_instances warm; a deploy retires
 * the older versions' pools, which still serve invocations pinned to them.
 */
import { FunctionPool, type Lease, type PoolDeps } from './pool.js';
import { errorMessage } from './errors.js';
import type { Placement } from './ports.js';
import type { FunctionRecord, InstanceInfo, InstanceState, StartMode } from './types.js';

/** Hands out a slot for one invocation: the local Scheduler, or a gateway's cluster router. */
export interface Router {
  /** `requestId`: the invocation the slot is for (an instance serving one request at a time files its output under it). */
  acquire(fn: FunctionRecord, deadline: number, requestId?: string): Promise<Lease>;
}

export class Scheduler implements Router, Placement {
  /** By `poolKey`. */
  private readonly pools = new Map<string, FunctionPool>();
  /** How each function's current version starts, as its driver prepared it at deploy time. */
  private readonly starts = new Map<string, { version: number; start: StartMode }>();
  /** Each function's latest version, as far as this scheduler was told. */
  private readonly latest = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly deps: PoolDeps,
    tickMs = 500,
  ) {
    this.timer = setInterval(() => {
      for (const [key, pool] of this.pools) {
        pool.scaleDown();
        if (pool.empty) this.pools.delete(key);
      }
    }, tickMs);
    this.timer.unref();
  }

  acquire(fn: FunctionRecord, deadline: number, requestId?: string): Promise<Lease> {
    return this.pool(fn).acquire(deadline, requestId);
  }

  /** Starts an instance ahead of requests (a cluster provisioning job). */
  provision(fn: FunctionRecord): Promise<void> {
    return this.pool(fn).provision();
  }

  /** Instances per function (all its versions) and state, for metrics. */
  instanceCounts(): { fn: FunctionRecord; state: InstanceState; count: number }[] {
    const byFunction = new Map<string, { fn: FunctionRecord; counts: Map<InstanceState, number> }>();
    for (const pool of this.pools.values()) {
      const fn = pool.record;
      const entry = byFunction.get(fn.id) ?? { fn, counts: new Map<InstanceState, number>() };
      if (fn.version > entry.fn.version) entry.fn = fn;
      for (const i of pool.info()) entry.counts.set(i.state, (entry.counts.get(i.state) ?? 0) + 1);
      byFunction.set(fn.id, entry);
    }
    return [...byFunction.values()].flatMap(({ fn, counts }) => [...counts].map(([state, count]) => ({ fn, state, count })));
  }

  /** Live instances across all functions (a worker's load). */
  instanceCount(): number {
    let n = 0;
    for (const pool of this.pools.values()) n += pool.info().filter((i) => i.state !== 'stopped').length;
    return n;
  }

  /** A function was created, changed or got new code: a new latest version. */
  updated(fn: FunctionRecord): void {
    this.prepareStart(fn);
    this.latest.set(fn.id, Math.max(fn.version, this.latest.get(fn.id) ?? 0));
    for (const pool of this.poolsOf(fn.id)) if (pool.record.version < fn.version) pool.retire();
    if (fn.min_instances > 0) this.pool(fn);
  }

  startMode(functionId: string): StartMode | undefined {
    return this.starts.get(functionId)?.start;
  }

  /** Deploy time: the driver prepares the function's code for faster starts, in the background. */
  private prepareStart(fn: FunctionRecord): void {
    const { driver, codeDir } = this.deps;
    if (!driver.prepare || !fn.code_hash) return;
    const { id, version, code_hash, entrypoint, memory_mb } = fn;
    this.starts.set(id, { version, start: { mode: 'preparing' } });
    const settle = (start: StartMode) => {
      if (this.starts.get(id)?.version === version) this.starts.set(id, { version, start });
    };
    codeDir(code_hash)
      .then((dir) => driver.prepare!({ codeDir: dir, entrypoint, memoryMb: memory_mb }))
      .then(settle, (err: unknown) => settle({ mode: 'plain', reason: `preparing failed: ${errorMessage(err)}` }));
  }

  async removed(functionId: string): Promise<void> {
    this.starts.delete(functionId);
    const pools = [...this.poolsOf(functionId)];
    for (const pool of pools) this.pools.delete(poolKey(pool.record));
    this.latest.delete(functionId);
    await Promise.all(pools.map((p) => p.close()));
  }

  instances(functionId: string): InstanceInfo[] {
    return [...this.poolsOf(functionId)].flatMap((p) => p.info());
  }

  async shutdown(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all([...this.pools.values()].map((p) => p.close()));
    this.pools.clear();
    await this.deps.driver.close?.();
  }

  private pool(fn: FunctionRecord): FunctionPool {
    const key = poolKey(fn);
    let pool = this.pools.get(key);
    if (!pool) {
      pool = new FunctionPool(fn, this.deps, fn.version < (this.latest.get(fn.id) ?? 0));
      this.pools.set(key, pool);
    }
    return pool;
  }

  private *poolsOf(functionId: string): Iterable<FunctionPool> {
    for (const pool of this.pools.values()) if (pool.functionId === functionId) yield pool;
  }
}

const poolKey = (fn: FunctionRecord) => `${fn.id}@${fn.version}`;
