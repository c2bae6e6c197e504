/**
 * Cold-start provisioning across gateways and workers on Redis Streams: one stream per worker
 * (`aether:provision:{workerId}`, group `workers`), one dedupe key per function version slot
 * (`aether:provisioning:{fnId}:{version}:{slot}`) so that concurrent gateways start one instance.
 */
import type { Redis } from 'ioredis';
import type { Logger } from '../../core/ports.js';
import { asUnavailable } from './connection.js';
import { ProvisionConsumer, type ConsumeOptions } from './provision-consumer.js';
import { addJob, removeJob, type ProvisionRequest, type ProvisionSlot } from './provision-jobs.js';

export type { ConsumeOptions, ConsumerTiming } from './provision-consumer.js';
export type { ProvisionJob, ProvisionRequest, ProvisionSlot } from './provision-jobs.js';

const COLD_STARTS_UNAVAILABLE = 'cold starts are unavailable because Redis (the provisioning queue) is unreachable';

export interface ProvisionTicket {
  jobId: string;
  /** False when another request for the same slot had already added the job (`jobId` is that job). */
  enqueued: boolean;
}

export class ProvisionQueue {
  constructor(
    private readonly redis: Redis,
    private readonly logger: Logger,
  ) {}

  /** Rejects within about a second with a 503 `queue_unavailable` while Redis is unreachable. */
  async request(req: ProvisionRequest): Promise<ProvisionTicket> {
    try {
      return await addJob(this.redis, req);
    } catch (err) {
      throw asUnavailable(err, COLD_STARTS_UNAVAILABLE);
    }
  }

  /**
   * Removes a job (delivered or not) and frees the slot's dedupe key if it still holds this job:
   * a cold start that timed out leaves nothing behind. A worker already handling the job finishes it.
   */
  async cancel(jobId: string, slot: ProvisionSlot): Promise<void> {
    try {
      await removeJob(this.redis, jobId, slot);
    } catch (err) {
      throw asUnavailable(err, COLD_STARTS_UNAVAILABLE);
    }
  }

  /** Starts consuming the worker's stream (and dead workers' leftovers) until `stop()`. */
  consume(opts: ConsumeOptions): { stop(): Promise<void> } {
    return new ProvisionConsumer(this.redis, this.logger, opts);
  }
}
