/**
 * The worker side of the provisioning queue: reads the worker's own stream with a blocking
 * XREADGROUP, and every second takes over jobs that dead workers left behind. A job is acked only
 * after `handle` has finished (at-least-once); a job whose deadline passed is acked without running.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ReplyError, type Redis } from 'ioredis';
import { errorMessage } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';
import { blockingDuplicate, OutageWarner, ready } from './connection.js';
import {
  decodeJob,
  dropIfEmpty,
  GROUP,
  removeJob,
  streamKey,
  TARGETS_KEY,
  toEntries,
  type ProvisionJob,
  type StreamEntry,
} from './provision-jobs.js';

export interface ConsumeOptions {
  /** Also the consumer name in every stream's group, so that pending entries name their worker. */
  workerId: string;
  /** Starts (and registers) the instance. A rejection is logged and the job acked, not retried. */
  handle(job: ProvisionJob): Promise<void>;
  /** Whether a worker is alive (registered in etcd): the jobs of dead ones are taken over. */
  isAlive(workerId: string): boolean;
  timing?: Partial<ConsumerTiming>;
}

export interface ConsumerTiming {
  /** How long one XREADGROUP on the own stream blocks. */
  blockMs: number;
  /** How often dead workers' streams are checked. */
  takeoverIntervalMs: number;
  /** A dead worker's pending job is claimed once idle this long (XCLAIM's min-idle-time). */
  claimIdleMs: number;
  /** Pause between attempts while Redis is unreachable. */
  retryMs: number;
}

const DEFAULT_TIMING: ConsumerTiming = { blockMs: 1000, takeoverIntervalMs: 1000, claimIdleMs: 1000, retryMs: 500 };
const BATCH = 16;

export class ProvisionConsumer {
  private stopped = false;
  private readonly abort = new AbortController();
  /** Jobs being handled, by stream and entry id: an entry seen twice (own history, a claim) runs once. */
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly timing: ConsumerTiming;
  private readonly blocking: Redis;
  private readonly outage: OutageWarner;
  private readonly loops: Promise<void>[];

  constructor(
    private readonly redis: Redis,
    private readonly logger: Logger,
    private readonly opts: ConsumeOptions,
  ) {
    this.timing = { ...DEFAULT_TIMING, ...opts.timing };
    this.blocking = blockingDuplicate(redis, this.timing.blockMs);
    this.outage = new OutageWarner(logger, `provisioning consumer of worker ${opts.workerId}`);
    this.loops = [this.readOwn(), this.takeOverLoop()];
  }

