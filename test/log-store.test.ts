/**
 * Function logs below the HTTP layer: the query parameters, the capture pipeline (request-id frames,
 * rate limit and its marker line, masking, platform events) and both stores against the real thing:
 * SQLite files (retention by lines, age and size, with a fake clock) and a real redis-server.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, mock, test } from 'node:test';
import type { Redis } from 'ioredis';
import { connectRedis } from '../src/adapters/redis/connection.js';
import { logStreamKey, RedisLogStore } from '../src/adapters/redis/log-stream.js';
import { SqliteLogStore } from '../src/adapters/store/sqlite-log-store.js';
import { AetherError } from '../src/core/errors.js';
import { unframe } from '../src/adapters/isolation/instance/output.js';
import { LogWriter } from '../src/core/log-writer.js';
import { type LogEntry, type LogLine, parseLogRequest } from '../src/core/logs.js';
import type { LogReader, Logger } from '../src/core/ports.js';
import type { FunctionRecord } from '../src/core/types.js';
import { secretMasker } from '../src/secret-mask.js';
import { freePort, redisProcess, type ServiceProcess } from './helpers/services.js';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-logstore-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let n = 0;
function entry(fields: Partial<LogEntry> = {}): LogEntry {
  n++;
  return {
    time: Date.now(),
    function_id: 'f1',
    version: 1,
    instance_id: 'i1',
    stream: 'stdout',
    request_id: null,
    event: null,
    message: `line ${n}`,
    ...fields,
  };
}

const fn = (over: Partial<FunctionRecord> = {}) =>
  ({ id: 'f1', name: 'one', version: 3, env_vars: { TOKEN: 'sk-very-secret' }, ...over }) as FunctionRecord;

describe('log query parameters', () => {
  const now = () => Date.parse('2026-12-01T12:00:00Z');

  test('times: ISO 8601, epoch ms and durations ago; defaults and follow', () => {
    const r = parseLogRequest({ since: '5m', until: '2026-12-01T11:59:00Z', limit: '7', stream: 'stderr', follow: '1' }, now);
    assert.equal(r.query.since, now() - 5 * 60_000);
    assert.equal(r.query.until, now() - 60_000);
    assert.equal(r.query.limit, 7);
    assert.equal(r.query.stream, 'stderr');
    assert.equal(r.follow, true);
    assert.deepEqual(parseLogRequest({ since: '1700000000000' }, now).query, { since: 1_700_000_000_000, limit: 100 });
    assert.equal(parseLogRequest({}, now).follow, false);
  });

  test('bad input is a 400 naming the parameter and how to fix it', () => {
    const bad = (q: Record<string, string>, re: RegExp) =>
      assert.throws(
        () => parseLogRequest(q, now),
        (e: unknown) => e instanceof AetherError && e.status === 400 && re.test(e.message),
      );
    bad({ since: 'yesterday' }, /since: must be a timestamp .* or a duration ago/);
    bad({ limit: '5000' }, /limit/);
    bad({ stream: 'stdin' }, /stream/);
    bad({ before: 'abc' }, /before: must be a cursor/);
    bad({ colour: 'red' }, /Unrecognized key.*known: since, until/);
    bad({ since: '1m', until: '2h' }, /since is after until/);
  });
});

describe('capture pipeline', () => {
  function writer(limits = { linesPerSecond: 5, bytesPerSecond: 1 << 20 }) {
    let clock = 1_000_000;
    const written: LogEntry[] = [];
    const dropped: number[] = [];
    const w = new LogWriter({
      sink: { write: (e) => written.push(e) },
      limits,
      masker: (f) => secretMasker(f.env_vars),
      onDropped: (_f, count) => dropped.push(count),
      now: () => clock,
    });
    return { w, written, dropped, tick: (ms: number) => (clock += ms) };
  }

  test('request-id frames are split off; anything else is a plain line', () => {
    assert.deepEqual(unframe('\u001ereq-1\u001fhello'), { requestId: 'req-1', text: 'hello' });
    assert.deepEqual(unframe('plain \u001ereq\u001f'), { text: 'plain \u001ereq\u001f' });
    assert.deepEqual(unframe('\u001eno end'), { text: '\u001eno end' });
    assert.deepEqual(unframe(`\u001e${'x'.repeat(300)}\u001fy`).requestId, undefined);
  });

  test('lines carry function, version, instance, stream and request id; secrets are masked', () => {
    const { w, written } = writer();
    w.line(fn(), 'inst-a', 'stderr', 'the token is sk-very-secret', 'req-7');
    assert.deepEqual(written, [
      {
        time: 1_000_000,
        function_id: 'f1',
        version: 3,
        instance_id: 'inst-a',
        stream: 'stderr',
        request_id: 'req-7',
        event: null,
        message: 'the token is ****',
      },
    ]);
  });

  test('over the rate limit lines are dropped and counted in one marker line per window', () => {
    const { w, written, dropped, tick } = writer();
    for (let i = 0; i < 12_345 + 5; i++) w.line(fn(), 'i', 'stdout', `flood ${i}`);
    assert.equal(written.length, 5);
    tick(1000);
    w.line(fn(), 'i', 'stdout', 'after the flood');
    assert.deepEqual(
      written.slice(5).map((e) => [e.stream, e.event, e.message]),
      [
        ['platform', 'dropped', '… 12,345 lines dropped (over the log rate limit of 5 lines or 1,024 KB per second)'],
        ['stdout', null, 'after the flood'],
      ],
    );
    assert.deepEqual(dropped, [12_345]);
  });

  test('a flood that stops still gets its marker, at the end of its window', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const { w, written, tick } = writer();
      for (let i = 0; i < 8; i++) w.line(fn(), 'i', 'stdout', `x${i}`);
      assert.equal(written.length, 5);
      tick(1000);
      mock.timers.tick(1000);
      assert.equal(written.at(-1)!.message.split(' (')[0], '… 3 lines dropped');
      mock.timers.tick(5000);
      assert.equal(written.length, 6, 'one marker only');
    } finally {
      mock.timers.reset();
    }
  });

  test('the bytes budget applies too', () => {
    const { w, written } = writer({ linesPerSecond: 1000, bytesPerSecond: 100 });
    for (let i = 0; i < 5; i++) w.line(fn(), 'i', 'stdout', 'y'.repeat(40));
    assert.equal(written.length, 2);
  });

  test('platform events: started, start failure, crash, OOM, stop, timeout', () => {
    const { w, written } = writer();
    w.event(fn(), 'i', { type: 'started', cold_start_ms: 87 });
    w.event(fn(), 'i', { type: 'start_failed', error: 'entry threw: TOKEN=sk-very-secret missing' });
    w.event(fn(), 'i', { type: 'exited', exit: { code: 3, signal: null }, expected: false });
    w.event(fn(), 'i', {
      type: 'exited',
      exit: { code: null, signal: 'SIGKILL', oom: true, reason: 'memory limit of 64 MB exceeded' },
      expected: false,
    });
    w.event(fn(), 'i', { type: 'exited', exit: { code: 0, signal: null, reason: 'stopped' }, expected: true });
    w.event(fn(), 'i', { type: 'timeout', request_id: 'r-9' });
    assert.deepEqual(
      written.map((e) => [e.stream, e.event, e.message, e.request_id]),
      [
        ['platform', 'started', 'instance started (cold start 87 ms)', null],
        ['platform', 'start_failed', 'instance failed to start: entry threw: TOKEN=**** missing', null],
        ['platform', 'crashed', 'instance crashed (exit code 3)', null],
        ['platform', 'oom', 'instance killed for memory (signal SIGKILL): memory limit of 64 MB exceeded', null],
        ['platform', 'stopped', 'instance stopped (exit code 0)', null],
        ['platform', 'timeout', "request r-9 timed out: no response within the function's timeout_ms; the instance is replaced", 'r-9'],
      ],
    );
  });
});

/** What both stores must do alike. */
function readerContract(name: string, make: () => Promise<LogReader & { write(e: LogEntry): void; flush(): unknown }>) {
  describe(`${name}: reading`, () => {
    let store: Awaited<ReturnType<typeof make>>;
    const fnId = `contract-${name}`;
    const base = Date.now();
    before(async () => {
      store = await make();
      for (let i = 1; i <= 30; i++) {
        store.write(
          entry({
            function_id: fnId,
            time: base + i,
            instance_id: i % 2 ? 'odd' : 'even',
            stream: i % 3 ? 'stdout' : 'stderr',
            request_id: i === 7 ? 'req-7' : null,
            message: `m${i}`,
          }),
        );
      }
      store.write(entry({ function_id: 'someone-else', message: 'not mine' }));
      await store.flush();
    });

    const msgs = (lines: LogLine[]) => lines.map((l) => l.message);

    test('newest last, paged backwards with before and forwards with after', async () => {
      const last = await store.query(fnId, { limit: 4 });
      assert.deepEqual(msgs(last.lines), ['m27', 'm28', 'm29', 'm30']);
      assert.ok(last.before);
      const older = await store.query(fnId, { limit: 4, before: last.before });
      assert.deepEqual(msgs(older.lines), ['m23', 'm24', 'm25', 'm26']);
      const all = await store.query(fnId, { limit: 100 });
      assert.equal(all.lines.length, 30);
      assert.equal(all.before, null, 'no older page');
      const forward = await store.query(fnId, { limit: 3, after: older.lines[0]!.id });
      assert.deepEqual(msgs(forward.lines), ['m24', 'm25', 'm26']);
      assert.equal(forward.after, forward.lines[2]!.id);
    });

    test('filters: instance, stream, request id, since/until', async () => {
      assert.deepEqual(msgs((await store.query(fnId, { limit: 3, instance: 'even', stream: 'stderr' })).lines), ['m18', 'm24', 'm30']);
      assert.deepEqual(msgs((await store.query(fnId, { limit: 10, request_id: 'req-7' })).lines), ['m7']);
      assert.deepEqual(msgs((await store.query(fnId, { limit: 10, since: base + 5, until: base + 8 })).lines), ['m5', 'm6', 'm7', 'm8']);
      const line = (await store.query(fnId, { limit: 1, request_id: 'req-7' })).lines[0]!;
      assert.deepEqual(
        { ...line, id: 'x' },
        {
          id: 'x',
          function_id: fnId,
          time: new Date(base + 7).toISOString(),
          version: 1,
          instance_id: 'odd',
          stream: 'stdout',
          request_id: 'req-7',
          event: null,
          message: 'm7',
        },
      );
    });

    test('follow: lines after the cursor as they arrive, filtered, until aborted', async () => {
      const abort = new AbortController();
      const got: string[] = [];
      const it = store.follow(fnId, { stream: 'stdout' }, await store.cursorAt(fnId), abort.signal);
      const reading = (async () => {
        for await (const batch of it) {
          got.push(...msgs(batch));
          if (got.includes('live-2')) abort.abort();
        }
      })();
      store.write(entry({ function_id: fnId, message: 'live-1' }));
      store.write(entry({ function_id: fnId, stream: 'stderr', message: 'filtered out' }));
      store.write(entry({ function_id: 'someone-else', message: 'not mine' }));
      await store.flush();
      store.write(entry({ function_id: fnId, message: 'live-2' }));
      await store.flush();
      await reading;
      assert.deepEqual(got, ['live-1', 'live-2']);
    });

    test('remove forgets a function', async () => {
      await store.remove(fnId);
      assert.deepEqual((await store.query(fnId, { limit: 10 })).lines, []);
    });
  });
}

