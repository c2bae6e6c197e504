/**
 * Function logs: what a line is, how lines are asked for (validated query parameters), and the
 * per-function budget that keeps a function printing in a tight loop from flooding the store.
 */
import { z } from 'zod';
import { badRequest } from './errors.js';

/** `platform`: Aether's own events about the function (started, crashed, dropped lines...). */
export type LogStream = 'stdout' | 'stderr' | 'platform';
export const LOG_STREAMS = ['stdout', 'stderr', 'platform'] as const;

export type PlatformEvent = 'started' | 'start_failed' | 'crashed' | 'oom' | 'timeout' | 'stopped' | 'dropped';

/** A line as written, before the store gives it an id. */
export interface LogEntry {
  time: number; // epoch ms
  function_id: string;
  version: number;
  instance_id: string | null;
  stream: LogStream;
  /** Handler mode: the invocation that wrote it. */
  request_id: string | null;
  event: PlatformEvent | null;
  message: string;
}

/** A stored line as the API shows it. `id` is an opaque cursor, increasing within a function's lines. */
export interface LogLine extends Omit<LogEntry, 'time'> {
  id: string;
  time: string; // ISO 8601
}

export function toLogLine(id: string, e: LogEntry): LogLine {
  return { id, ...e, time: new Date(e.time).toISOString() };
}

export interface LogFilter {
  instance?: string;
  request_id?: string;
  stream?: LogStream;
}

export function matches(e: LogEntry, f: LogFilter): boolean {
  return (
    (f.instance === undefined || e.instance_id === f.instance) &&
    (f.request_id === undefined || e.request_id === f.request_id) &&
    (f.stream === undefined || e.stream === f.stream)
  );
}

export interface LogQuery extends LogFilter {
  since?: number; // epoch ms, inclusive
  until?: number; // epoch ms, inclusive
  limit: number;
  /** Older page: the `limit` newest lines before this cursor. */
  before?: string;
  /** Newer page: the `limit` oldest lines after this cursor (wins over `before`). */
  after?: string;
}

/**
 * Lines oldest first (newest last). `before`: pass it as `?before=` for the previous (older) page,
 * null when there is none. `after`: the last line's cursor, to continue forward with `?after=`.
 */
export interface LogPage {
  lines: LogLine[];
  before: string | null;
  after: string | null;
}

export const MAX_LOG_PAGE = 1000;
const DEFAULT_LOG_PAGE = 100;
const CURSOR = /^\d{1,20}(-\d{1,20})?$/;
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A point in time: RFC 3339 / ISO 8601, epoch milliseconds, or a duration ago (`30s`, `5m`, `2h`, `7d`). */
function timeParam(now: () => number) {
  return z.string().transform((s, ctx) => {
    const ago = DURATION.exec(s);
    const ms = ago ? now() - Number(ago[1]) * UNIT_MS[ago[2]!]! : /^\d+$/.test(s) ? Number(s) : Date.parse(s);
    if (!Number.isFinite(ms)) {
      ctx.addIssue({
        code: 'custom',
        message: 'must be a timestamp (2026-12-01T10:00:00Z or epoch ms) or a duration ago (30s, 5m, 2h, 7d)',
      });
      return z.NEVER;
    }
    return ms;
  });
}

export const isCursor = (s: string) => CURSOR.test(s);
const cursor = z.string().regex(CURSOR, 'must be a cursor: the id of a line from an earlier answer');
const id = z.string().min(1).max(128);

const KNOWN_PARAMS = 'since, until, limit, instance, request_id, stream, before, after, follow';

function querySchema(now: () => number) {
  return z.strictObject(
    {
      since: timeParam(now).optional(),
      until: timeParam(now).optional(),
      limit: z.coerce.number().int().min(1).max(MAX_LOG_PAGE).default(DEFAULT_LOG_PAGE),
      instance: id.optional(),
      request_id: id.optional(),
      stream: z.enum(LOG_STREAMS).optional(),
      before: cursor.optional(),
      after: cursor.optional(),
      follow: z.enum(['1', 'true', '0', 'false']).optional(),
    },
    {
      error: (iss) =>
        iss.code === 'unrecognized_keys'
          ? `Unrecognized key: ${iss.keys.map((k) => `"${k}"`).join(', ')} (known: ${KNOWN_PARAMS})`
          : undefined,
    },
  );
}

/** The query string of `GET /api/functions/{id}/logs`: the route validates with it (and the API description shows it). */
export const logQuerySchema = querySchema(Date.now);

export interface LogRequest {
  query: LogQuery;
  follow: boolean;
}

/** Validates the query string of `GET /api/functions/{id}/logs`; 400 naming the parameter otherwise. */
export function parseLogRequest(params: unknown, now: () => number = Date.now): LogRequest {
  const result = querySchema(now).safeParse(params ?? {});
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const where = issue.path.length ? `${issue.path.join('.')}: ` : '';
    throw badRequest(`invalid log query: ${where}${issue.message}`);
  }
  return logRequest(result.data);
}

/** What a query string that passed logQuerySchema asks for; 400 when its parameters contradict each other. */
export function logRequest(params: z.output<typeof logQuerySchema>): LogRequest {
  const { follow, ...query } = params;
  if (query.since !== undefined && query.until !== undefined && query.since > query.until) {
    throw badRequest('invalid log query: since is after until');
  }
  return { query, follow: follow === '1' || follow === 'true' };
}

export interface LogLimits {
  linesPerSecond: number;
  bytesPerSecond: number;
}

/**
 * One function's log budget in fixed one-second windows. What does not fit is counted, so that one
 * marker line can say how much was dropped instead of a line per drop.
 */
export class LogBudget {
  private windowStart = Number.NEGATIVE_INFINITY;
  private lines = 0;
  private bytes = 0;
  /** Lines dropped since the last marker. */
  dropped = 0;

  constructor(
    private readonly limits: LogLimits,
    private readonly now: () => number,
  ) {}

  /** Whether a line of this many bytes fits the current window (counting it if so, as dropped if not). */
  admit(bytes: number): boolean {
    const now = this.now();
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.lines = 0;
      this.bytes = 0;
    }
    if (this.lines < this.limits.linesPerSecond && this.bytes + bytes <= this.limits.bytesPerSecond) {
      this.lines++;
      this.bytes += bytes;
      return true;
    }
    this.dropped++;
    return false;
  }

  /** When the current window ends (epoch ms): a pending marker is due then at the latest. */
  windowEnd(): number {
    return this.windowStart + 1000;
  }

  /** Whether the window that dropped lines has passed. */
  windowOver(): boolean {
    return this.now() >= this.windowEnd();
  }

  takeDropped(): number {
    const n = this.dropped;
    this.dropped = 0;
    return n;
  }
}

export function droppedMessage(count: number, limits: LogLimits): string {
  const n = (x: number) => x.toLocaleString('en-US');
  return `… ${n(count)} lines dropped (over the log rate limit of ${n(limits.linesPerSecond)} lines or ${n(Math.round(limits.bytesPerSecond / 1024))} KB per second)`;
}
