/**
 * The invocation log contract, run against both stores: SQLite (single node) and a real
 * redis-server (cluster). Order by start, paging with `before`, the status/cold_start filters
 * (also while paging), the cap per function, and forgetting a deleted function's records.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { Redis } from 'ioredis';
import { connectRedis } from '../src/adapters/redis/connection.js';
import { RedisInvocationLog } from '../src/adapters/redis/invocation-log.js';
import { SqliteStore } from '../src/adapters/store/sqlite-store.js';
import { INVOCATIONS_KEPT, newInvocationId, type InvocationQuery } from '../src/core/invocations.js';
import type { InvocationLog, Logger } from '../src/core/ports.js';
import type { InvocationRecord } from '../src/core/types.js';
import { freePort, redisProcess, type ServiceProcess } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

const T0 = 1_700_000_000_000;
const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

const made = new Map<string, InvocationRecord>();

/** Record i of a function (the same object each time): started at T0 + i ms; every 3rd failed, every 4th a cold start. */
function inv(functionId: string, i: number): InvocationRecord {
  const key = `${functionId} ${i}`;
  const known = made.get(key);
  if (known) return known;
  const id = newInvocationId(T0 + i);
  const failed = i % 3 === 0;
  const record: InvocationRecord = {
    id,
    request_id: `req-${i}`,
    function_id: functionId,
    started_at: new Date(T0 + i).toISOString(),
    status: failed ? (i % 2 ? 502 : 500) : 200,
    duration_ms: i,
    cold_start: i % 4 === 0,
    instance_id: 'i-1',
    // A function's own 500 is a failure without an error message; a 502 from Aether has one.
    error: failed && i % 2 ? `crash ${i}` : null,
    invocation_type: 'RequestResponse',
    attempts: 1,
  };
  made.set(key, record);
  return record;
}

const nums = (records: InvocationRecord[]) => records.map((r) => r.duration_ms);
const range = (from: number, to: number, keep: (i: number) => boolean = () => true) => {
  const out: number[] = [];
  for (let i = from; i >= to; i--) if (keep(i)) out.push(i);
  return out;
};

interface Subject {
  log: InvocationLog;
  /** Waits until `count` records of the function are readable (Redis writes are fire and forget). */
  settled(functionId: string, count: number): Promise<void>;
}

function contract(name: string, open: () => Promise<Subject>) {
  describe(`invocation log on ${name}`, () => {
    let s: Subject;
    before(async () => {
      s = await open();
    });

    const all = async (functionId: string, q: Omit<InvocationQuery, 'limit' | 'before'>, pageSize: number) => {
      const seen: InvocationRecord[] = [];
      for (;;) {
        const page = await s.log.query(functionId, { ...q, limit: pageSize, before: seen.at(-1)?.id });
        assert.ok(page.length <= pageSize);
        seen.push(...page);
        if (page.length < pageSize) return seen;
      }
    };

    test('newest first by start, whatever the order records arrive in; pages with before', async () => {
      const order = [5, 0, 9, 3, 1, 8, 2, 7, 4, 6];
      for (const i of order) s.log.record(inv('fn-page', i));
      await s.settled('fn-page', 10);
      assert.deepEqual(nums(await s.log.query('fn-page', { limit: 3 })), [9, 8, 7]);
      assert.deepEqual((await s.log.query('fn-page', { limit: 1 }))[0], inv('fn-page', 9));
      const page2 = await s.log.query('fn-page', { limit: 3, before: inv('fn-page', 7).id });
      assert.deepEqual(nums(page2), [6, 5, 4]);
      assert.deepEqual(nums(await all('fn-page', {}, 4)), range(9, 0));
      assert.deepEqual(await s.log.query('fn-page', { limit: 5, before: inv('fn-page', 0).id }), []);
      assert.deepEqual(await s.log.query('fn-none', { limit: 5 }), []);
    });

    test('filters: status (an error message or a 5xx) and cold_start, alone, together and while paging', async () => {
      for (let i = 0; i < 60; i++) s.log.record(inv('fn-filter', i));
      await s.settled('fn-filter', 60);
      const failed = (i: number) => i % 3 === 0;
      const cold = (i: number) => i % 4 === 0;
      assert.deepEqual(nums(await s.log.query('fn-filter', { limit: 100, failed: true })), range(59, 0, failed));
      assert.deepEqual(
        nums(await s.log.query('fn-filter', { limit: 100, failed: false })),
        range(59, 0, (i) => !failed(i)),
      );
      assert.deepEqual(nums(await s.log.query('fn-filter', { limit: 100, coldStart: true })), range(59, 0, cold));
      assert.deepEqual(
        nums(await s.log.query('fn-filter', { limit: 100, coldStart: false })),
        range(59, 0, (i) => !cold(i)),
      );
      const both = range(59, 0, (i) => failed(i) && cold(i)); // 48, 36, 24, 12, 0
      assert.deepEqual(nums(await s.log.query('fn-filter', { limit: 100, failed: true, coldStart: true })), both);
      assert.deepEqual(nums(await all('fn-filter', { failed: true, coldStart: true }, 2)), both);
      assert.deepEqual(nums(await all('fn-filter', { failed: true }, 7)), range(59, 0, failed));
      const some = await s.log.query('fn-filter', { limit: 2, failed: true, before: inv('fn-filter', 40).id });
      assert.deepEqual(nums(some), [39, 36]);
    });

    test(`keeps the newest ${INVOCATIONS_KEPT} per function; forget drops a function's records`, async () => {
      for (let i = 0; i < INVOCATIONS_KEPT + 5; i++) s.log.record(inv('fn-cap', i));
      s.log.record(inv('fn-cap-other', 0));
      await s.settled('fn-cap', INVOCATIONS_KEPT);
      await s.settled('fn-cap-other', 1);
      // Redis trims as it adds: wait for the last write before counting.
      await until(
        async () => (await s.log.query('fn-cap', { limit: 1 }))[0]?.duration_ms === INVOCATIONS_KEPT + 4,
        5000,
        'the last record',
      );
      const kept = await all('fn-cap', {}, INVOCATIONS_KEPT);
      assert.equal(kept.length, INVOCATIONS_KEPT);
      assert.equal(kept.at(-1)!.duration_ms, 5);
      s.log.forget('fn-cap');
      await until(async () => (await s.log.query('fn-cap', { limit: 1 })).length === 0, 5000, 'the records to be forgotten');
      assert.equal((await s.log.query('fn-cap-other', { limit: 10 })).length, 1);
    });
  });
}