readerContract(
  'sqlite',
  async () => new SqliteLogStore(path.join(tmp, 'contract.db'), { maxBytes: 1 << 30, retentionMs: 1e12, maxLinesPerFunction: 1000 }),
);

describe('sqlite retention', () => {
  test('per function: only the newest maxLinesPerFunction lines stay', async () => {
    const store = new SqliteLogStore(path.join(tmp, 'lines.db'), { maxBytes: 1 << 30, retentionMs: 1e12, maxLinesPerFunction: 100 });
    for (let i = 0; i < 250; i++) store.write(entry({ function_id: 'noisy', message: `n${i}` }));
    store.write(entry({ function_id: 'quiet', message: 'kept' }));
    store.maintain();
    const kept = await store.query('noisy', { limit: 1000 });
    assert.equal(kept.lines.length, 100);
    assert.equal(kept.lines[0]!.message, 'n150');
    assert.equal((await store.query('quiet', { limit: 10 })).lines.length, 1);
    store.close();
  });

  test('by age, on a fake clock', async () => {
    let clock = 10_000_000;
    const store = new SqliteLogStore(path.join(tmp, 'age.db'), {
      maxBytes: 1 << 30,
      retentionMs: 60_000,
      maxLinesPerFunction: 1000,
      now: () => clock,
    });
    store.write(entry({ time: clock, message: 'old' }));
    clock += 50_000;
    store.write(entry({ time: clock, message: 'young' }));
    store.maintain();
    assert.equal((await store.query('f1', { limit: 10 })).lines.length, 2);
    clock += 20_000; // "old" is now 70 s old
    store.maintain();
    assert.deepEqual(
      (await store.query('f1', { limit: 10 })).lines.map((l) => l.message),
      ['young'],
    );
    store.close();
  });

  test('by size: the file stays within maxBytes, oldest lines go first', async () => {
    const file = path.join(tmp, 'size.db');
    const maxBytes = 512 * 1024;
    const store = new SqliteLogStore(file, { maxBytes, retentionMs: 1e12, maxLinesPerFunction: 1e8 });
    const big = 'z'.repeat(1000);
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 500; i++) store.write(entry({ function_id: `f${i % 7}`, message: `${round}-${i} ${big}` }));
      store.maintain();
    }
    for (let i = 0; i < 5; i++) store.maintain();
    assert.ok(store.usedBytes() <= maxBytes, `${store.usedBytes()} bytes used`);
    const newest = await store.query('f6', { limit: 1 });
    assert.match(newest.lines[0]!.message, /^9-/, 'the newest lines are kept');
    store.close();
    // Freed pages go back to the file system (incremental vacuum), not just onto a free list.
    assert.ok(fs.statSync(file).size <= maxBytes + 64 * 1024, `file is ${fs.statSync(file).size} bytes`);
  });

  test('the request id query of one invocation uses its index', async () => {
    const store = new SqliteLogStore(path.join(tmp, 'plan.db'), { maxBytes: 1 << 30, retentionMs: 1e12, maxLinesPerFunction: 1000 });
    store.close();
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(path.join(tmp, 'plan.db'), { readonly: true });
    const plan = db
      .prepare("EXPLAIN QUERY PLAN SELECT * FROM lines WHERE function_id = 'f' AND request_id = 'r' ORDER BY seq DESC LIMIT 10")
      .all() as { detail: string }[];
    db.close();
    assert.match(plan.map((p) => p.detail).join(';'), /USING INDEX lines_by_request/);
  });
});

