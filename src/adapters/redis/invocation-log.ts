/** Invocation records in one Redis list per function, newest first, capped. */
import type { Redis } from 'ioredis';
import type { InvocationLog, Logger } from '../../core/ports.js';
import type { InvocationRecord } from '../../core/types.js';
import { asUnavailable, OutageWarner } from './connection.js';

export const INVOCATIONS_KEPT = 1000;

const listKey = (functionId: string) => `aether:invocations:${functionId}`;

export class RedisInvocationLog implements InvocationLog {
  private readonly outage: OutageWarner;

  constructor(
    private readonly redis: Redis,
    logger: Logger,
  ) {
    this.outage = new OutageWarner(logger, 'invocation records are dropped');
  }

  record(inv: InvocationRecord): void {
    this.append(inv).then(
      () => this.outage.succeeded(),
      (err) => this.outage.failed(err),
    );
  }

  async latest(functionId: string, limit: number): Promise<InvocationRecord[]> {
    const count = Math.min(Math.floor(limit), INVOCATIONS_KEPT);
    if (!(count > 0)) return [];
    let rows: string[];
    try {
      rows = await this.redis.lrange(listKey(functionId), 0, count - 1);
    } catch (err) {
      throw asUnavailable(err, 'invocation records are unavailable because Redis is unreachable');
    }
    return rows.map((row) => JSON.parse(row) as InvocationRecord);
  }

  /** Push and trim in one transaction, so that a list never outgrows the cap. */
  private async append(inv: InvocationRecord): Promise<void> {
    const key = listKey(inv.function_id);
    const replies = await this.redis
      .multi()
      .lpush(key, JSON.stringify(inv))
      .ltrim(key, 0, INVOCATIONS_KEPT - 1)
      .exec();
    const failed = replies?.find(([err]) => err)?.[0];
    if (!replies || failed) throw failed ?? new Error('transaction aborted');
  }
}
