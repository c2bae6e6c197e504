/**
 * Function logs in a cluster: one Redis Stream per function, capped (`XADD MAXLEN ~`), trimmed by age
 * (`XTRIM MINID ~`) and expiring with its function's silence. Workers write (batched, one pipeline
 * per flush); gateways read and follow, so a gateway shows the lines of every worker. Stream ids are
 * the cursors: ordered by arrival in Redis, whatever the workers' clocks say.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import {
  type LogEntry,
  type LogFilter,
  type LogLine,
  type LogPage,
  type LogQuery,
  type LogStream,
  type PlatformEvent,
  matches,
  toLogLine,
} from '../../core/logs.js';
import type { LogReader, LogSink, Logger } from '../../core/ports.js';
import { asUnavailable, blockingDuplicate, OutageWarner, ready } from './connection.js';
import { type StreamEntry, toEntries } from './provision-jobs.js';

export interface RedisLogSettings {
  maxLinesPerFunction: number;
  retentionMs: number;
  flushMs?: number;
  /** How long one XREAD of a follower blocks before it asks again. */
  blockMs?: number;
}

export const logStreamKey = (functionId: string) => `aether:logs:${functionId}`;

/** Buffered lines beyond this are dropped while Redis is slow or away (reported once per outage). */
const MAX_PENDING = 50_000;
/** Stream ids are Redis' arrival times; a line's own time may differ by the flush delay and clock skew. */
const TIME_MARGIN_MS = 5000;
const SCAN_CHUNK = 500;
const MAX_SEQ = '18446744073709551615';
const AGE_TRIM_EVERY_MS = 60_000;

export class RedisLogStore implements LogSink, LogReader {
  private pending: LogEntry[] = [];
  private flushTimer?: NodeJS.Timeout;
  /** Flushes run one after another, in order. */
  private flushing: Promise<void> = Promise.resolve();
  private readonly ageTrimmed = new Map<string, number>();
  private readonly outage: OutageWarner;

  constructor(
    private readonly redis: Redis,
    private readonly settings: RedisLogSettings,
    logger: Logger,
  ) {
    this.outage = new OutageWarner(logger, 'function log lines are dropped');
  }