describe('redis', () => {
  let server: ServiceProcess;
  let redis: Redis;
  let addr: string;
  const stores: RedisLogStore[] = [];
  const make = (over: Partial<ConstructorParameters<typeof RedisLogStore>[1]> = {}) => {
    const s = new RedisLogStore(redis, { maxLinesPerFunction: 1000, retentionMs: 3_600_000, blockMs: 300, ...over }, quiet);
    stores.push(s);
    return s;
  };

  before(async () => {
    const port = await freePort();
    server = redisProcess(port);
    await server.start();
    addr = `127.0.0.1:${port}`;
    redis = await connectRedis(addr);
  });
  after(async () => {
    for (const s of stores) await s.close();
    redis.disconnect();
    await server.stop();
  });

  readerContract('redis', async () => make());

  test('capped per function with XADD MAXLEN ~, expiring with the retention time', async () => {
    const store = make({ maxLinesPerFunction: 200, retentionMs: 600_000 });
    for (let i = 0; i < 2000; i++) store.write(entry({ function_id: 'capped' }));
    await store.flush();
    const len = await redis.xlen(logStreamKey('capped'));
    assert.ok(len >= 200 && len < 400, `${len} entries kept`);
    const ttl = await redis.pttl(logStreamKey('capped'));
    assert.ok(ttl > 590_000 && ttl <= 600_000, `ttl ${ttl}`);
  });

  test('a follower started on one client sees what another client writes', async () => {
    const writerClient = await connectRedis(addr);
    try {
      const writer = new RedisLogStore(writerClient, { maxLinesPerFunction: 1000, retentionMs: 60_000 }, quiet);
      const reader = make();
      const abort = new AbortController();
      const got: string[] = [];
      const reading = (async () => {
        for await (const batch of reader.follow('shared', {}, await reader.cursorAt('shared'), abort.signal)) {
          got.push(...batch.map((l) => l.message));
          abort.abort();
        }
      })();
      await new Promise((r) => setTimeout(r, 50));
      writer.write(entry({ function_id: 'shared', message: 'from another worker' }));
      await writer.flush();
      await reading;
      assert.deepEqual(got, ['from another worker']);
    } finally {
      writerClient.disconnect();
    }
  });
});
