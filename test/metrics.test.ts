/**
 * GET /metrics on a real single-node server (bubblewrap): after a known load, a real Prometheus
 * scraping it must count exactly what was sent; direct scrapes pass promtool's check and are parsed
 * for the gauges of the moment. Cluster scrapes are in cluster.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { freePort } from '../src/adapters/free-port.ts';
import { startAether, type Aether } from './helpers/aether.ts';
import { scrape } from './helpers/metrics.ts';
import { startPrometheus } from './helpers/prometheus.ts';
import { until } from './helpers/wait.ts';

/** 200, or the status the path names (/status/503), so that the load's outcomes are known. */
const STATUS_FN = `exports.handler = async (event) => {
  const m = /^\\/status\\/(\\d+)$/.exec(event.path);
  return { statusCode: m ? Number(m[1]) : 200, body: 'ok' };
};`;
const SLOW_FN = `exports.handler = async () => { await new Promise((r) => setTimeout(r, 1500)); return { statusCode: 200, body: 'slow' }; };`;
const OOM_FN = `exports.handler = async () => { const keep = []; for (;;) keep.push(Buffer.alloc(8 * 1024 * 1024, 1)); };`;
const CHATTY_FN = `exports.handler = async () => { for (let i = 0; i < 3000; i++) console.log('line ' + i); return { statusCode: 200, body: 'said a lot' }; };`;
/** The server's log rate limit in these tests: low, so that a burst is dropped in part. */
const LINES_PER_S = 100;

