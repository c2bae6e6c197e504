/**
 * Invocation records in Redis, one sorted set per function, capped. Every member has score 0 and
 * is `<record id> <record JSON>`: members then sort by record id (a UUIDv7, i.e. by start time), so a
 * page is one ZREVRANGEBYLEX from just below `before`, whichever gateway wrote the records.
 */
import type { Redis } from 'ioredis';
import { INVOCATIONS_KEPT, matches, storedInvocation, type InvocationQuery } from '../../core/invocations.js';
import type { InvocationLog, Logger } from '../../core/ports.js';
import type { InvocationRecord } from '../../core/types.js';
import { asUnavailable, OutageWarner } from './connection.js';

const setKey = (functionId: string) => `aether:invocation-records:${functionId}`;
/** Filters are applied while reading: at most this many members per round trip. */
const SCAN_BATCH = 200;

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

  async query(functionId: string, q: InvocationQuery): Promise<InvocationRecord[]> {
    const limit = Math.min(Math.floor(q.limit), INVOCATIONS_KEPT);
    const out: InvocationRecord[] = [];
    if (!(limit > 0)) return out;
    const filtered = q.failed !== undefined || q.coldStart !== undefined;
    let max = q.before === undefined ? '+' : `(${q.before}`;
    try {
      for (;;) {
        const batch = filtered ? SCAN_BATCH : limit - out.length;
        const members = await this.redis.zrevrangebylex(setKey(functionId), max, '-', 'LIMIT', 0, batch);
        for (const member of members) {
          const inv = storedInvocation(member.slice(member.indexOf(' ') + 1));
          if (matches(inv, q) && out.push(inv) === limit) return out;
        }
        if (members.length < batch) return out;
        max = `(${members.at(-1)}`;
      }
    } catch (err) {
      throw asUnavailable(err, 'invocation records are unavailable because Redis is unreachable');
    }
  }

  forget(functionId: string): void {
    this.redis.del(setKey(functionId)).then(
      () => this.outage.succeeded(),
      (err) => this.outage.failed(err),
    );
  }

  /** Add and trim in one transaction, so that a set never outgrows the cap. */
  private async append(inv: InvocationRecord): Promise<void> {
    const key = setKey(inv.function_id);
    const replies = await this.redis
      .multi()
      .zadd(key, 0, `${inv.id} ${JSON.stringify(inv)}`)
      .zremrangebyrank(key, 0, -INVOCATIONS_KEPT - 1)
      .exec();
    const failed = replies?.find(([err]) => err)?.[0];
    if (!replies || failed) throw failed ?? new Error('transaction aborted');
  }
}
