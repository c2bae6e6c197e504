/**
 * Function logs on a single node: one SQLite file of their own in the data dir (a flood of log
 * writes never contends with the function records' fsyncs). Lines are batched into one transaction
 * per flush, without an fsync each (WAL, synchronous=NORMAL: a crash may lose the last lines, never
 * the database). Retention runs in small steps in the background: per function at most
 * `maxLinesPerFunction` lines, nothing older than `retentionMs`, and the whole file within `maxBytes`
 * (oldest lines first; freed pages go back to the file system by incremental vacuum).
 */
import Database from 'better-sqlite3';
import { type LogEntry, type LogFilter, type LogLine, type LogPage, type LogQuery, toLogLine } from '../../core/logs.js';
import type { LogReader, LogSink, Logger } from '../../core/ports.js';

export interface SqliteLogSettings {
  maxBytes: number;
  retentionMs: number;
  maxLinesPerFunction: number;
  flushMs?: number;
  maintenanceMs?: number;
  now?: () => number;
}

/** Buffered lines beyond this are dropped (and said so once): the rate limit keeps it from happening. */
const MAX_PENDING = 100_000;
/** Retention deletes at most this many lines per statement, so that no step stalls the event loop. */
const DELETE_STEP = 20_000;
const FOLLOW_BATCH = 500;

/** A stored line: the entry as written, plus its sequence number (the cursor). */
type Row = LogEntry & { seq: number };

const toLine = ({ seq, ...e }: Row): LogLine => toLogLine(String(seq), e);
const seqOf = (cursor: string) => Number.parseInt(cursor, 10);

export class SqliteLogStore implements LogSink, LogReader {
  private readonly db: Database.Database;
  private pending: LogEntry[] = [];
  private flushTimer?: NodeJS.Timeout;
  private readonly maintenanceTimer: NodeJS.Timeout;
  /** Functions written since the last retention pass (their per-function cap is checked). */
  private readonly touched = new Set<string>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly statements = new Map<string, Database.Statement>();
  private readonly now: () => number;
  private overflowWarned = false;
  private closed = false;
  private readonly sql;

