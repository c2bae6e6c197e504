/**
 * A function's recent traffic for the dashboard's charts: the pure bucketing over invocation records
 * (a fixed clock), and GET /api/functions/{id}/stats on a real server with real sandboxes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { invocationStats, percentile } from '../src/core/invocation-stats.ts';
import type { InvocationRecord } from '../src/core/types.ts';
import { InvocationStatsSchema } from '../src/adapters/http/schemas.ts';
import { type Aether, startAether } from './helpers/aether.ts';
import { PROBE } from './helpers/probe.ts';
import { until } from './helpers/wait.ts';

const NOW = Date.parse('2026-12-04T12:00:30.000Z');
let seq = 0;
const rec = (secondsAgo: number, duration_ms: number, more: Partial<InvocationRecord> = {}): InvocationRecord => ({
  id: `id-${seq++}`,
  request_id: 'r',
  function_id: 'f',
  started_at: new Date(NOW - secondsAgo * 1000).toISOString(),
  status: 200,
  duration_ms,
  cold_start: false,
  instance_id: 'i-1',
  error: null,
  invocation_type: 'RequestResponse',
  attempts: 1,
  ...more,
});

describe('invocation stats (pure)', () => {
  test('nearest-rank percentiles', () => {
    assert.equal(percentile([], 50), null);
    assert.equal(percentile([7], 99), 7);
    const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
    assert.equal(percentile(hundred, 50), 50);
    assert.equal(percentile(hundred, 99), 99);
    assert.equal(percentile([1, 2, 3, 4], 50), 2);
  });

  test('buckets aligned to the step, oldest first; counts, errors, cold starts and percentiles per bucket and in total', () => {
    // Window 5 minutes, step 1 minute; now is 12:00:30, so the buckets end at 12:01:00.
    const records = [
      rec(10, 5), // 12:00:20 -> last bucket
      rec(20, 15, { status: 502, error: 'crashed' }), // 12:00:10 -> last bucket, error
      rec(40, 100, { cold_start: true }), // 11:59:50 -> the one before
      rec(200, 1, { status: 503 }), // 11:57:10 -> 5xx without error text is a failure too
      rec(300, 9), // 11:55:30 -> before the window (11:56:00): left out
    ].sort((a, b) => b.started_at.localeCompare(a.started_at));
    const s = invocationStats(records, { window_s: 300, step_s: 60 }, NOW, 1000);
    assert.equal(s.from, '2026-12-04T11:56:00.000Z');
    assert.equal(s.to, '2026-12-04T12:01:00.000Z');
    assert.deepEqual(
      s.buckets.map((b) => [b.start.slice(11, 19), b.count, b.errors, b.p50_ms, b.p99_ms]),
      [
        ['11:56:00', 0, 0, null, null],
        ['11:57:00', 1, 1, 1, 1],
        ['11:58:00', 0, 0, null, null],
        ['11:59:00', 1, 0, 100, 100],
        ['12:00:00', 2, 1, 5, 15],
      ],
    );
    assert.equal(s.complete, true, 'fewer records than the read limit: nothing older was dropped');
    assert.equal(s.since, s.from);
    assert.deepEqual(s.totals, {
      count: 4,
      errors: 2,
      cold_starts: 1,
      error_rate: 0.5,
      rate_per_s: 4 / 270, // from 11:56:00 to now, 12:00:30
      p50_ms: 5,
      p99_ms: 100,
    });
  });

  test('no records: empty buckets, no rates, no percentiles', () => {
    const s = invocationStats([], { window_s: 3600, step_s: 60 }, NOW, 1000);
    assert.equal(s.buckets.length, 60);
    assert.ok(s.buckets.every((b) => b.count === 0 && b.p50_ms === null));
    assert.deepEqual(s.totals, { count: 0, errors: 0, cold_starts: 0, error_rate: null, rate_per_s: 0, p50_ms: null, p99_ms: null });
  });

  test('as many records as the store keeps, all inside the window: incomplete, and the rate is over the time they cover', () => {
    const records = [rec(1, 1), rec(2, 1), rec(11, 1)];
    const s = invocationStats(records, { window_s: 3600, step_s: 60 }, NOW, 3);
    assert.equal(s.complete, false);
    assert.equal(s.since, new Date(NOW - 11_000).toISOString(), 'from the oldest record kept');
    assert.equal(s.totals.rate_per_s, 3 / 11);
    // The same records with one older than the window: they do cover it all.
    assert.equal(invocationStats([...records.slice(0, 2), rec(4000, 1)], { window_s: 3600, step_s: 60 }, NOW, 3).complete, true);
  });
});

describe('GET /api/functions/{id}/stats', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap' });
    await a.deploy({ name: 'stats', concurrency: 1 }, { 'handler.js': PROBE });
  });
  after(() => a?.stop());

  test('counts what was invoked, errors included, in the current bucket; bad windows are a 400 naming the field', async () => {
    for (const path of ['/', '/', '/crash', '/']) await (await a.invoke('stats', path)).arrayBuffer();
    let body: any;
    await until(
      async () => {
        const res = await a.api('GET', '/api/functions/stats/stats?window=600&step=60');
        assert.equal(res.status, 200, JSON.stringify(res.body));
        body = res.body;
        return body.totals.count === 4;
      },
      5000,
      'the four records to be written',
    );
    InvocationStatsSchema.parse(body);
    assert.equal(body.buckets.length, 10);
    assert.equal(body.totals.errors, 1, 'the crash');
    assert.equal(body.totals.cold_starts, 2, 'the first request, and the one after the crash');
    assert.equal(body.totals.error_rate, 0.25);
    assert.ok(body.totals.p50_ms > 0 && body.totals.p99_ms >= body.totals.p50_ms);
    const counted = body.buckets.reduce((n: number, b: any) => n + b.count, 0);
    assert.equal(counted, 4);
    assert.equal((await a.api('GET', '/api/functions/stats/stats')).body.window_s, 3600, 'default: the last hour');

    for (const [query, field] of [
      ['?window=10', 'window'],
      ['?step=0', 'step'],
      ['?window=86400&step=1', 'step'],
      ['?span=60', 'span'],
    ] as const) {
      const res = await a.api('GET', `/api/functions/stats/stats${query}`);
      assert.equal(res.status, 400, query);
      assert.equal(res.body.error.code, 'validation_failed');
      assert.match(res.body.error.message, new RegExp(field), query);
    }
    assert.equal((await a.api('GET', '/api/functions/nope/stats')).status, 404);
  });
});
