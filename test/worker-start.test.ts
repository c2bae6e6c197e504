/**
 * A cluster worker that starts with warm instances to keep (min_instances): they start as soon as
 * the worker has loaded the functions, which can be before it listens and knows its own URL. Real
 * processes on real etcd, Redis and S3 (s3rver). The worker restarts with its code cached while
 * Redis is down, which holds its start-up for two seconds (connectRedis waits that long): its
 * instances are certainly ready before it listens.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { HANDLER_CJS, startAether, type Aether } from './helpers/aether.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

const WARM = 3;

let services: Services;
let gateway: Aether;
let worker: Aether | undefined;
const workerDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-warm-worker-'));

const startWorker = async () =>
  (worker = await startAether({
    role: 'worker',
    isolation: 'none',
    dataDir: workerDir,
    env: { ...services.env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: 'warm', AETHER_LEASE_TTL_S: '2' },
  }));

before(async () => {
  services = await startServices();
  gateway = await startAether({ role: 'gateway', env: { ...services.env, AETHER_LEASE_TTL_S: '2' } });
  await startWorker();
});

after(async () => {
  await Promise.all([gateway, worker].map((a) => a?.stop()));
  fs.rmSync(workerDir, { recursive: true, force: true });
  await services.stop();
});

test('warm instances started before the worker listens are announced with its URL and serve', async () => {
  const fn = await gateway.deploy({ name: 'warm', min_instances: WARM, max_instances: WARM }, { 'handler.js': HANDLER_CJS });
  const instances = async () => (await gateway.api('GET', `/api/functions/${fn.id}/instances`)).body as Array<{ worker_id: string }>;
  await until(async () => (await instances()).length === WARM, 30_000, 'the first warm instances');

  // A restart: the function with its min_instances is there when the worker loads, its code cached.
  await worker!.stop();
  await services.redis.stop();
  const restarted = await startWorker();
  await services.redis.start();
  await until(async () => (await instances()).length === WARM, 30_000, `${WARM} warm instances announced after the restart`);
  assert.deepEqual(
    restarted.logs.filter((l) => l.includes('"instance failed to start"') || l.includes('"level":50')),
    [],
    'no instance failed to start, nothing went wrong',
  );
  const ready = restarted.logs.filter((l) => l.includes('"instance ready"'));
  assert.equal(ready.length, WARM, 'exactly the warm instances started: none leaked and replaced');
  const serving = restarted.logs.findIndex((l) => l.includes('"aether is serving"'));
  assert.ok(restarted.logs.indexOf(ready[0]!) < serving, 'the case in question: an instance was ready before the worker served');
  const res = await gateway.invoke('warm', '/hello');
  assert.equal(res.status, 200);
  assert.equal((await res.json()).path, '/hello');
});
