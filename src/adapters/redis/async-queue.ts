/**
 * The cluster's async invocation queue on Redis: one stream per function (`aether:async:events:{id}`)
 * read by every gateway through one consumer group, so that each event goes to one gateway; retries
 * wait in a sorted set by due time until a gateway moves them back (atomically, by script); dead
 * letters are a hash per function. An event stays pending under its gateway until its attempt is
 * filed (XACK and XDEL with the next step, in one transaction): a gateway that dies leaves its
 * pending entries behind, and once they are idle for the lease time another gateway takes them over
 * (XAUTOCLAIM). A live gateway keeps the entries it runs fresh (XCLAIM JUSTID), however long they run.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { ReplyError, type Redis } from 'ioredis';
import { redriven } from '../../core/async-invocations.js';
import type { AsyncEvent, DeadLetter } from '../../core/types.js';
import { errorMessage } from '../../core/errors.js';
import type { AsyncQueue, Logger, TakenEvent } from '../../core/ports.js';
import { asUnavailable } from './connection.js';

const FUNCTIONS_KEY = 'aether:async:functions';
const DELAYED_KEY = 'aether:async:delayed';
const GROUP = 'dispatchers';
const streamKey = (functionId: string) => `aether:async:events:${functionId}`;
const deadKey = (functionId: string) => `aether:async:dead:${functionId}`;
/** Retries moved back to their streams per take. */
const MOVE_BATCH = 100;

