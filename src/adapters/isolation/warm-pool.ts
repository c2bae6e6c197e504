/**
 * A warm pool in front of a driver that can pre-start generic instances (bwrap, gVisor): sandboxes
 * already up with node and the agent running, waiting for a function. A cold start takes one of the
 * function's memory size, if there is one, and gives it the function (code, env, limits: the driver's
 * `assign`); otherwise it starts an instance as the driver always does. A pooled instance serves
 * that one function until it ends and is never returned: the pool only ever hands out fresh ones.
 *
 * How many to keep is core/warm-pool.ts's decision, from the recent cold starts and the memory
 * budget. Refilling runs in the background, one instance at a time, only after the start that
 * triggered it has finished, and the driver boots pooled instances at the least CPU weight: requests
 * of running functions come first.
 */
import { errorMessage } from '../../core/errors.js';
import type {
  InstanceHandle,
  InstanceSpec,
  IsolationDriver,
  Logger,
  PrestartedInstance,
  PrestartShape,
  StartPrep,
} from '../../core/ports.js';
import { backoffDelay } from '../../core/start-failures.js';
import type { StartMode } from '../../core/types.js';
import { type ColdStartSample, recentColdStarts, type WarmPoolSettings, warmPoolTargets } from '../../core/warm-pool.js';

/** Until the first refill is measured: about a gVisor boot on a busy 2-core host. */
const INITIAL_REFILL_MS = 500;
/** How often the pool looks at its targets without a cold start (demand ages out, a failed refill retries). */
const TICK_MS = 1000;
/** After a pre-start failed: 1 s, doubling, at most 60 s. */
const REFILL_BACKOFF = { initialMs: 1000, maxMs: 60_000 };

export type PrestartingDriver = IsolationDriver & Required<Pick<IsolationDriver, 'prestart'>>;

export interface WarmPoolOptions {
  settings: WarmPoolSettings;
  startTimeoutMs: number;
  log: Logger;
  now?: () => number;
}

/** What /api/system shows of the pool. */
export interface WarmPoolStatus {
  budget_mb: number;
  /** Per memory size: ready to take a function, and being started. */
  sizes: Array<{ memory_mb: number; idle: number; target: number }>;
  starting: number;
  /** Cold starts served from the pool, and those that found none of their size, since start. */
  hits: number;
  misses: number;
  /** What the idle instances cost together: memory charged to them now, CPU time they used so far. */
  idle_memory_bytes: number;
  idle_cpu_ms: number;
}

export class WarmPool implements IsolationDriver {
  readonly name: string;
  /** A function's prepared start is the driver's; a pooled instance mounts it when it gets the function. */
  readonly prepare?: (spec: StartPrep) => Promise<StartMode>;
  private readonly idle: PrestartedInstance[] = [];
  private samples: ColdStartSample[] = [];
  private refillMs = INITIAL_REFILL_MS;
  private refilling?: Promise<void>;
  private starting = 0;
  private failures = 0;
  private retryAt = 0;
  private hits = 0;
  private misses = 0;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  private readonly now: () => number;

  constructor(
    private readonly driver: PrestartingDriver,
    private readonly opts: WarmPoolOptions,
  ) {
    this.name = driver.name;
    if (driver.prepare) this.prepare = (spec) => driver.prepare!(spec);
    this.now = opts.now ?? Date.now;
    this.timer = setInterval(() => this.refill(), TICK_MS);
    this.timer.unref();
    this.refill();
  }

  async start(spec: InstanceSpec): Promise<InstanceHandle> {
    this.samples.push({ at: this.now(), memoryMb: spec.memoryMb });
    const pooled = this.take(spec.memoryMb);
    if (pooled) this.hits++;
    else this.misses++;
    try {
      return pooled ? await pooled.assign(spec) : await this.driver.start(spec);
    } finally {
      this.refill();
    }
  }

