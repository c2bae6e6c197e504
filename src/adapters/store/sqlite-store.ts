/**
 * Function metadata (records, their versions and aliases) and invocation records in one SQLite file (better-sqlite3).
 * WAL with synchronous=FULL: a write is on disk before the API acknowledges it, so a kill -9
 * (or power loss) at any moment loses no acknowledged function. Invocation records are batched
 * into one transaction per flush so the hot path never waits for an fsync.
 */
import Database from 'better-sqlite3';
import { conflict } from '../../core/errors.js';
import { storedRecord } from '../../core/function-spec.js';
import { INVOCATIONS_KEPT, isFailure, newInvocationId, storedInvocation, type InvocationQuery } from '../../core/invocations.js';
import type { FunctionStore, InvocationLog } from '../../core/ports.js';
import type { FunctionRecord, InvocationRecord } from '../../core/types.js';
import type { AliasRecord } from '../../core/types.js';

/** Sorts after every record id (UUIDs are lowercase hex and dashes): "no `before`". */
const AFTER_ALL_IDS = '~';

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
      CREATE TABLE IF NOT EXISTS versions (
        function_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        code_hash TEXT,
        record TEXT NOT NULL,
        PRIMARY KEY (function_id, version)
      ) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS versions_by_code ON versions (code_hash);
      CREATE TABLE IF NOT EXISTS aliases (
        function_id TEXT NOT NULL,
        name TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (function_id, name)
      ) WITHOUT ROWID;
    `);
    migrateInvocations(this.db);
    this.sql = {
      insertFn: this.db.prepare('INSERT INTO functions (id, name, record) VALUES (?, ?, ?)'),
      getFn: this.db.prepare('SELECT record FROM functions WHERE id = ? OR name = ?'),
      listFns: this.db.prepare('SELECT record FROM functions ORDER BY name'),
      updateFn: this.db.prepare('UPDATE functions SET name = ?, record = ? WHERE id = ?'),
      deleteFn: this.db.prepare('DELETE FROM functions WHERE id = ?'),
      // Written once: a version is immutable.
      insertVersion: this.db.prepare('INSERT OR IGNORE INTO versions (function_id, version, code_hash, record) VALUES (?, ?, ?, ?)'),
      getVersion: this.db.prepare('SELECT record FROM versions WHERE function_id = ? AND version = ?'),
      listVersions: this.db.prepare('SELECT record FROM versions WHERE function_id = ? ORDER BY version DESC'),
      deleteVersion: this.db.prepare('DELETE FROM versions WHERE function_id = ? AND version = ?'),
      deleteVersions: this.db.prepare('DELETE FROM versions WHERE function_id = ?'),
      codeInUse: this.db.prepare(
        "SELECT 1 FROM versions WHERE code_hash = ? UNION ALL SELECT 1 FROM functions WHERE json_extract(record, '$.code_hash') = ? LIMIT 1",
      ),
      getAlias: this.db.prepare('SELECT record FROM aliases WHERE function_id = ? AND name = ?'),
      listAliases: this.db.prepare('SELECT record FROM aliases WHERE function_id = ? ORDER BY name'),
      putAlias: this.db.prepare('INSERT OR REPLACE INTO aliases (function_id, name, record) VALUES (?, ?, ?)'),
      deleteAlias: this.db.prepare('DELETE FROM aliases WHERE function_id = ? AND name = ?'),
      deleteAliases: this.db.prepare('DELETE FROM aliases WHERE function_id = ?'),
      deleteInvocations: this.db.prepare('DELETE FROM invocations WHERE function_id = ?'),
      // A NULL filter parameter means "either".
      queryInvocations: this.db.prepare(
        `SELECT record FROM invocations WHERE function_id = @fn AND id < @before
           AND (@failed IS NULL OR failed = @failed) AND (@cold IS NULL OR cold_start = @cold)
         ORDER BY id DESC LIMIT @limit`,
      ),
      insertInvocation: this.db.prepare(INSERT_INVOCATION),
      trimInvocations: this.db.prepare(
        'DELETE FROM invocations WHERE function_id = ? AND id <= (SELECT id FROM invocations WHERE function_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)',
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
    return row && storedRecord(row.record);
  }

  async list(): Promise<FunctionRecord[]> {
    const rows = this.sql.listFns.all() as { record: string }[];
    return rows.map((r) => storedRecord(r.record));
  }

  async update(fn: FunctionRecord): Promise<void> {
    const raw = JSON.stringify(fn);
    try {
      this.db.transaction(() => {
        this.sql.updateFn.run(fn.name, raw, fn.id);
        if (fn.version >= 1) this.sql.insertVersion.run(fn.id, fn.version, fn.code_hash, raw);
      })();
    } catch (err) {
      throw uniqueViolation(err, fn.name) ?? err;
    }
  }

  async delete(id: string): Promise<boolean> {
    return this.db.transaction(() => {
      this.sql.deleteVersions.run(id);
      this.sql.deleteAliases.run(id);
      return this.sql.deleteFn.run(id).changes > 0;
    })();
  }

  async version(functionId: string, version: number): Promise<FunctionRecord | undefined> {
    const row = this.sql.getVersion.get(functionId, version) as { record: string } | undefined;
    return row && storedRecord(row.record);
  }

  async versions(functionId: string): Promise<FunctionRecord[]> {
    return (this.sql.listVersions.all(functionId) as { record: string }[]).map((r) => storedRecord(r.record));
  }

  async removeVersions(functionId: string, versions: number[]): Promise<void> {
    this.db.transaction(() => {
      for (const v of versions) this.sql.deleteVersion.run(functionId, v);
    })();
  }

  async codeInUse(hash: string): Promise<boolean> {
    return this.sql.codeInUse.get(hash, hash) !== undefined;
  }

  async alias(functionId: string, name: string): Promise<AliasRecord | undefined> {
    const row = this.sql.getAlias.get(functionId, name) as { record: string } | undefined;
    return row && (JSON.parse(row.record) as AliasRecord);
  }

  async aliases(functionId: string): Promise<AliasRecord[]> {
    return (this.sql.listAliases.all(functionId) as { record: string }[]).map((r) => JSON.parse(r.record) as AliasRecord);
  }

  async putAlias(alias: AliasRecord): Promise<void> {
    this.sql.putAlias.run(alias.function_id, alias.name, JSON.stringify(alias));
  }

  async deleteAlias(functionId: string, name: string): Promise<boolean> {
    return this.sql.deleteAlias.run(functionId, name).changes > 0;
  }

  record(inv: InvocationRecord): void {
    this.pending.push(inv);
  }

  forget(functionId: string): void {
    this.pending = this.pending.filter((r) => r.function_id !== functionId);
    this.sql.deleteInvocations.run(functionId);
  }

  async query(functionId: string, q: InvocationQuery): Promise<InvocationRecord[]> {
    this.flush();
    const flag = (v: boolean | undefined) => (v === undefined ? null : Number(v));
    const rows = this.sql.queryInvocations.all({
      fn: functionId,
      before: q.before ?? AFTER_ALL_IDS,
      failed: flag(q.failed),
      cold: flag(q.coldStart),
      limit: q.limit,
    }) as { record: string }[];
    return rows.map((r) => storedInvocation(r.record));
  }

  /** Writes buffered invocation records and trims each function's history to the newest ones. */
  flush(): void {
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.db.transaction(() => {
      for (const inv of batch) this.sql.insertInvocation.run(invocationRow(inv));
      for (const id of new Set(batch.map((b) => b.function_id))) this.sql.trimInvocations.run(id, id, INVOCATIONS_KEPT);
    })();
  }

  close(): void {
    clearInterval(this.flushTimer);
    this.flush();
    this.db.close();
  }
}

const INSERT_INVOCATION =
  'INSERT OR REPLACE INTO invocations (function_id, id, failed, cold_start, record) VALUES (@function_id, @id, @failed, @cold_start, @record)';

/** The filter columns next to the record as the API shows it. */
function invocationRow(inv: InvocationRecord) {
  return {
    function_id: inv.function_id,
    id: inv.id,
    failed: Number(isFailure(inv)),
    cold_start: Number(inv.cold_start),
    record: JSON.stringify(inv),
  };
}

/**
 * Schema 1: records keyed by (function, UUIDv7 id) with filter columns. Schema 0 kept them in insertion
 * order with random ids; they are carried over with new ids from their start times (the old id
 * becomes the request id, which it was).
 */
function migrateInvocations(db: Database.Database): void {
  if ((db.pragma('user_version', { simple: true }) as number) >= 1) return;
  db.transaction(() => {
    const old = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'invocations'").get() !== undefined;
    if (old) db.exec('ALTER TABLE invocations RENAME TO invocations_v0; DROP INDEX IF EXISTS invocations_by_function;');
    db.exec(`
      CREATE TABLE invocations (
        function_id TEXT NOT NULL,
        id TEXT NOT NULL,
        failed INTEGER NOT NULL,
        cold_start INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (function_id, id)
      ) WITHOUT ROWID;
    `);
    if (old) {
      const insert = db.prepare(INSERT_INVOCATION);
      for (const row of db.prepare('SELECT record FROM invocations_v0').all() as { record: string }[]) {
        const v0 = JSON.parse(row.record) as Omit<InvocationRecord, 'request_id'>;
        insert.run(invocationRow({ ...v0, id: newInvocationId(Date.parse(v0.started_at)), request_id: v0.id }));
      }
      db.exec('DROP TABLE invocations_v0');
    }
    db.pragma('user_version = 1');
  })();
}

function uniqueViolation(err: unknown, name: string): Error | undefined {
  if (err instanceof Error && /UNIQUE constraint failed: functions\.name/.test(err.message)) {
    return conflict(`a function named ${name} already exists`);
  }
  return undefined;
}