describe('metrics, single node', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap', env: { AETHER_LOG_LINES_PER_S: String(LINES_PER_S) } });
  });
  after(() => a.stop());

  test('/metrics needs the token by default', async () => {
    const res = await fetch(`${a.url}/metrics`);
    assert.equal(res.status, 401);
    assert.equal((await res.json()).error.code, 'unauthorized');
    const m = await scrape(a.url);
    assert.ok(m.value('process_cpu_seconds_total') > 0, 'process metrics are there');
    assert.ok(m.value('nodejs_heap_size_used_bytes') > 0);
  });

  test('after a known load, Prometheus counts exactly what was sent', async (t) => {
    const prom = await startPrometheus({ aether: [a.url] });
    t.after(() => prom.stop());
    const q = (expr: string) => prom.query(expr);
    await a.deploy({ name: 'counted', concurrency: 4 }, { 'handler.js': STATUS_FN });
    const sent = { ok: 12, fnError: 5, notFound: 3 };
    // Many distinct paths and queries: none of them may become a label.
    const oks = Array.from({ length: sent.ok }, (_, i) => a.invoke('counted', `/item/${i}?q=${i}`));
    const errors = Array.from({ length: sent.fnError }, () => a.invoke('counted', '/status/503'));
    const unknown = Array.from({ length: sent.notFound }, (_, i) => a.invoke(`no-such-function-${i}`));
    const statuses = await Promise.all([...oks, ...errors, ...unknown].map(async (r) => (await r).status));
    assert.deepEqual(statuses, [...Array(sent.ok).fill(200), ...Array(sent.fnError).fill(503), ...Array(sent.notFound).fill(404)]);

    await prom.scrapedSince(Date.now());
    assert.equal(await q('sum(aether_invocations_total{function="counted",outcome="success"})'), sent.ok);
    assert.equal(await q('sum(aether_invocations_total{function="counted",outcome="function_error"})'), sent.fnError);
    assert.equal(await q('sum(aether_invocations_total{function="counted"})'), sent.ok + sent.fnError, 'no other outcome');
    assert.equal(await q('sum(aether_invocation_duration_seconds_count{function="counted"})'), sent.ok + sent.fnError);
    assert.equal(await q('sum(aether_invocation_duration_seconds_bucket{function="counted",le="+Inf"})'), sent.ok + sent.fnError);
    // Unknown names never become series: the label is bounded by the functions that exist.
    assert.equal(await q('count({function=~"no-such-function.*"})'), 0, 'unknown function names are not labels');

    const m = await scrape(a.url);
    const fn = { function: 'counted' };
    for (const family of m.families.filter((f) => f.name.startsWith('aether_'))) {
      for (const sample of family.metrics) {
        for (const label of Object.keys(sample.labels ?? {}))
          assert.ok(['function', 'outcome', 'state', 'phase', 'le'].includes(label), label);
      }
    }
    assert.equal(m.samples('aether_invocations_total', fn).length, 2, 'one series per outcome, whatever the paths');

    // Every instance started is one cold start, and each is listed as running.
    const instances = (await a.api('GET', '/api/functions/counted/instances')).body;
    assert.ok(instances.length >= 1);
    assert.equal(await q('sum(aether_cold_start_duration_seconds_count{function="counted"})'), instances.length);
    assert.equal(await q('sum(aether_instances{function="counted",state="ready"})'), instances.length);
    assert.equal(m.value('aether_instances', { ...fn, state: 'ready' }), instances.length);
    assert.equal(m.value('aether_instance_start_failures_total', fn), 0);
  });

  test('requests waiting and in flight are gauges of what is happening now', async () => {
    await a.deploy({ name: 'slow', concurrency: 1, max_instances: 1 }, { 'handler.js': SLOW_FN });
    const pending = Array.from({ length: 3 }, () => a.invoke('slow'));
    await until(
      async () => {
        const m = await scrape(a.url);
        return (
          m.value('aether_requests_in_flight', { function: 'slow' }) === 1 && m.value('aether_requests_waiting', { function: 'slow' }) === 2
        );
      },
      15_000,
      'one request in flight and two waiting',
    );
    assert.deepEqual(await Promise.all(pending.map(async (r) => (await r).status)), [200, 200, 200]);
    const m = await scrape(a.url);
    assert.equal(m.samples('aether_requests_in_flight', { function: 'slow' }).length, 0, 'nothing in flight: no series');
    assert.equal(m.samples('aether_requests_waiting', { function: 'slow' }).length, 0);
    assert.equal(m.value('aether_invocations_total', { function: 'slow', outcome: 'success' }), 3);
  });

  test('a function that cannot start counts a start failure; one killed for memory counts an OOM kill', async () => {
    await a.deploy({ name: 'broken' }, { 'handler.js': 'throw new Error("broken at import")' });
    assert.equal((await a.invoke('broken')).status, 502);
    await a.deploy({ name: 'hungry', memory_mb: 64 }, { 'handler.js': OOM_FN });
    const oom = await a.invoke('hungry');
    assert.equal(oom.status, 502);
    assert.match((await oom.json()).error.message, /memory limit of 64 MB exceeded/);

    const m = await scrape(a.url);
    assert.equal(m.value('aether_instance_start_failures_total', { function: 'broken' }), 1);
    assert.equal(m.value('aether_invocations_total', { function: 'broken', outcome: 'start_failed' }), 1);
    assert.equal(m.value('aether_oom_kills_total', { function: 'hungry' }), 1);
    assert.equal(m.value('aether_invocations_total', { function: 'hungry', outcome: 'crashed' }), 1);
  });

  test('lines the log rate limit dropped are counted, as many as the marker lines say', async () => {
    await a.deploy({ name: 'chatty' }, { 'handler.js': CHATTY_FN });
    assert.equal((await a.invoke('chatty')).status, 200);
    // Every line printed is either kept or counted in a marker line ("… 2,900 lines dropped (...)"),
    // written when the rate window ends: wait until all 3000 are accounted for.
    const account = async () => {
      const lines = (await a.api('GET', '/api/functions/chatty/logs?limit=1000')).body.lines as {
        stream: string;
        event: string;
        message: string;
      }[];
      const kept = lines.filter((l) => l.stream === 'stdout').length;
      const dropped = lines
        .filter((l) => l.event === 'dropped')
        .reduce((n, l) => n + Number(/([\d,]+) lines dropped/.exec(l.message)![1]!.replaceAll(',', '')), 0);
      return { kept, dropped };
    };
    await until(
      async () => {
        const { kept, dropped } = await account();
        return kept + dropped === 3000;
      },
      15_000,
      'every line kept or counted as dropped',
    );
    const { dropped } = await account();
    assert.ok(dropped > 0, 'the burst was over the rate limit');
    assert.equal((await scrape(a.url)).value('aether_log_lines_dropped_total', { function: 'chatty' }), dropped);
  });

  test("a deleted function's series are gone; a renamed one's move to the new name", async () => {
    assert.ok((await scrape(a.url)).samples('aether_invocations_total', { function: 'counted' }).length > 0);
    assert.equal((await a.api('DELETE', '/api/functions/counted')).status, 204);
    assert.equal((await a.api('PATCH', '/api/functions/slow', { name: 'slower' })).status, 200);
    assert.equal((await a.invoke('slower')).status, 200);
    const m = await scrape(a.url);
    for (const gone of ['counted', 'slow']) assert.ok(!m.text.includes(`function="${gone}"`), `no series left for ${gone}`);
    assert.equal(m.value('aether_invocations_total', { function: 'slower', outcome: 'success' }), 1);
  });
});

describe('metrics access for scrapers', () => {
  test('AETHER_METRICS_PUBLIC=1 serves /metrics without the token; the API still needs it', async () => {
    const a = await startAether({ isolation: 'bwrap', env: { AETHER_METRICS_PUBLIC: '1' } });
    try {
      await scrape(a.url, { token: null });
      assert.equal((await fetch(`${a.url}/api/functions`)).status, 401);
    } finally {
      await a.stop();
    }
  });

  test('AETHER_METRICS_LISTEN serves /metrics on its own address without the token', async () => {
    const port = await freePort();
    const a = await startAether({ isolation: 'bwrap', env: { AETHER_METRICS_LISTEN: `127.0.0.1:${port}` } });
    try {
      const m = await scrape(`http://127.0.0.1:${port}`, { token: null });
      assert.ok(m.value('process_cpu_seconds_total') > 0);
      assert.equal((await fetch(`${a.url}/metrics`)).status, 401, 'the main port still needs the token');
      assert.equal((await fetch(`http://127.0.0.1:${port}/api/functions`)).status, 404, 'nothing but /metrics there');
    } finally {
      await a.stop();
    }
  });
});
