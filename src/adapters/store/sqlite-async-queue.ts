/**
 * The single node's async invocation queue and dead letters in their own SQLite file (better-sqlite3),
 * WAL with synchronous=FULL: an event is on disk before the client gets its 202. A row stays until
 * its attempt is filed, so after a crash (kill -9 included) every event still queued or running then
 * runs again: at least once, never lost.
 */
import Database from 'better-sqlite3';
import { redriven } from '../../core/async-invocations.js';
import type { AsyncEvent, DeadLetter } from '../../core/types.js';
import type { AsyncQueue, TakenEvent } from '../../core/ports.js';

/** Due events read per take; those of functions without room are skipped. */
const SCAN = 500;

export class SqliteAsyncQueue implements AsyncQueue {
  private readonly db: Database.Database;
  private readonly sql;
  /** Events handed out and not filed yet, in this process (a restart forgets them: they run again). */
  private readonly taken = new Set<string>();

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS async_events (
        id TEXT PRIMARY KEY,
        function_id TEXT NOT NULL,
        due_at INTEGER NOT NULL,
        event TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS async_events_due ON async_events (due_at);
      CREATE TABLE IF NOT EXISTS dead_letters (
        function_id TEXT NOT NULL,
        id TEXT NOT NULL,
        failed_at INTEGER NOT NULL,
        letter TEXT NOT NULL,
        PRIMARY KEY (function_id, id)
      ) WITHOUT ROWID;
    `);
    this.sql = {
      put: this.db.prepare(
        'INSERT OR REPLACE INTO async_events (id, function_id, due_at, event) VALUES (@id, @function_id, @due_at, @event)',
      ),
      due: this.db.prepare('SELECT event FROM async_events WHERE due_at <= ? ORDER BY due_at LIMIT ?'),
      remove: this.db.prepare('DELETE FROM async_events WHERE id = ?'),
      putLetter: this.db.prepare(
        'INSERT OR REPLACE INTO dead_letters (function_id, id, failed_at, letter) VALUES (@function_id, @id, @failed_at, @letter)',
      ),
      letters: this.db.prepare('SELECT letter FROM dead_letters WHERE function_id = ? ORDER BY failed_at DESC, id DESC LIMIT ?'),
      // A NULL id means "all of the function's".
      lettersOf: this.db.prepare('SELECT letter FROM dead_letters WHERE function_id = @fn AND (@id IS NULL OR id = @id)'),
      removeLetters: this.db.prepare('DELETE FROM dead_letters WHERE function_id = @fn AND (@id IS NULL OR id = @id)'),
      forgetEvents: this.db.prepare('DELETE FROM async_events WHERE function_id = ?'),
    };
  }

  async enqueue(event: AsyncEvent): Promise<void> {
    this.put(event);
  }

  async take(room: (functionId: string) => number, now: number): Promise<TakenEvent[]> {
    const left = new Map<string, number>();
    const out: TakenEvent[] = [];
    for (const row of this.sql.due.all(now, SCAN) as { event: string }[]) {
      const event = JSON.parse(row.event) as AsyncEvent;
      if (this.taken.has(event.id)) continue;
      const n = left.get(event.function_id) ?? room(event.function_id);
      if (n <= 0) continue;
      left.set(event.function_id, n - 1);
      this.taken.add(event.id);
      out.push({ event, receipt: event.id });
    }
    return out;
  }

  async done(taken: TakenEvent): Promise<void> {
    this.file(taken, () => this.sql.remove.run(taken.event.id));
  }

  async retry(taken: TakenEvent, event: AsyncEvent): Promise<void> {
    this.file(taken, () => this.put(event));
  }

  async deadLetter(taken: TakenEvent, letter: DeadLetter): Promise<void> {
    this.file(
      taken,
      this.db.transaction(() => {
        this.sql.remove.run(taken.event.id);
        this.putLetter(letter);
      }),
    );
  }

  async deadLetters(functionId: string, limit: number): Promise<DeadLetter[]> {
    return (this.sql.letters.all(functionId, limit) as { letter: string }[]).map((r) => JSON.parse(r.letter) as DeadLetter);
  }

  async redrive(functionId: string, eventId: string | undefined, now: number): Promise<number> {
    return this.db.transaction(() => {
      const rows = this.sql.lettersOf.all({ fn: functionId, id: eventId ?? null }) as { letter: string }[];
      for (const row of rows) this.put(redriven(JSON.parse(row.letter) as DeadLetter, now));
      this.sql.removeLetters.run({ fn: functionId, id: eventId ?? null });
      return rows.length;
    })();
  }

  async removeDeadLetters(functionId: string, eventId: string | undefined): Promise<number> {
    return this.sql.removeLetters.run({ fn: functionId, id: eventId ?? null }).changes;
  }

  async forget(functionId: string): Promise<void> {
    this.db.transaction(() => {
      this.sql.forgetEvents.run(functionId);
      this.sql.removeLetters.run({ fn: functionId, id: null });
    })();
  }

  close(): void {
    this.db.close();
  }

  private put(event: AsyncEvent): void {
    this.sql.put.run({ id: event.id, function_id: event.function_id, due_at: event.due_at, event: JSON.stringify(event) });
  }

  private putLetter(letter: DeadLetter): void {
    const { event } = letter;
    this.sql.putLetter.run({ function_id: event.function_id, id: event.id, failed_at: letter.failed_at, letter: JSON.stringify(letter) });
  }

  /** Whatever happens to the write, the event is no longer this process's to run. */
  private file(taken: TakenEvent, write: () => unknown): void {
    try {
      write();
    } finally {
      this.taken.delete(taken.receipt);
    }
  }
}