// SQLite: the real store on a temp file.
const sqliteDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-invlog-'));
let sqlite: SqliteStore | undefined;
contract('SQLite', async () => {
  sqlite = new SqliteStore(path.join(sqliteDir, 'aether.db'));
  const log = sqlite;
  return {
    log,
    settled: async (fn, count) => assert.ok((await log.query(fn, { limit: count })).length >= count, `${count} records of ${fn}`),
  };
});

// Redis: a real redis-server of its own.
let redisServer: ServiceProcess | undefined;
let redis: Redis | undefined;
contract('Redis', async () => {
  const port = await freePort();
  redisServer = redisProcess(port);
  await redisServer.start();
  redis = await connectRedis(`127.0.0.1:${port}`);
  const log = new RedisInvocationLog(redis, silent);
  return {
    log,
    settled: (fn, count) =>
      until(async () => (await log.query(fn, { limit: count })).length >= count, 5000, `${count} records of ${fn} in Redis`, 20),
  };
});

test('SQLite: records of the earlier schema are carried over, ordered by start, with their id as request id', () => {
  const file = path.join(sqliteDir, 'v0.db');
  const db = new Database(file);
  db.exec(`
    CREATE TABLE functions (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL);
    CREATE TABLE invocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, function_id TEXT NOT NULL, record TEXT NOT NULL);
    CREATE INDEX invocations_by_function ON invocations (function_id, seq);
  `);
  const old = (i: number) => ({
    id: `b1e5c0de-0000-4000-8000-00000000000${i}`,
    function_id: 'fn-old',
    started_at: new Date(T0 + i * 1000).toISOString(),
    status: i === 1 ? 502 : 200,
    duration_ms: i,
    cold_start: i === 0,
    instance_id: 'i-old',
    error: i === 1 ? 'crashed' : null,
  });
  for (const i of [0, 1, 2])
    db.prepare('INSERT INTO invocations (function_id, record) VALUES (?, ?)').run('fn-old', JSON.stringify(old(i)));
  db.close();

  return (async () => {
    const store = new SqliteStore(file);
    try {
      const records = await store.query('fn-old', { limit: 10 });
      assert.deepEqual(nums(records), [2, 1, 0]);
      assert.deepEqual(
        records.map((r) => r.request_id),
        [2, 1, 0].map((i) => old(i).id),
      );
      assert.ok(records.every((r) => r.id !== r.request_id && /^[0-9a-f-]{36}$/.test(r.id)));
      assert.deepEqual(nums(await store.query('fn-old', { limit: 10, failed: true })), [1]);
      assert.deepEqual(nums(await store.query('fn-old', { limit: 10, coldStart: true })), [0]);
      store.record(inv('fn-old', 5000));
      assert.equal((await store.query('fn-old', { limit: 1 }))[0]!.duration_ms, 5000);
    } finally {
      store.close();
    }
    const reopened = new SqliteStore(file); // migrates once: a second open changes nothing
    try {
      assert.deepEqual(nums(await reopened.query('fn-old', { limit: 10 })), [5000, 2, 1, 0]);
    } finally {
      reopened.close();
    }
  })();
});

after(async () => {
  sqlite?.close();
  fs.rmSync(sqliteDir, { recursive: true, force: true });
  redis?.disconnect();
  await redisServer?.stop();
});
