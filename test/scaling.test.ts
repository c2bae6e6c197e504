/** Autoscaling, scale to zero, queueing, timeouts, crash recovery and deploys, through real HTTP on each sandbox driver. */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { sandboxDrivers, startAether, type Aether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

// Sleeps ?ms=N before answering; /crash exits the process; /hang never answers.
const SLOW = `
exports.handler = async (event) => {
  if (event.path === '/crash') process.exit(3);
  if (event.path === '/hang') return new Promise(() => {});
  await new Promise((r) => setTimeout(r, Number(event.query.ms || 0)));
  return { statusCode: 200, body: process.env.VERSION || 'v1' };
};`;

for (const driver of sandboxDrivers()) {
  describe(`scaling on ${driver}`, () => {
    let a: Aether;
    before(async () => {
      // Every start a burst needs begins at once here, so that its count is exact; starting them a few at a
      // time (AETHER_STARTS_AT_ONCE, by default the CPUs) is pool.test.ts's.
      a = await startAether({
        isolation: driver,
        env: { AETHER_SCALE_DOWN_GRACE_S: '0.5', AETHER_MAX_QUEUE: '4', AETHER_STARTS_AT_ONCE: '100' },
      });
    });
    after(() => a.stop());

    const instances = async (fn: string) => (await a.api('GET', `/api/functions/${fn}/instances`)).body as any[];

    test('a burst from zero shares cold starts: 8 requests at concurrency 2 start exactly 4 instances', async () => {
      await a.deploy({ name: 'burst', concurrency: 2, max_instances: 10 }, { 'handler.js': SLOW });
      const res = await Promise.all(Array.from({ length: 8 }, () => a.invoke('burst', '/?ms=400')));
      assert.deepEqual(
        res.map((r) => r.status),
        Array(8).fill(200),
      );
      assert.equal((await instances('burst')).length, 4);
      const inv = (await a.api('GET', '/api/functions/burst/invocations')).body;
      // All eight arrived before any instance was ready: every one of them waited for a new instance.
      assert.equal(inv.filter((i: any) => i.cold_start).length, 8);
      const warm = await a.invoke('burst', '/');
      assert.equal(warm.status, 200);
      assert.equal((await a.api('GET', '/api/functions/burst/invocations')).body[0].cold_start, false);
    });

    test('scales to zero after idle_timeout_s and cold-starts again', async () => {
      await a.deploy({ name: 'zero', idle_timeout_s: 1 }, { 'handler.js': SLOW });
      assert.equal((await a.invoke('zero')).status, 200);
      assert.equal((await instances('zero')).length, 1);
      await until(async () => (await instances('zero')).length === 0, 5000, 'scale to zero');
      assert.equal((await a.invoke('zero')).status, 200);
      assert.equal((await a.api('GET', '/api/functions/zero/invocations')).body[0].cold_start, true);
    });

    test('scale-down never cuts an in-flight request', async () => {
      await a.deploy({ name: 'inflight', concurrency: 1, idle_timeout_s: 1 }, { 'handler.js': SLOW });
      const long = a.invoke('inflight', '/?ms=3000');
      await sleep(50);
      assert.equal((await a.invoke('inflight', '/?ms=10')).status, 200); // a second instance, idle afterwards
      await until(async () => (await instances('inflight')).length === 1, 3000, 'the idle extra to scale down');
      const res = await long;
      assert.equal(res.status, 200);
      assert.equal(await res.text(), 'v1');
      await until(async () => (await instances('inflight')).length === 0, 4000, 'scale to zero after the long request');
    });

    test('min_instances stay warm: started without a request, kept past idle_timeout_s', async () => {
      await a.deploy({ name: 'warm', min_instances: 1, idle_timeout_s: 1 }, { 'handler.js': SLOW });
      await until(async () => (await instances('warm')).some((i) => i.state === 'ready'), 10_000, 'the warm instance');
      await sleep(2500);
      assert.equal((await instances('warm')).length, 1);
      assert.equal((await a.invoke('warm')).status, 200);
      assert.equal((await a.api('GET', '/api/functions/warm/invocations')).body[0].cold_start, false);
    });

    test('a warm instance that keeps crashing is restarted with a growing delay, not in a tight loop', async () => {
      await a.deploy(
        { name: 'crashloop', min_instances: 1 },
        { 'handler.js': 'setTimeout(() => process.exit(1), 20); exports.handler = async () => "ok";' },
      );
      await sleep(4000);
      await a.api('PATCH', '/api/functions/crashloop', { min_instances: 0 });
      const starts = a.logs.filter((l) => l.includes('"instance ready"') && l.includes('"crashloop"')).length;
      assert.ok(starts >= 2, `restarted (${starts} starts)`);
      assert.ok(starts <= 7, `${starts} starts in 4 s: backoff 0.1, 0.2, 0.4, 0.8, 1.6 s allows at most 6`);
    });

    test('requests beyond capacity queue, and a full queue is 503', async () => {
      await a.deploy({ name: 'queue', concurrency: 1, max_instances: 1 }, { 'handler.js': SLOW });
      assert.equal((await a.invoke('queue', '/')).status, 200); // warm
      const res = await Promise.all(Array.from({ length: 7 }, () => a.invoke('queue', '/?ms=300')));
      const statuses = res.map((r) => r.status).sort();
      assert.deepEqual(statuses, [200, 200, 200, 200, 200, 503, 503]); // 1 running + 4 queued
      const rejected = res.find((r) => r.status === 503)!;
      assert.equal((await rejected.json()).error.code, 'queue_full');
    });

    test('a request past timeout_ms gets 504 and the stuck instance is recycled', async () => {
      await a.deploy({ name: 'slow', timeout_ms: 800 }, { 'handler.js': SLOW });
      assert.equal((await a.invoke('slow', '/')).status, 200);
      const before = (await instances('slow'))[0].id;
      const res = await a.invoke('slow', '/hang');
      assert.equal(res.status, 504);
      assert.equal((await res.json()).error.code, 'timeout');
      const ok = await a.invoke('slow', '/');
      assert.equal(ok.status, 200);
      const latest = (await a.api('GET', '/api/functions/slow/invocations')).body[0];
      assert.notEqual(latest.instance_id, before, 'served by a new instance');
      await until(async () => (await instances('slow')).every((i) => i.id !== before), 5000, 'the stuck instance to be stopped');
    });

    test('a crashed instance is replaced: the crashing request gets 502, later ones succeed', async () => {
      await a.deploy({ name: 'crash' }, { 'handler.js': SLOW });
      assert.equal((await a.invoke('crash', '/')).status, 200);
      const res = await a.invoke('crash', '/crash');
      assert.equal(res.status, 502);
      assert.match((await res.json()).error.message, /exited with code 3|closed the connection/);
      assert.equal((await a.invoke('crash', '/')).status, 200);
    });

    test('deploys under load: no request fails and new requests see the new version', async () => {
      await a.deploy({ name: 'deploy', concurrency: 4, env_vars: { VERSION: 'v1' } }, { 'handler.js': SLOW });
      let stop = false;
      const failures: number[] = [];
      let served = 0;
      const load = Array.from({ length: 4 }, async () => {
        while (!stop) {
          try {
            const r = await a.invoke('deploy', '/?ms=50');
            await r.text();
            if (r.status !== 200) failures.push(r.status);
            served++;
          } catch {
            failures.push(0); // connection-level failure
          }
        }
      });
      const servedAtLeast = (n: number) => until(async () => served >= n, 20_000, `${n} requests served`);
      await servedAtLeast(10);
      assert.equal((await a.upload('deploy', { 'handler.js': SLOW.replace("'v1'", "'code-v2'") })).status, 200);
      await servedAtLeast(served + 10);
      assert.equal((await a.api('PATCH', '/api/functions/deploy', { env_vars: { VERSION: 'v3' } })).status, 200);
      const latest = await (await a.invoke('deploy', '/')).text();
      await servedAtLeast(served + 10);
      stop = true;
      await Promise.all(load);
      assert.equal(latest, 'v3');
      assert.deepEqual(failures, []);
      await until(async () => (await instances('deploy')).every((i) => i.version === 3), 5000, 'old versions to drain');
    });
  });
}