  constructor(
    file: string,
    private readonly settings: SqliteLogSettings,
    private readonly log?: Logger,
  ) {
    this.now = settings.now ?? Date.now;
    this.db = new Database(file);
    this.db.pragma('auto_vacuum = INCREMENTAL'); // only takes effect on a new file: before any table exists
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('journal_size_limit = 8388608');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS lines (
        seq INTEGER PRIMARY KEY,
        function_id TEXT NOT NULL,
        time INTEGER NOT NULL,
        version INTEGER NOT NULL,
        instance_id TEXT,
        stream TEXT NOT NULL,
        request_id TEXT,
        event TEXT,
        message TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS lines_by_function ON lines (function_id, seq);
      CREATE INDEX IF NOT EXISTS lines_by_request ON lines (function_id, request_id, seq) WHERE request_id IS NOT NULL;
    `);
    this.sql = {
      insert: this.db.prepare(
        'INSERT INTO lines (function_id, time, version, instance_id, stream, request_id, event, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      maxSeq: this.db.prepare('SELECT max(seq) AS seq FROM lines').pluck(),
      seqRange: this.db.prepare('SELECT min(seq) AS lo, max(seq) AS hi FROM lines'),
      firstAtOrAfter: this.db.prepare('SELECT seq FROM lines WHERE function_id = ? AND time >= ? ORDER BY seq LIMIT 1').pluck(),
      nthNewest: this.db.prepare('SELECT seq FROM lines WHERE function_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?').pluck(),
      trimFunction: this.db.prepare(
        'DELETE FROM lines WHERE seq IN (SELECT seq FROM lines WHERE function_id = ? AND seq <= ? ORDER BY seq LIMIT ?)',
      ),
      firstYoung: this.db.prepare('SELECT seq FROM lines WHERE time >= ? ORDER BY seq LIMIT 1').pluck(),
      deleteBelow: this.db.prepare('DELETE FROM lines WHERE seq < ?'),
      deleteFunction: this.db.prepare('DELETE FROM lines WHERE function_id = ?'),
    };
    this.maintenanceTimer = setInterval(() => this.maintain(), settings.maintenanceMs ?? 1000);
    this.maintenanceTimer.unref();
  }

  write(entry: LogEntry): void {
    if (this.closed) return;
    if (this.pending.length >= MAX_PENDING) {
      if (!this.overflowWarned) this.log?.warn({ pending: this.pending.length }, 'function log lines dropped: the log store is behind');
      this.overflowWarned = true;
      return;
    }
    this.pending.push(entry);
    if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => this.flush(), this.settings.flushMs ?? 100);
      this.flushTimer.unref();
    }
  }

  async query(functionId: string, q: LogQuery): Promise<LogPage> {
    this.flush();
    const forward = q.after !== undefined;
    const where = ['function_id = @fn'];
    const params: Record<string, unknown> = { fn: functionId, limit: forward ? q.limit : q.limit + 1 };
    const add = (clause: string, name: string, value: unknown) => {
      if (value === undefined) return;
      where.push(clause);
      params[name] = value;
    };
    add('time >= @since', 'since', q.since);
    add('time <= @until', 'until', q.until);
    add('instance_id = @instance', 'instance', q.instance);
    add('request_id = @request_id', 'request_id', q.request_id);
    add('stream = @stream', 'stream', q.stream);
    if (forward) add('seq > @after', 'after', seqOf(q.after!));
    else add('seq < @before', 'before', q.before === undefined ? undefined : seqOf(q.before));
    const order = forward ? 'ASC' : 'DESC';
    const rows = this.statement(`SELECT * FROM lines WHERE ${where.join(' AND ')} ORDER BY seq ${order} LIMIT @limit`).all(params) as Row[];
    if (forward) {
      const lines = rows.map(toLine);
      return { lines, before: lines[0]?.id ?? null, after: lines.at(-1)?.id ?? q.after! };
    }
    const more = rows.length > q.limit;
    const lines = rows.slice(0, q.limit).reverse().map(toLine);
    return { lines, before: more ? lines[0]!.id : null, after: lines.at(-1)?.id ?? null };
  }

  async cursorAt(functionId: string, time?: number): Promise<string> {
    this.flush();
    const end = (this.sql.maxSeq.get() as number | null) ?? 0;
    if (time === undefined) return String(end);
    const first = this.sql.firstAtOrAfter.get(functionId, time) as number | undefined;
    return String(first === undefined ? end : first - 1);
  }

  async *follow(functionId: string, filter: LogFilter, after: string, signal: AbortSignal): AsyncIterable<LogLine[]> {
    let cursor = seqOf(after);
    const where = ['function_id = @fn', 'seq > @cursor', 'seq <= @upto'];
    if (filter.instance !== undefined) where.push('instance_id = @instance');
    if (filter.request_id !== undefined) where.push('request_id = @request_id');
    if (filter.stream !== undefined) where.push('stream = @stream');
    const select = this.statement(`SELECT * FROM lines WHERE ${where.join(' AND ')} ORDER BY seq LIMIT ${FOLLOW_BATCH}`);
    const params: Record<string, unknown> = { fn: functionId };
    if (filter.instance !== undefined) params.instance = filter.instance;
    if (filter.request_id !== undefined) params.request_id = filter.request_id;
    if (filter.stream !== undefined) params.stream = filter.stream;
    while (!signal.aborted && !this.closed) {
      // Up to the newest line now: a filter that matches nothing never rescans what it has passed.
      const upto = (this.sql.maxSeq.get() as number | null) ?? 0;
      const rows = select.all({ ...params, cursor, upto }) as Row[];
      cursor = rows.length === FOLLOW_BATCH ? rows.at(-1)!.seq : Math.max(cursor, upto);
      if (rows.length > 0) yield rows.map(toLine);
      else await this.changed(functionId, signal);
    }
  }

  async remove(functionId: string): Promise<void> {
    this.pending = this.pending.filter((e) => e.function_id !== functionId);
    this.sql.deleteFunction.run(functionId);
  }

  /** Writes the buffered lines in one transaction and wakes the followers of their functions. */
  flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.pending.length === 0 || this.closed) return;
    const batch = this.pending;
    this.pending = [];
    this.overflowWarned = false;
    this.db.transaction(() => {
      for (const e of batch) {
        this.sql.insert.run(e.function_id, e.time, e.version, e.instance_id, e.stream, e.request_id, e.event, e.message);
      }
    })();
    const functions = new Set(batch.map((e) => e.function_id));
    for (const fn of functions) {
      this.touched.add(fn);
      this.wake(fn);
    }
  }

  /** One retention step: per-function caps, age, then total size. Each bounded, the next pass goes on. */
  maintain(): void {
    if (this.closed) return;
    this.flush();
    let deleted = 0;
    for (const fn of this.touched) {
      const newestKept = this.sql.nthNewest.get(fn, this.settings.maxLinesPerFunction) as number | undefined;
      const trimmed = newestKept === undefined ? 0 : this.sql.trimFunction.run(fn, newestKept, DELETE_STEP).changes;
      deleted += trimmed;
      if (trimmed < DELETE_STEP) this.touched.delete(fn); // else: more to trim in the next pass
    }
    const { lo, hi } = this.sql.seqRange.get() as { lo: number | null; hi: number | null };
    if (lo === null || hi === null) return;
    const young = this.sql.firstYoung.get(this.now() - this.settings.retentionMs) as number | undefined;
    let cut = young ?? hi + 1;
    const used = this.usedBytes();
    if (used > this.settings.maxBytes) {
      // Line ids are dense enough to estimate: drop the oldest share that brings the file under its cap.
      const share = Math.min(0.5, (used - this.settings.maxBytes) / used + 0.05);
      cut = Math.max(cut, lo + Math.ceil((hi - lo + 1) * share));
    }
    if (cut > lo) deleted += this.sql.deleteBelow.run(Math.min(cut, lo + DELETE_STEP)).changes;
    if (deleted > 0) this.db.pragma('incremental_vacuum');
  }

  /** Bytes the lines take in the database file (free pages not counted). */
  usedBytes(): number {
    const pageSize = this.db.pragma('page_size', { simple: true }) as number;
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const free = this.db.pragma('freelist_count', { simple: true }) as number;
    return (pages - free) * pageSize;
  }

  close(): void {
    clearInterval(this.maintenanceTimer);
    this.flush();
    this.closed = true;
    for (const fn of [...this.waiters.keys()]) this.wake(fn);
    this.db.close();
  }

  private changed(functionId: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiters.get(functionId);
      if (!set) this.waiters.set(functionId, (set = new Set()));
      const done = () => {
        signal.removeEventListener('abort', done);
        set.delete(done);
        if (set.size === 0 && this.waiters.get(functionId) === set) this.waiters.delete(functionId);
        resolve();
      };
      set.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  private wake(functionId: string): void {
    for (const done of [...(this.waiters.get(functionId) ?? [])]) done();
  }

  /** Queries differ only in which filters are present: each shape is prepared once. */
  private statement(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) this.statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }
}
