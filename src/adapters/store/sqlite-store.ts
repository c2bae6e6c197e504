/**
 * Function metadata and invocation records in one SQLite file (better-sqlite3).
 * WAL with synchronous=FULL: a write is on disk before the API acknowledges it, so a kill -9
 * (or power loss) at any moment loses no acknowledged function. Invocation records are batched
 * into one transaction per flush so the hot path never waits for an fsync.
 */
import Database from 'better-sqlite3';
import { conflict } from '../../core/errors.js';
import type { FunctionStore, InvocationLog } from '../../core/ports.js';
import type { FunctionRecord, InvocationRecord } from '../../core/types.js';

const KEEP_INVOCATIONS = 1000; // per function

export class SqliteStore implements FunctionStore, InvocationLog {
  private readonly db: Database.Database;
  private pending: InvocationRecord[] = [];
  private readonly flushTimer: NodeJS.Timeout;
  /** Prepared once: every invocation looks its function up, and preparing costs more than the query. */
  private readonly sql;

  constructor(file: string, flushMs = 200) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS functions (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        record TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS invocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        function_id TEXT NOT NULL,
        record TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function_id, seq);
    `);
    this.sql = {
      insertFn: this.db.prepare('INSERT INTO functions (id, name, record) VALUES (?, ?, ?)'),
      getFn: this.db.prepare('SELECT record FROM functions WHERE id = ? OR name = ?'),
      listFns: this.db.prepare('SELECT record FROM functions ORDER BY name'),
      updateFn: this.db.prepare('UPDATE functions SET name = ?, record = ? WHERE id = ?'),
      deleteFn: this.db.prepare('DELETE FROM functions WHERE id = ?'),
      deleteInvocations: this.db.prepare('DELETE FROM invocations WHERE function_id = ?'),
      latest: this.db.prepare('SELECT record FROM invocations WHERE function_id = ? ORDER BY seq DESC LIMIT ?'),
      insertInvocation: this.db.prepare('INSERT INTO invocations (function_id, record) VALUES (?, ?)'),
      trimInvocations: this.db.prepare(
        'DELETE FROM invocations WHERE function_id = ? AND seq <= (SELECT seq FROM invocations WHERE function_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)',
      ),
    };
    this.flushTimer = setInterval(() => this.flush(), flushMs);
    this.flushTimer.unref();
  }

  async create(fn: FunctionRecord): Promise<void> {
    try {
      this.sql.insertFn.run(fn.id, fn.name, JSON.stringify(fn));
    } catch (err) {
      throw uniqueViolation(err, fn.name) ?? err;
    }
  }

  async get(idOrName: string): Promise<FunctionRecord | undefined> {
    const row = this.sql.getFn.get(idOrName, idOrName) as { record: string } | undefined;
    return row && (JSON.parse(row.record) as FunctionRecord);
  }

  async list(): Promise<FunctionRecord[]> {
    const rows = this.sql.listFns.all() as { record: string }[];
    return rows.map((r) => JSON.parse(r.record) as FunctionRecord);
  }

  async update(fn: FunctionRecord): Promise<void> {
    try {
      this.sql.updateFn.run(fn.name, JSON.stringify(fn), fn.id);
    } catch (err) {
      throw uniqueViolation(err, fn.name) ?? err;
    }
  }

  async delete(id: string): Promise<boolean> {
    const tx = this.db.transaction(() => {
      this.sql.deleteInvocations.run(id);
      return this.sql.deleteFn.run(id).changes > 0;
    });
    this.pending = this.pending.filter((r) => r.function_id !== id);
    return tx();
  }

  record(inv: InvocationRecord): void {
    this.pending.push(inv);
  }

  async latest(functionId: string, limit: number): Promise<InvocationRecord[]> {
    this.flush();
    const rows = this.sql.latest.all(functionId, limit) as { record: string }[];
    return rows.map((r) => JSON.parse(r.record) as InvocationRecord);
  }

  /** Writes buffered invocation records and trims each function's history to the newest ones. */
  flush(): void {
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.db.transaction(() => {
      for (const inv of batch) this.sql.insertInvocation.run(inv.function_id, JSON.stringify(inv));
      for (const id of new Set(batch.map((b) => b.function_id))) this.sql.trimInvocations.run(id, id, KEEP_INVOCATIONS);
    })();
  }

  close(): void {
    clearInterval(this.flushTimer);
    this.flush();
    this.db.close();
  }
}

function uniqueViolation(err: unknown, name: string): Error | undefined {
  if (err instanceof Error && /UNIQUE constraint failed: functions\.name/.test(err.message)) {
    return conflict(`a function named ${name} already exists`);
  }
  return undefined;
}
