/**
 * Request ids, invocation records and failing functions through a real cluster: 2 gateways and 2
 * workers (bubblewrap) on real etcd, Redis and S3. Workers run the invocations; the gateway that
 * took the request records it (in Redis) from what the worker tells it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HANDLER_CJS, startAether, type Aether } from './helpers/aether.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';
import { PROBE } from './helpers/probe.ts';

describe('invocations in a cluster', () => {
  let services: Services;
  const gateways: Aether[] = [];
  const workers: Aether[] = [];
  const workerDirs: string[] = [];

  before(async () => {
    services = await startServices();
    const env = { ...services.env, AETHER_LEASE_TTL_S: '3', AETHER_START_BACKOFF_MS: '1500' };
    for (let i = 0; i < 2; i++) {
      workerDirs.push(fs.mkdtempSync(path.join(os.tmpdir(), `aether-invw${i}-`)));
      workers.push(
        await startAether({
          role: 'worker',
          isolation: 'bwrap',
          dataDir: workerDirs[i],
          env: { ...env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: `iw${i}` },
        }),
      );
    }
    for (let i = 0; i < 2; i++) gateways.push(await startAether({ role: 'gateway', env }));
    await until(async () => (await gateways[1]!.api('GET', '/api/workers')).body.length === 2, 10_000, 'both workers to register');
  });
  after(async () => {
    await Promise.all([...gateways, ...workers].map((a) => a.stop()));
    for (const d of workerDirs) fs.rmSync(d, { recursive: true, force: true });
    await services.stop();
  });

  const [g0, g1] = [() => gateways[0]!, () => gateways[1]!];
  const records = async (g: Aether, fn: string, query = '') => {
    const res = await g.api('GET', `/api/functions/${fn}/invocations${query}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    return res.body as any[];
  };
  const recordOf = async (fn: string, requestId: string) => {
    let found: any;
    await until(
      async () => (found = (await records(g1(), fn)).find((r) => r.request_id === requestId)) !== undefined,
      5000,
      `the record of ${requestId}`,
    );
    return found;
  };
  const call = async (g: Aether, fn: string, p: string, rid: string) => {
    const res = await g.invoke(fn, p, { headers: { 'x-request-id': rid } });
    const body = await res.text();
    assert.equal(res.headers.get('x-request-id'), rid, 'the request id comes back');
    for (const internal of ['x-aether-error', 'x-aether-cold-start']) assert.equal(res.headers.get(internal), null, internal);
    return { status: res.status, body, rec: await recordOf(fn, rid) };
  };

  test('the request id reaches the function on a worker and comes back; records are shared by the gateways', async () => {
    await g0().deploy({ name: 'probe', memory_mb: 96, timeout_ms: 1500, event_format: 'aether' }, { 'handler.js': PROBE }); // Aether's own error answers
    const first = await call(g0(), 'probe', '/', 'cl-1');
    assert.equal(first.status, 200);
    assert.deepEqual(JSON.parse(first.body), { context: 'cl-1', aws: 'cl-1', event: 'cl-1', header: 'cl-1' });
    assert.equal(first.rec.cold_start, true);
    const instances = (await g0().api('GET', '/api/functions/probe/instances')).body;
    assert.equal(instances.length, 1);
    assert.equal(first.rec.instance_id, instances[0].id);

    const warm = await call(g1(), 'probe', '/', 'cl-2');
    assert.equal(warm.rec.cold_start, false);
    assert.equal(warm.rec.instance_id, instances[0].id);

    const generated = await g1().invoke('probe', '/', { headers: { 'x-request-id': 'not valid!' } });
    const rid = generated.headers.get('x-request-id')!;
    assert.equal(JSON.parse(await generated.text()).context, rid);
    assert.equal((await recordOf('probe', rid)).id, rid);
  });

  test('failures on a worker are recorded by the gateway with their message, instance and cold start', async () => {
    const threw = await call(g1(), 'probe', '/throw', 'cl-throw');
    assert.equal(threw.status, 502);
    assert.equal(threw.rec.error, 'kaput in handler', 'from the agent, through the worker');
    assert.ok(threw.rec.instance_id);

    const crash = await call(g0(), 'probe', '/crash', 'cl-crash');
    assert.equal(crash.status, 502);
    assert.match(crash.rec.error, /crashed.*code 3/);
    assert.ok(crash.rec.instance_id);
    assert.equal(crash.rec.cold_start, false);

    // The worker starts the replacement itself: the gateway learns it was a cold start from the worker.
    const next = await call(g1(), 'probe', '/', 'cl-after-crash');
    assert.equal(next.status, 200);
    assert.equal(next.rec.cold_start, true);
    assert.notEqual(next.rec.instance_id, crash.rec.instance_id);

    const oom = await call(g0(), 'probe', '/oom', 'cl-oom');
    assert.equal(oom.status, 502);
    assert.match(oom.rec.error, /memory limit of 96 MB exceeded|out of memory/i);
    assert.equal(oom.rec.instance_id, next.rec.instance_id);

    const hang = await call(g1(), 'probe', '/hang', 'cl-hang');
    assert.equal(hang.status, 504);
    assert.match(hang.rec.error, /timeout/);
    assert.ok(hang.rec.instance_id);

    assert.deepEqual(
      (await records(g0(), 'probe', '?status=error')).map((r) => r.request_id),
      ['cl-hang', 'cl-oom', 'cl-crash', 'cl-throw'],
    );
    const page = await records(g0(), 'probe', '?limit=2');
    const rest = await records(g1(), 'probe', `?limit=10&before=${page.at(-1).id}`);
    assert.deepEqual(
      [...page, ...rest].map((r) => r.request_id).filter((id) => id.startsWith('cl-')),
      ['cl-hang', 'cl-oom', 'cl-after-crash', 'cl-crash', 'cl-throw', 'cl-2', 'cl-1'],
    );
  });

  test('a function that cannot start: the gateways hear it from the worker, back off together, and a deploy resets it', async () => {
    await g0().deploy({ name: 'throws' }, { 'handler.js': `throw new Error('boom at import');` });
    const failedStarts = () =>
      workers.flatMap((w) => w.logs).filter((l) => l.includes('"instance failed to start"') && l.includes('"function":"throws"')).length;

    const t0 = Date.now();
    const first = await g0().invoke('throws', '/', { headers: { 'x-request-id': 'cl-start-1' } });
    const firstBody = await first.json();
    assert.equal(first.status, 502);
    assert.equal(firstBody.error.code, 'start_failed');
    assert.match(firstBody.error.message, /boom at import/);
    assert.ok(Date.now() - t0 < 5000, 'the gateway hears of the failure, it does not wait for its deadline');
    const rec = await recordOf('throws', 'cl-start-1');
    assert.match(rec.error, /boom at import/);
    assert.ok(rec.instance_id);
    assert.equal(rec.cold_start, true);

    // Both gateways see the state, and neither asks a worker for another sandbox during the backoff.
    await until(async () => (await g1().api('GET', '/api/functions/throws')).body.status === 'failing', 5000, 'g1 to see it failing');
    const view = (await g1().api('GET', '/api/functions/throws')).body;
    assert.match(view.last_error, /boom at import/);
    assert.ok(view.failing_since);
    for (const g of [g0(), g1(), g0(), g1()]) {
      const res = await g.invoke('throws');
      assert.equal(res.status, 503);
      const body = await res.json();
      assert.equal(body.error.code, 'function_failing');
      assert.match(body.error.message, /boom at import/);
    }

    // After the backoff one probe, through whichever gateway: it fails again, the delay doubles.
    await until(async () => (await g1().invoke('throws')).status === 502, 8000, 'the probe after the backoff');
    // Output arrives through a pipe: wait for the log line, then check that the 503s started nothing.
    await until(async () => failedStarts() >= 2, 5000, 'the log of the second failed start');
    assert.equal(failedStarts(), 2, 'one start, one probe: none for the requests in between');
    const again = await g0().invoke('throws');
    assert.equal(again.status, 503);
    assert.match((await again.json()).error.message, /its last 2 starts failed/);

    // A deploy through the other gateway: a new version, not failing, served.
    assert.equal((await g1().upload('throws', { 'handler.js': HANDLER_CJS })).status, 200);
    await until(async () => (await g0().api('GET', '/api/functions/throws')).body.status === 'ok', 5000, 'g0 to see the new version');
    assert.equal((await g0().invoke('throws')).status, 200);
    await until(async () => (await g1().api('GET', '/api/functions/throws')).body.last_error === null, 5000, 'the failure to be cleared');
  });

  test('a packaging mistake is refused at the gateway; the old code keeps serving everywhere', async () => {
    await g0().deploy({ name: 'packed' }, { 'handler.js': HANDLER_CJS });
    assert.equal((await g1().invoke('packed', '/v1')).status, 200);
    const bad = await g1().upload('packed', { 'app/handler.js': HANDLER_CJS.replace('event.path', '"v2"') });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.code, 'no_entry_point');
    assert.match(bad.body.error.message, /the code sits in the folder app\//);
    assert.equal((await g0().api('GET', '/api/functions/packed')).body.version, 1);
    for (const g of [g0(), g1()]) assert.equal((await (await g.invoke('packed', '/old')).json()).path, '/old');
  });
});