/** Due retries from the sorted set to their functions' streams, in one atomic step (nothing lost, nothing doubled). */
const MOVE_DUE = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local fid = cjson.decode(member).function_id
  redis.call('SADD', KEYS[2], fid)
  redis.call('XADD', ARGV[3] .. fid, '*', 'e', member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
`;

type Entry = [id: string, fields: string[]];

export class RedisAsyncQueue implements AsyncQueue {
  /** This process in every function's consumer group: pending entries name the gateway that holds them. */
  private readonly consumer = `${os.hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  /** Streams whose group this process knows to exist. */
  private readonly grouped = new Set<string>();
  /** Entries taken and not filed yet: receipt (stream entry id) -> function id. */
  private readonly held = new Map<string, string>();
  private lastRefresh = 0;
  private lastReclaim = 0;

  constructor(
    private readonly redis: Redis,
    private readonly log: Logger,
    /** A dead gateway's events are taken over once they have been idle this long. */
    private readonly leaseMs: number,
  ) {}

  async enqueue(event: AsyncEvent): Promise<void> {
    await this.exec(
      this.redis.multi().sadd(FUNCTIONS_KEY, event.function_id).xadd(streamKey(event.function_id), '*', 'e', JSON.stringify(event)),
      'the async invocation could not be queued because Redis is unreachable',
    );
  }

  async take(room: (functionId: string) => number, now: number): Promise<TakenEvent[]> {
    await this.redis.eval(MOVE_DUE, 2, DELAYED_KEY, FUNCTIONS_KEY, now, MOVE_BATCH, streamKey(''));
    const wall = Date.now();
    if (wall - this.lastRefresh >= this.leaseMs / 3) {
      this.lastRefresh = wall;
      await this.refresh();
    }
    const reclaim = wall - this.lastReclaim >= this.leaseMs / 2;
    if (reclaim) this.lastReclaim = wall;
    const out: TakenEvent[] = [];
    for (const functionId of await this.redis.smembers(FUNCTIONS_KEY)) {
      let left = room(functionId);
      if (left <= 0) continue;
      const key = streamKey(functionId);
      try {
        await this.ensureGroup(key);
        const entries: Entry[] = [];
        if (reclaim) {
          const [, claimed] = (await this.redis.xautoclaim(key, GROUP, this.consumer, this.leaseMs, '0-0', 'COUNT', left)) as [
            string,
            Entry[],
          ];
          entries.push(...claimed);
          if (claimed.length > 0)
            this.log.info({ function: functionId, events: claimed.length }, 'async invocations taken over from a dead gateway');
        }
        left -= entries.length;
        if (left > 0) {
          const reply = (await this.redis.xreadgroup('GROUP', GROUP, this.consumer, 'COUNT', left, 'STREAMS', key, '>')) as
            | [string, Entry[]][]
            | null;
          entries.push(...(reply?.[0]?.[1] ?? []));
        }
        for (const [id, fields] of entries) {
          const json = fields[fields.indexOf('e') + 1];
          if (json === undefined || this.held.has(id)) continue;
          this.held.set(id, functionId);
          out.push({ event: JSON.parse(json) as AsyncEvent, receipt: id });
        }
      } catch (err) {
        if (!(err instanceof ReplyError && /NOGROUP/.test(errorMessage(err)))) throw err;
        this.grouped.delete(key); // the stream went (its function was deleted) and came back
      }
    }
    return out;
  }

  async done(taken: TakenEvent): Promise<void> {
    await this.file(taken, (m, key) => m.xack(key, GROUP, taken.receipt).xdel(key, taken.receipt));
  }

  async retry(taken: TakenEvent, event: AsyncEvent): Promise<void> {
    await this.file(taken, (m, key) =>
      m.zadd(DELAYED_KEY, event.due_at, JSON.stringify(event)).xack(key, GROUP, taken.receipt).xdel(key, taken.receipt),
    );
  }

  async deadLetter(taken: TakenEvent, letter: DeadLetter): Promise<void> {
    await this.file(taken, (m, key) =>
      m
        .hset(deadKey(letter.event.function_id), letter.event.id, JSON.stringify(letter))
        .xack(key, GROUP, taken.receipt)
        .xdel(key, taken.receipt),
    );
  }

  async deadLetters(functionId: string, limit: number): Promise<DeadLetter[]> {
    const letters = (await this.read(() => this.redis.hvals(deadKey(functionId)))).map((json) => JSON.parse(json) as DeadLetter);
    return letters.sort((a, b) => b.failed_at - a.failed_at || (a.event.id < b.event.id ? 1 : -1)).slice(0, limit);
  }

  async redrive(functionId: string, eventId: string | undefined, now: number): Promise<number> {
    const key = deadKey(functionId);
    const found =
      eventId === undefined
        ? await this.read(() => this.redis.hvals(key))
        : [await this.read(() => this.redis.hget(key, eventId))].filter((v): v is string => v !== null);
    if (found.length === 0) return 0;
    const m = this.redis.multi().sadd(FUNCTIONS_KEY, functionId);
    for (const json of found) {
      const letter = JSON.parse(json) as DeadLetter;
      m.xadd(streamKey(functionId), '*', 'e', JSON.stringify(redriven(letter, now))).hdel(key, letter.event.id);
    }
    await this.exec(m, 'dead letters could not be redriven because Redis is unreachable');
    return found.length;
  }

  async removeDeadLetters(functionId: string, eventId: string | undefined): Promise<number> {
    const key = deadKey(functionId);
    if (eventId !== undefined) return this.read(() => this.redis.hdel(key, eventId));
    const replies = await this.exec(
      this.redis.multi().hlen(key).del(key),
      'dead letters could not be deleted because Redis is unreachable',
    );
    return Number(replies[0]);
  }

  async forget(functionId: string): Promise<void> {
    // Its retries still in the sorted set come back to a stream, where dispatchers drop them (no function).
    await this.exec(
      this.redis.multi().srem(FUNCTIONS_KEY, functionId).del(streamKey(functionId)).del(deadKey(functionId)),
      "the function's async invocations could not be removed because Redis is unreachable",
    );
  }

  /** Resets the idle time of the entries this process runs, so that no other gateway takes them over. */
  private async refresh(): Promise<void> {
    const byFunction = new Map<string, string[]>();
    for (const [id, fn] of this.held) byFunction.set(fn, [...(byFunction.get(fn) ?? []), id]);
    for (const [fn, ids] of byFunction) {
      await this.redis.xclaim(streamKey(fn), GROUP, this.consumer, 0, ...ids, 'JUSTID');
    }
  }

  private async ensureGroup(key: string): Promise<void> {
    if (this.grouped.has(key)) return;
    try {
      // From the stream's start: entries added before the group existed are read too.
      await this.redis.xgroup('CREATE', key, GROUP, '0', 'MKSTREAM');
    } catch (err) {
      if (!(err instanceof ReplyError && /BUSYGROUP/.test(errorMessage(err)))) throw err;
    }
    this.grouped.add(key);
  }

  /** Files a taken event in one transaction; whatever happens, this process no longer holds it. */
  private async file(taken: TakenEvent, steps: (m: ReturnType<Redis['multi']>, key: string) => ReturnType<Redis['multi']>): Promise<void> {
    try {
      await this.exec(steps(this.redis.multi(), streamKey(taken.event.function_id)), 'an async invocation could not be filed');
    } finally {
      this.held.delete(taken.receipt);
    }
  }

  private async exec(m: ReturnType<Redis['multi']>, message: string): Promise<unknown[]> {
    let replies: [Error | null, unknown][] | null;
    try {
      replies = await m.exec();
    } catch (err) {
      throw asUnavailable(err, message);
    }
    const failed = replies?.find(([err]) => err)?.[0];
    if (!replies || failed) throw failed ?? new Error('transaction aborted');
    return replies.map(([, value]) => value);
  }

  private async read<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (err) {
      throw asUnavailable(err, 'async invocations are unavailable because Redis is unreachable');
    }
  }
}
