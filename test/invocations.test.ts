/**
 * Request ids and invocation records on one node, through real HTTP and real sandboxes: the id a
 * client sends (or one made up) reaches the function and comes back on every answer; every kind
 * of failure is recorded with its message and instance; records page and filter through the API.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startAether, type Aether } from './helpers/aether.ts';
import { PROBE } from './helpers/probe.ts';
import { until } from './helpers/wait.ts';

/** Server mode: the request id arrives as a header. */
const SERVER = `require('http').createServer((req, res) => res.end(JSON.stringify({ header: req.headers['x-request-id'] }))).listen(process.env.PORT);`;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('invocation records and request ids', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap' });
    await a.deploy({ name: 'probe', memory_mb: 96, timeout_ms: 1500, event_format: 'aether' }, { 'handler.js': PROBE }); // Aether's own error answers
    await a.deploy({ name: 'server' }, { 'handler.js': SERVER });
  });
  after(() => a.stop());

  const records = async (fn: string, query = '') => {
    const res = await a.api('GET', `/api/functions/${fn}/invocations${query}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body as any[];
  };
  /** Records are written in batches: wait until the one for this request id is there. */
  const recordOf = async (fn: string, requestId: string) => {
    let found: any;
    await until(
      async () => (found = (await records(fn)).find((r) => r.request_id === requestId)) !== undefined,
      5000,
      `the record of ${requestId}`,
    );
    return found;
  };

  test('a valid X-Request-Id is kept: the function sees it (handler context, event, header) and it comes back', async () => {
    const rid = 'client-Trace_1.2:3';
    const res = await a.invoke('probe', '/', { headers: { 'x-request-id': rid } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-request-id'), rid);
    assert.deepEqual(await res.json(), { context: rid, aws: rid, event: rid, header: rid });
    const rec = await recordOf('probe', rid);
    assert.match(rec.id, UUID);
    assert.equal(rec.status, 200);
    assert.equal(rec.error, null);

    const server = await a.invoke('server', '/', { headers: { 'x-request-id': 'srv-1' } });
    assert.equal(server.headers.get('x-request-id'), 'srv-1');
    assert.deepEqual(await server.json(), { header: 'srv-1' });
    assert.equal((await recordOf('server', 'srv-1')).status, 200);
  });

  test('no or an invalid X-Request-Id: a new one, which is also the record id', async () => {
    for (const sent of [undefined, 'has space', 'x'.repeat(129), 'semi;colon', '']) {
      const res = await a.invoke('probe', '/', { headers: sent === undefined ? {} : { 'x-request-id': sent } });
      assert.equal(res.status, 200);
      const rid = res.headers.get('x-request-id')!;
      assert.match(rid, UUID, `for ${JSON.stringify(sent)}`);
      assert.equal((await res.json()).context, rid);
      assert.equal((await recordOf('probe', rid)).id, rid);
    }
    assert.ok(
      (await a.invoke('probe', '/', { headers: { 'x-request-id': 'y'.repeat(128) } })).headers.get('x-request-id') === 'y'.repeat(128),
    );
  });

  test('error answers carry the request id too', async () => {
    const missing = await a.invoke('no-such-function', '/', { headers: { 'x-request-id': 'lost-1' } });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('x-request-id'), 'lost-1');
    await a.api('POST', '/api/functions', { name: 'codeless', runtime: 'node' });
    const noCode = await a.invoke('codeless', '/', { headers: { 'x-request-id': 'nocode-1' } });
    assert.equal(noCode.status, 409);
    assert.equal(noCode.headers.get('x-request-id'), 'nocode-1');
    const rec = await recordOf('codeless', 'nocode-1');
    assert.match(rec.error, /no code/);
    assert.equal(rec.instance_id, null);
    assert.equal(rec.cold_start, false);
  });

  test('every failure kind is recorded with its message and instance; cold_start exactly when a new instance was waited for', async () => {
    const call = async (path: string, rid: string) => {
      const res = await a.invoke('probe', path, { headers: { 'x-request-id': rid } });
      await res.arrayBuffer();
      assert.equal(res.headers.get('x-request-id'), rid);
      return { status: res.status, rec: await recordOf('probe', rid) };
    };
    const warm = await call('/', 'warm-1');
    assert.equal(warm.rec.cold_start, false);
    const instance = warm.rec.instance_id;
    assert.ok(instance);

    const threw = await a.invoke('probe', '/throw', { headers: { 'x-request-id': 'throw-1' } });
    assert.equal(threw.status, 502);
    assert.equal(threw.headers.get('x-aether-error'), null, 'the agent tells Aether, not the client');
    assert.deepEqual((await threw.json()).error, { code: 'handler_error', message: 'kaput in handler' });
    const thrown = await recordOf('probe', 'throw-1');
    assert.equal(thrown.error, 'kaput in handler');
    assert.equal(thrown.instance_id, instance, 'the instance survives a handler that throws');

    const crash = await call('/crash', 'crash-1');
    assert.equal(crash.status, 502);
    assert.match(crash.rec.error, /crashed.*exited with code 3|code 3/);
    assert.equal(crash.rec.instance_id, instance);
    assert.equal(crash.rec.cold_start, false);

    const afterCrash = await call('/', 'after-crash-1');
    assert.equal(afterCrash.status, 200);
    assert.equal(afterCrash.rec.cold_start, true, 'the next request waits for a replacement');
    assert.notEqual(afterCrash.rec.instance_id, instance);

    const oom = await call('/oom', 'oom-1');
    assert.equal(oom.status, 502);
    assert.match(oom.rec.error, /memory limit of 96 MB exceeded|out of memory/i);
    assert.equal(oom.rec.instance_id, afterCrash.rec.instance_id);

    const hang = await call('/hang', 'hang-1');
    assert.equal(hang.status, 504);
    assert.match(hang.rec.error, /did not respond within its timeout/);
    assert.ok(hang.rec.instance_id);
    assert.equal(hang.rec.cold_start, true, 'the OOM-killed instance had to be replaced');

    const own500 = await call('/fail', 'own-500');
    assert.equal(own500.status, 500);
    assert.equal(own500.rec.error, null);

    await a.deploy({ name: 'broken' }, { 'handler.js': `throw new Error('boom at import');` });
    const res = await a.invoke('broken', '/', { headers: { 'x-request-id': 'start-1' } });
    assert.equal(res.status, 502);
    assert.equal(res.headers.get('x-request-id'), 'start-1');
    const start = await recordOf('broken', 'start-1');
    assert.match(start.error, /failed to start.*boom at import/);
    assert.ok(start.instance_id, 'the instance that failed to start');
    assert.equal(start.cold_start, true);
  });

  test('GET invocations pages with limit and before, filters by status and cold_start, and rejects bad parameters', async () => {
    await a.deploy({ name: 'pages', concurrency: 1 }, { 'handler.js': PROBE });
    const sent: string[] = [];
    for (let i = 0; i < 7; i++) {
      const path = i === 2 || i === 5 ? '/crash' : '/';
      const res = await a.invoke('pages', path, { headers: { 'x-request-id': `p-${i}` } });
      await res.arrayBuffer();
      sent.push(`p-${i}`);
    }
    await recordOf('pages', 'p-6');
    const newestFirst = [...sent].reverse();
    const page1 = await records('pages', '?limit=3');
    assert.deepEqual(
      page1.map((r) => r.request_id),
      newestFirst.slice(0, 3),
    );
    const page2 = await records('pages', `?limit=3&before=${page1.at(-1).id}`);
    assert.deepEqual(
      page2.map((r) => r.request_id),
      newestFirst.slice(3, 6),
    );
    const page3 = await records('pages', `?limit=3&before=${page2.at(-1).id}`);
    assert.deepEqual(
      page3.map((r) => r.request_id),
      newestFirst.slice(6),
    );
    assert.deepEqual(
      (await records('pages', '?status=error')).map((r) => r.request_id),
      ['p-5', 'p-2'],
    );
    assert.equal((await records('pages', '?status=ok')).length, 5);
    // Cold: the first request, and the ones right after each crash.
    assert.deepEqual(
      (await records('pages', '?cold_start=true')).map((r) => r.request_id),
      ['p-6', 'p-3', 'p-0'],
    );
    assert.deepEqual(
      (await records('pages', '?cold_start=true&status=ok&limit=2')).map((r) => r.request_id),
      ['p-6', 'p-3'],
    );

    for (const [query, field] of [
      ['?limit=0', 'limit'],
      ['?limit=1001', 'limit'],
      ['?limit=ten', 'limit'],
      ['?before=p-3', 'before'],
      ['?status=failed', 'status'],
      ['?cold_start=yes', 'cold_start'],
      ['?coldstart=true', 'coldstart'],
    ] as const) {
      const res = await a.api('GET', `/api/functions/pages/invocations${query}`);
      assert.equal(res.status, 400, query);
      assert.equal(res.body.error.code, 'validation_failed');
      assert.match(res.body.error.message, new RegExp(field), query);
    }
  });
});