  /** Stops reading, then waits for the jobs being handled to finish and be acked. */
  async stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      this.abort.abort();
      this.blocking.disconnect(); // ends a blocked XREADGROUP now
    }
    await Promise.all(this.loops);
    await Promise.allSettled(this.inFlight.values());
  }

  private get me(): string {
    return this.opts.workerId;
  }

  private alive(workerId: string): boolean {
    return workerId === this.me || this.opts.isAlive(workerId);
  }

  private async readOwn(): Promise<void> {
    const own = streamKey(this.me);
    // First the entries still pending for this worker id (a previous run died before acking them),
    // then new ones.
    let cursor = '0';
    await ready(this.blocking, 2000);
    while (!this.stopped) {
      try {
        const reply = await this.blocking.xreadgroup(
          'GROUP',
          GROUP,
          this.me,
          'COUNT',
          BATCH,
          'BLOCK',
          this.timing.blockMs,
          'STREAMS',
          own,
          cursor,
        );
        this.outage.succeeded();
        const entries = toEntries(Array.isArray(reply) ? reply[0]?.[1] : null);
        if (cursor !== '>') cursor = entries.at(-1)?.id ?? '>';
        for (const entry of entries) this.run(this.me, entry);
      } catch (err) {
        if (this.stopped) return;
        await this.recoverOwn(err);
      }
    }
  }

  /** A missing group (first start, or Redis restarted empty) is created; anything else is waited out. */
  private async recoverOwn(err: unknown): Promise<void> {
    if (isReplyError(err, 'NOGROUP')) {
      try {
        await this.createGroup(streamKey(this.me));
        await this.redis.sadd(TARGETS_KEY, this.me); // so that the stream is cleaned up after this worker dies
        return;
      } catch (createErr) {
        err = createErr;
      }
    }
    this.outage.failed(err);
    await this.pause(this.timing.retryMs);
  }

  private async takeOverLoop(): Promise<void> {
    while (!this.stopped) {
      await this.pause(this.timing.takeoverIntervalMs);
      if (this.stopped) return;
      try {
        await this.takeOver();
      } catch (err) {
        this.outage.failed(err);
      }
    }
  }

  /**
   * Every stream may hold entries pending for a dead consumer (its worker, or a worker that had
   * taken them over and died too); a dead worker's stream may also hold entries never delivered.
   */
  private async takeOver(): Promise<void> {
    for (const worker of await this.redis.smembers(TARGETS_KEY)) {
      if (this.stopped) return;
      const dead = !this.alive(worker);
      try {
        if (dead) await this.createGroup(streamKey(worker)); // a stream added to after Redis lost it has none
        await this.claimFromDeadConsumers(worker);
        if (dead) {
          await this.readUndelivered(worker);
          await dropIfEmpty(this.redis, worker);
        }
      } catch (err) {
        // Redis answered (e.g. the owner has not recreated its group yet): skip this stream this round.
        if (!(err instanceof ReplyError)) throw err;
        this.logger.debug({ worker, err: errorMessage(err) }, 'provisioning takeover skipped a stream');
      }
    }
  }

  /**
   * Claims per consumer rather than with XAUTOCLAIM, which would also take jobs that a live worker
   * is still handling (taken over earlier, hence idle in the group): only dead owners lose theirs.
   * XCLAIM's min-idle-time makes concurrent claims safe: the first resets the idle time.
   */
  private async claimFromDeadConsumers(worker: string): Promise<void> {
    const stream = streamKey(worker);
    const summary = (await this.redis.xpending(stream, GROUP)) as [number, string | null, string | null, [string, string][] | null];
    for (const [consumer] of summary[3] ?? []) {
      if (this.alive(consumer)) continue;
      const pending = (await this.redis.xpending(stream, GROUP, 'IDLE', this.timing.claimIdleMs, '-', '+', BATCH, consumer)) as [string][];
      if (pending.length === 0) continue;
      const claimed = await this.redis.xclaim(stream, GROUP, this.me, this.timing.claimIdleMs, ...pending.map(([id]) => id));
      for (const entry of toEntries(claimed)) this.run(worker, entry);
    }
  }

  private async readUndelivered(worker: string): Promise<void> {
    const reply = await this.redis.xreadgroup('GROUP', GROUP, this.me, 'COUNT', BATCH, 'STREAMS', streamKey(worker), '>');
    for (const entry of toEntries(Array.isArray(reply) ? reply[0]?.[1] : null)) this.run(worker, entry);
  }

  /** Creates the group at the stream's start, so that entries added before it are delivered too. */
  private async createGroup(stream: string): Promise<void> {
    try {
      await this.redis.xgroup('CREATE', stream, GROUP, '0', 'MKSTREAM');
    } catch (err) {
      if (!isReplyError(err, 'BUSYGROUP')) throw err;
    }
  }

  private run(worker: string, entry: StreamEntry): void {
    const key = `${worker} ${entry.id}`;
    if (this.inFlight.has(key)) return;
    this.inFlight.set(
      key,
      this.process(worker, entry).finally(() => this.inFlight.delete(key)),
    );
  }

  private async process(worker: string, entry: StreamEntry): Promise<void> {
    const job = decodeJob(worker, entry);
    try {
      if (!job) {
        // Deleted while pending (cancelled) or not a job: nothing to run, only to acknowledge.
        await this.redis.xack(streamKey(worker), GROUP, entry.id);
        return;
      }
      if (Date.now() >= job.deadline) {
        this.logger.info({ job_id: job.jobId, function_id: job.functionId }, 'provisioning job expired before it started: dropped');
      } else {
        await this.opts.handle(job).catch((err: unknown) => {
          this.logger.warn({ job_id: job.jobId, function_id: job.functionId, err: errorMessage(err) }, 'provisioning job failed');
        });
      }
      await removeJob(this.redis, job.jobId, job);
    } catch (err) {
      // Stays pending under this worker: taken over (and dropped once expired) if this worker dies.
      this.logger.warn({ stream: streamKey(worker), entry: entry.id, err: errorMessage(err) }, 'could not acknowledge a provisioning job');
    }
  }

  private pause(ms: number): Promise<void> {
    return sleep(ms, undefined, { signal: this.abort.signal }).catch(() => {});
  }
}

function isReplyError(err: unknown, code: string): boolean {
  return err instanceof ReplyError && (err as Error).message.startsWith(code);
}
