/**
 * Cluster mode with real processes: 2 gateways + 2 workers on real etcd, Redis and S3 (s3rver),
 * and the faults the design must survive, each injected for real (kill -9, service restarts).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { HANDLER_CJS, startAether, TOKEN, type Aether } from './helpers/aether.ts';
import { scrape } from './helpers/metrics.ts';
import { assertValidOpenApi } from './helpers/openapi.ts';
import { startPrometheus } from './helpers/prometheus.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

const LEASE_TTL_S = 3;
const HELLO = HANDLER_CJS;

describe('cluster mode', () => {
  let services: Services;
  const gateways: Aether[] = [];
  const workers: Aether[] = [];
  const workerDirs: string[] = [];

  const startWorker = async (i: number) => {
    workerDirs[i] ??= fs.mkdtempSync(path.join(os.tmpdir(), `aether-worker${i}-`));
    workers[i] = await startAether({
      role: 'worker',
      isolation: 'bwrap',
      dataDir: workerDirs[i],
      env: {
        ...services.env,
        WORKER_IP: '127.0.0.1',
        AETHER_WORKER_ID: `w${i}`,
        AETHER_LEASE_TTL_S: String(LEASE_TTL_S),
        AETHER_SCALE_DOWN_GRACE_S: '60',
      },
    });
  };

  before(async () => {
    services = await startServices();
    await Promise.all([startWorker(0), startWorker(1)]);
    for (let i = 0; i < 2; i++)
      gateways.push(await startAether({ role: 'gateway', env: { ...services.env, AETHER_LEASE_TTL_S: String(LEASE_TTL_S) } }));
    await until(async () => (await gateways[1]!.api('GET', '/api/workers')).body.length === 2, 10_000, 'both workers to register');
  });
  after(async () => {
    await Promise.all([...gateways, ...workers].map((a) => a.stop()));
    for (const d of workerDirs) fs.rmSync(d, { recursive: true, force: true });
    await services.stop();
  });

  const [g0, g1] = [() => gateways[0]!, () => gateways[1]!];

  test('gateways share state: created on one, invoked through the other; workers are listed', async () => {
    const fn = await g0().deploy({ name: 'hello' }, { 'handler.js': HELLO });
    const res = await g1().invoke('hello', '/x?y=1');
    assert.equal(res.status, 200);
    assert.equal((await res.json()).path, '/x');
    const list = (await g1().api('GET', '/api/workers')).body;
    assert.deepEqual(list.map((w: any) => w.id).sort(), ['w0', 'w1']);
    for (const w of list) {
      assert.equal(w.driver, 'bwrap');
      assert.ok(w.max_instances > 0 && w.cpus > 0 && w.memory_mb > 0);
    }
    const inst = (await g0().api('GET', `/api/functions/${fn.id}/instances`)).body;
    assert.equal(inst.length, 1);
    assert.ok(['w0', 'w1'].includes(inst[0].worker_id));
    const inv = (await g0().api('GET', '/api/functions/hello/invocations')).body;
    assert.equal(inv[0].cold_start, true);
    assert.equal(inv[0].status, 200);
  });

  test('cold starts are placed by capacity: four functions spread over both workers', async () => {
    for (let i = 0; i < 4; i++) {
      await g0().deploy({ name: `spread${i}` }, { 'handler.js': HELLO });
      assert.equal((await gateways[i % 2]!.invoke(`spread${i}`)).status, 200);
    }
    const owners = new Set<string>();
    for (let i = 0; i < 4; i++)
      for (const inst of (await g0().api('GET', `/api/functions/spread${i}/instances`)).body) owners.add(inst.worker_id);
    assert.deepEqual([...owners].sort(), ['w0', 'w1']);
  });

  test('concurrent first requests through both gateways share one cold start', async () => {
    await g0().deploy({ name: 'herd', concurrency: 20 }, { 'handler.js': HELLO });
    const res = await Promise.all(Array.from({ length: 10 }, (_, i) => gateways[i % 2]!.invoke('herd')));
    assert.deepEqual(
      res.map((r) => r.status),
      Array(10).fill(200),
    );
    assert.equal((await g0().api('GET', '/api/functions/herd/instances')).body.length, 1);
  });

  test('gateways and workers: /healthz tells nothing, /api/system does with the token, and each describes its API', async () => {
    for (const node of [...gateways, ...workers]) {
      assert.deepEqual(await (await fetch(`${node.url}/healthz`)).json(), { status: 'ok' });
      assert.equal((await fetch(`${node.url}/api/system`)).status, 401);
      await assertValidOpenApi((await node.api('GET', '/api/openapi.json')).body);
    }
    const worker = (await workers[0]!.api('GET', '/api/system')).body;
    assert.deepEqual([worker.role, worker.worker_id, worker.isolation.driver], ['worker', 'w0', 'bwrap']);
    const gateway = (await g1().api('GET', '/api/system')).body;
    assert.deepEqual([gateway.role, gateway.workers], ['gateway', 2]);
  });

  test('every gateway and worker serves metrics; a real Prometheus counts what each was sent', async (t) => {
    const prom = await startPrometheus({ gateway: gateways.map((g) => g.url), worker: workers.map((w) => w.url) });
    t.after(() => prom.stop());
    const q = (expr: string) => prom.query(expr);
    await g0().deploy({ name: 'metered', concurrency: 4 }, { 'handler.js': HELLO });
    const sent = [7, 5];
    const res = await Promise.all(
      sent.flatMap((n, g) => Array.from({ length: n }, (_, i) => gateways[g]!.invoke('metered', `/item/${i}`))),
    );
    assert.deepEqual(
      res.map((r) => r.status),
      Array(12).fill(200),
    );
    await prom.scrapedSince(Date.now());
    for (const [g, n] of sent.entries()) {
      const where = `job="gateway",instance="${new URL(gateways[g]!.url).host}",function="metered"`;
      assert.equal(await q(`sum(aether_invocations_total{${where},outcome="success"})`), n, `gateway ${g}`);
      assert.equal(await q(`sum(aether_invocation_duration_seconds_count{${where}})`), n);
    }
    // Workers count what gateways forwarded to them, and the instances they started for it.
    assert.equal(await q('sum(aether_invocations_total{job="worker",function="metered",outcome="success"})'), 12);
    const instances = (await g0().api('GET', '/api/functions/metered/instances')).body;
    assert.equal(await q('sum(aether_cold_start_duration_seconds_count{job="worker",function="metered"})'), instances.length);
    assert.equal(await q('sum(aether_instances{job="worker",function="metered",state="ready"})'), instances.length);
    assert.ok((await q('sum(aether_provision_queue_lag_seconds_count{job="worker"})')) >= 1, 'cold starts came through the queue');
    assert.equal(await q('count(aether_instances{job="gateway"})'), 0, 'gateways run no instances');
    for (const node of [...gateways, ...workers]) await scrape(node.url); // promtool's check, on every role
  });

  test('S3 down during an upload: 503, and the previous code keeps serving', async () => {
    await services.s3.stop();
    try {
      const up = await g0().upload('hello', { 'handler.js': HELLO.replace('event.path', '"v2"') });
      assert.equal(up.status, 503);
      assert.match(up.body.error.message, /S3/);
      const res = await g1().invoke('hello', '/still');
      assert.equal((await res.json()).path, '/still');
    } finally {
      await services.s3.start();
    }
  });

  test('a code update reaches the workers: new requests see the new code', async () => {
    const up = await g1().upload('hello', { 'handler.js': HELLO.replace('event.path', '"v2"') });
    assert.equal(up.status, 200);
    await until(async () => (await (await g0().invoke('hello')).json()).path === 'v2', 10_000, 'the new code to serve');
  });

  test('Redis restarted: cold starts get 503 meanwhile, warm traffic flows, then it recovers', async () => {
    await g0().deploy({ name: 'cold-during-outage' }, { 'handler.js': HELLO });
    assert.equal((await g0().invoke('hello')).status, 200);
    await services.redis.stop();
    try {
      const cold = await g0().invoke('cold-during-outage');
      assert.equal(cold.status, 503);
      assert.match((await cold.json()).error.message, /Redis/);
      for (const g of gateways) assert.equal((await g.invoke('hello')).status, 200);
    } finally {
      await services.redis.start();
    }
    await until(async () => (await g1().invoke('cold-during-outage')).status === 200, 15_000, 'cold starts to work again');
  });

  test('etcd restarted: gateways serve from their cache, writes fail clearly, then everything resyncs', async () => {
    await services.etcd.stop();
    try {
      for (const g of gateways) assert.equal((await g.invoke('hello')).status, 200);
      const write = await g0().api('POST', '/api/functions', { name: 'during-etcd-outage', runtime: 'node' });
      assert.equal(write.status, 503);
    } finally {
      await services.etcd.start();
    }
    await until(
      async () => (await g0().api('POST', '/api/functions', { name: 'after-etcd', runtime: 'node' })).status === 201,
      20_000,
      'etcd writes to work again',
    );
    await until(
      async () => (await g1().api('GET', '/api/functions/after-etcd')).status === 200,
      10_000,
      'the other gateway to see the new function',
    );
    await until(async () => (await g1().api('GET', '/api/workers')).body.length === 2, 20_000, 'workers to re-register');
    assert.equal((await g1().invoke('hello')).status, 200);
  });

  test('kill -9 a worker under load: after its lease expires, all requests succeed on the other', async () => {
    await g0().deploy({ name: 'survivor', concurrency: 5 }, { 'handler.js': HELLO });
    // An instance on each worker: the second slot is asked for while the first is saturated.
    await Promise.all(Array.from({ length: 12 }, () => g0().invoke('survivor')));
    await until(
      async () => new Set((await g0().api('GET', '/api/functions/survivor/instances')).body.map((i: any) => i.worker_id)).size === 2,
      10_000,
      'an instance on each worker',
    );
    let stop = false;
    const statuses: number[] = [];
    const load = gateways.map(async (g) => {
      while (!stop) {
        const r = await g.invoke('survivor').catch(() => undefined);
        statuses.push(r?.status ?? 0);
        await r?.text();
      }
    });
    await sleep(300);
    await workers[0]!.kill('SIGKILL');
    // Until its lease expires the dead worker is still listed: its instances are left out, and the gateway says so.
    const listed = (await g0().api('GET', '/api/functions/survivor/instances')).body;
    const named = until(
      async () => g0().logs.some((l) => l.includes('worker unreachable: its instances are not listed') && l.includes('"worker":"w0"')),
      5000,
      'the gateway to name the unreachable worker in its log',
    ).then(
      () => true,
      () => false,
    );
    await sleep((LEASE_TTL_S + 1) * 1000);
    const failedDuringWindow = statuses.filter((s) => s !== 200).length;
    statuses.length = 0;
    await sleep(1500);
    stop = true;
    await Promise.all(load);
    assert.ok(
      listed.every((i: any) => i.worker_id === 'w1'),
      'only the live worker lists instances',
    );
    assert.ok(await named, 'the gateway names the unreachable worker in its log');
    assert.ok(statuses.length > 10, `${statuses.length} requests after the lease expired`);
    assert.deepEqual(
      statuses.filter((s) => s !== 200),
      [],
      `after expiry every request succeeds (${failedDuringWindow} failed during the window)`,
    );
    for (const g of gateways)
      assert.deepEqual(
        (await g.api('GET', '/api/workers')).body.map((w: any) => w.id),
        ['w1'],
      );
    const inst = (await g0().api('GET', '/api/functions/survivor/instances')).body;
    assert.ok(
      inst.every((i: any) => i.worker_id === 'w1'),
      'no stale routes remain',
    );
  });

  test('a restarted worker cleans up its previous life and serves again', async () => {
    await startWorker(0);
    assert.ok(
      workers[0]!.logs.some((l) => /left by a previous run/.test(l)),
      'orphaned instances were cleaned',
    );
    await until(async () => (await g0().api('GET', '/api/workers')).body.length === 2, 10_000, 'w0 to re-register');
    for (let i = 0; i < 4; i++) assert.equal((await gateways[i % 2]!.invoke(`spread${i}`)).status, 200);
  });

  test('workers take invocations from gateways only', async () => {
    const w = workers[1]!;
    const res = await fetch(`${w.url}/functions/hello`);
    assert.equal(res.status, 401);
    const wrong = await fetch(`${w.url}/functions/hello`, {
      headers: { 'x-aether-cluster-token': 'nope', authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(wrong.status, 401);
  });
});
