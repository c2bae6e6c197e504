/**
 * Routes each invocation to its function's pool, creating pools on demand, and drives the
 * periodic scale-down. The single entry point the invocation adapters use.
 */
import { FunctionPool, type Lease, type PoolDeps } from './pool.js';
import { errorMessage } from './errors.js';
import type { Placement } from './ports.js';
import type { FunctionRecord, InstanceInfo, InstanceState, StartMode } from './types.js';

/** Hands out a slot for one invocation: the local Scheduler, or a gateway's cluster router. */
export interface Router {
  acquire(fn: FunctionRecord, deadline: number): Promise<Lease>;
}

export class Scheduler implements Router, Placement {
  private readonly pools = new Map<string, FunctionPool>();
  /** How each function's current version starts, as its driver prepared it at deploy time. */
  private readonly starts = new Map<string, { version: number; start: StartMode }>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly deps: PoolDeps,
    tickMs = 500,
  ) {
    this.timer = setInterval(() => {
      for (const pool of this.pools.values()) pool.scaleDown();
    }, tickMs);
    this.timer.unref();
  }

  acquire(fn: FunctionRecord, deadline: number): Promise<Lease> {
    return this.pool(fn).acquire(deadline);
  }

  /** Starts an instance ahead of requests (a cluster provisioning job). */
  provision(fn: FunctionRecord): Promise<void> {
    return this.pool(fn).provision();
  }

  /** Instances per function and state, for metrics. */
  instanceCounts(): { fn: FunctionRecord; state: InstanceState; count: number }[] {
    const out: { fn: FunctionRecord; state: InstanceState; count: number }[] = [];
    for (const pool of this.pools.values()) {
      const counts = new Map<InstanceState, number>();
      for (const i of pool.info()) counts.set(i.state, (counts.get(i.state) ?? 0) + 1);
      for (const [state, count] of counts) out.push({ fn: pool.record, state, count });
    }
    return out;
  }

  /** Live instances across all functions (a worker's load). */
  instanceCount(): number {
    let n = 0;
    for (const pool of this.pools.values()) n += pool.info().filter((i) => i.state !== 'stopped').length;
    return n;
  }

  /** A function was created, changed or got new code. */
  updated(fn: FunctionRecord): void {
    this.prepareStart(fn);
    const pool = this.pools.get(fn.id);
    if (pool) pool.update(fn);
    else if (fn.min_instances > 0) this.pool(fn);
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
    const pool = this.pools.get(functionId);
    this.pools.delete(functionId);
    await pool?.close();
  }

  instances(functionId: string): InstanceInfo[] {
    return this.pools.get(functionId)?.info() ?? [];
  }

  async shutdown(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all([...this.pools.values()].map((p) => p.close()));
    this.pools.clear();
    await this.deps.driver.close?.();
  }

  private pool(fn: FunctionRecord): FunctionPool {
    let pool = this.pools.get(fn.id);
    if (!pool) {
      pool = new FunctionPool(fn, this.deps);
      this.pools.set(fn.id, pool);
    }
    return pool;
  }
}