  async status(): Promise<WarmPoolStatus> {
    const usage = await Promise.all(this.idle.map((i) => i.usage().catch(() => ({ memoryBytes: 0, cpuMs: 0 }))));
    const targets = this.targets();
    const sizes = new Set([...targets.keys(), ...this.idle.map((i) => i.memoryMb)]);
    return {
      budget_mb: this.opts.settings.budgetMb,
      sizes: [...sizes]
        .sort((a, b) => a - b)
        .map((memoryMb) => ({ memory_mb: memoryMb, idle: this.count(memoryMb), target: targets.get(memoryMb) ?? 0 })),
      starting: this.starting,
      hits: this.hits,
      misses: this.misses,
      idle_memory_bytes: usage.reduce((n, u) => n + u.memoryBytes, 0),
      idle_cpu_ms: usage.reduce((n, u) => n + u.cpuMs, 0),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.refilling;
    await Promise.all(this.idle.splice(0).map((i) => i.stop(0)));
    await this.driver.close?.();
  }

  private take(memoryMb: number): PrestartedInstance | undefined {
    const i = this.idle.findIndex((inst) => inst.memoryMb === memoryMb);
    return i === -1 ? undefined : this.idle.splice(i, 1)[0];
  }

  private count(memoryMb: number): number {
    return this.idle.filter((i) => i.memoryMb === memoryMb).length;
  }

  private targets(): Map<number, number> {
    const now = this.now();
    this.samples = recentColdStarts(this.samples, now, this.opts.settings.windowMs);
    return warmPoolTargets({ samples: this.samples, refillMs: this.refillMs, settings: this.opts.settings }, now);
  }

  /** Starts the refill loop unless it runs (one pre-start at a time). */
  private refill(): void {
    if (this.closed || this.refilling) return;
    this.refilling = this.refillLoop().finally(() => (this.refilling = undefined));
  }

  private async refillLoop(): Promise<void> {
    while (!this.closed && this.now() >= this.retryAt) {
      const targets = this.targets();
      this.trim(targets);
      const short = [...targets].find(([memoryMb, target]) => this.count(memoryMb) < target);
      if (!short) return;
      await this.addOne(short[0]);
    }
  }

  /** Idle instances beyond their size's target (demand went down) stop, the oldest first. */
  private trim(targets: Map<number, number>): void {
    for (const inst of [...this.idle]) {
      if (this.count(inst.memoryMb) <= (targets.get(inst.memoryMb) ?? 0)) continue;
      this.idle.splice(this.idle.indexOf(inst), 1);
      void inst.stop(0);
    }
  }

  private async addOne(memoryMb: number): Promise<void> {
    const started = this.now();
    this.starting++;
    try {
      const inst = await this.driver.prestart({ memoryMb, startTimeoutMs: this.opts.startTimeoutMs } satisfies PrestartShape);
      this.refillMs = Math.round(0.7 * this.refillMs + 0.3 * (this.now() - started));
      this.failures = 0;
      if (this.closed) {
        void inst.stop(0);
        return;
      }
      this.idle.push(inst);
      void inst.exited.then((exit) => {
        const i = this.idle.indexOf(inst);
        if (i === -1) return; // taken (it ended serving its function) or trimmed
        this.idle.splice(i, 1);
        this.failed(`a pooled instance ended while idle: ${exit.reason ?? `code ${exit.code}, signal ${exit.signal}`}`);
        this.refill();
      });
    } catch (err) {
      this.failed(`pre-starting an instance failed: ${errorMessage(err)}`);
    } finally {
      this.starting--;
    }
  }

  private failed(message: string): void {
    this.failures++;
    const delay = backoffDelay(this.failures, REFILL_BACKOFF);
    this.retryAt = this.now() + delay;
    this.opts.log.warn({ failures: this.failures, retry_in_ms: delay }, `warm pool: ${message}`);
  }
}

/** The driver behind a warm pool when the budget allows one and the driver can pre-start; else the driver itself. */
export function withWarmPool(driver: IsolationDriver, opts: WarmPoolOptions): IsolationDriver {
  if (opts.settings.budgetMb <= 0 || !driver.prestart) return driver;
  return new WarmPool(driver as PrestartingDriver, opts);
}