  write(entry: LogEntry): void {
    if (this.pending.length >= MAX_PENDING) return;
    this.pending.push(entry);
    if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => void this.flush(), this.settings.flushMs ?? 100);
      this.flushTimer.unref();
    }
  }

  /** Sends the buffered lines in one pipeline, after any flush still running. */
  flush(): Promise<void> {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.flushing = this.flushing.then(async () => {
      if (this.pending.length === 0) return;
      const batch = this.pending;
      this.pending = [];
      try {
        await this.send(batch);
        this.outage.succeeded();
      } catch (err) {
        this.outage.failed(err);
      }
    });
    return this.flushing;
  }

  private async send(batch: LogEntry[]): Promise<void> {
    const { maxLinesPerFunction: maxLen, retentionMs } = this.settings;
    const now = Date.now();
    const multi = this.redis.pipeline();
    const keys = new Set<string>();
    for (const e of batch) {
      const key = logStreamKey(e.function_id);
      keys.add(key);
      multi.xadd(key, 'MAXLEN', '~', maxLen, '*', ...encode(e));
    }
    for (const key of keys) {
      multi.pexpire(key, retentionMs); // a function that stopped logging (or was deleted) leaves nothing behind
      if (now - (this.ageTrimmed.get(key) ?? 0) >= AGE_TRIM_EVERY_MS) {
        this.ageTrimmed.set(key, now);
        multi.xtrim(key, 'MINID', '~', Math.max(0, now - retentionMs));
      }
    }
    const replies = await multi.exec();
    const failed = replies?.find(([err]) => err)?.[0];
    if (!replies || failed) throw failed ?? new Error('pipeline aborted');
  }

  async query(functionId: string, q: LogQuery): Promise<LogPage> {
    const forward = q.after !== undefined;
    const want = forward ? q.limit : q.limit + 1;
    const keep = (e: LogEntry) =>
      matches(e, q) && (q.since === undefined || e.time >= q.since) && (q.until === undefined || e.time <= q.until);
    let lo = forward ? `(${q.after}` : q.since === undefined ? '-' : String(Math.max(0, q.since - TIME_MARGIN_MS));
    let hi = q.before !== undefined && !forward ? `(${q.before}` : q.until === undefined ? '+' : String(q.until + TIME_MARGIN_MS);
    const found: LogLine[] = [];
    try {
      // Filters apply to what Redis returns: scan in chunks until the page is full or the range is done.
      for (;;) {
        const rows = forward
          ? await this.redis.xrange(logStreamKey(functionId), lo, hi, 'COUNT', SCAN_CHUNK)
          : await this.redis.xrevrange(logStreamKey(functionId), hi, lo, 'COUNT', SCAN_CHUNK);
        const entries = toEntries(rows);
        for (const entry of entries) {
          const e = decode(functionId, entry);
          if (e && keep(e)) found.push(toLogLine(entry.id, e));
          if (found.length >= want) break;
        }
        if (found.length >= want || entries.length < SCAN_CHUNK) break;
        if (forward) lo = `(${entries.at(-1)!.id}`;
        else hi = `(${entries.at(-1)!.id}`;
      }
    } catch (err) {
      throw asUnavailable(err, 'function logs are unavailable because Redis is unreachable');
    }
    if (forward) return { lines: found, before: found[0]?.id ?? null, after: found.at(-1)?.id ?? q.after! };
    const more = found.length > q.limit;
    const lines = found.slice(0, q.limit).reverse();
    return { lines, before: more ? lines[0]!.id : null, after: lines.at(-1)?.id ?? null };
  }

  async cursorAt(functionId: string, time?: number): Promise<string> {
    if (time !== undefined) return `${Math.max(0, time - 1)}-${MAX_SEQ}`;
    try {
      const last = toEntries(await this.redis.xrevrange(logStreamKey(functionId), '+', '-', 'COUNT', 1));
      return last[0]?.id ?? '0-0';
    } catch (err) {
      throw asUnavailable(err, 'function logs are unavailable because Redis is unreachable');
    }
  }

  /** One blocking connection per follower: XREAD only when the consumer wants more (no read-ahead). */
  async *follow(functionId: string, filter: LogFilter, after: string, signal: AbortSignal): AsyncIterable<LogLine[]> {
    const blockMs = this.settings.blockMs ?? 5000;
    const conn = blockingDuplicate(this.redis, blockMs);
    const stop = () => conn.disconnect(); // ends a blocked XREAD now
    signal.addEventListener('abort', stop, { once: true });
    try {
      await ready(conn, 2000);
      let cursor = after;
      while (!signal.aborted) {
        let reply: unknown;
        try {
          reply = await conn.xread('COUNT', SCAN_CHUNK, 'BLOCK', blockMs, 'STREAMS', logStreamKey(functionId), cursor);
        } catch {
          if (signal.aborted) return;
          await sleep(500, undefined, { signal }).catch(() => {}); // Redis away: the client reconnects meanwhile
          continue;
        }
        const entries = toEntries(Array.isArray(reply) ? reply[0]?.[1] : null);
        if (entries.length === 0) continue;
        cursor = entries.at(-1)!.id;
        const lines: LogLine[] = [];
        for (const entry of entries) {
          const e = decode(functionId, entry);
          if (e && matches(e, filter)) lines.push(toLogLine(entry.id, e));
        }
        if (lines.length > 0) yield lines;
      }
    } finally {
      signal.removeEventListener('abort', stop);
      conn.disconnect();
    }
  }

  async remove(functionId: string): Promise<void> {
    this.pending = this.pending.filter((e) => e.function_id !== functionId);
    try {
      await this.redis.del(logStreamKey(functionId));
    } catch {
      // The stream expires on its own after the retention time.
    }
  }

  async close(): Promise<void> {
    await this.flush();
  }
}

function encode(e: LogEntry): string[] {
  return [
    't',
    String(e.time),
    'v',
    String(e.version),
    'i',
    e.instance_id ?? '',
    's',
    e.stream,
    'r',
    e.request_id ?? '',
    'e',
    e.event ?? '',
    'm',
    e.message,
  ];
}

function decode(functionId: string, entry: StreamEntry): LogEntry | undefined {
  if (!entry.fields) return undefined;
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < entry.fields.length; i += 2) f[entry.fields[i]!] = entry.fields[i + 1]!;
  if (f.m === undefined || f.s === undefined) return undefined;
  return {
    time: Number(f.t),
    function_id: functionId,
    version: Number(f.v),
    instance_id: f.i || null,
    stream: f.s as LogStream,
    request_id: f.r || null,
    event: (f.e || null) as PlatformEvent | null,
    message: f.m,
  };
}
