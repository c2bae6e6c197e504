/**
 * Async invocations in a cluster (2 gateways, 2 workers, real etcd, Redis and S3): events accepted by
 * either gateway, through the AWS SDK and plain HTTP, run once each through the Redis Streams consumer
 * group; a dead gateway's events are taken over after the lease; and kill -9 of a worker and a gateway
 * while events are queued and running loses none of them.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { type Aether, startAether } from './helpers/aether.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

const KEY = { accessKeyId: 'AKIAAETHERTEST000003', secretAccessKey: 'aether-test-secret-0123456789' };
const SLOW = `exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 1000)); console.log('ran ' + JSON.stringify(event.body ?? event)); return 'slept'; };`;
const FAIL = `exports.handler = async () => { throw new Error('always'); };`;
const LEASE_TTL_S = '3';

type Rec = { request_id: string; invocation_type: string; attempts: number; error: string | null };

describe('async invocations, cluster', () => {
  let services: Services;
  const workers: Aether[] = [];
  const gateways: Aether[] = [];
  const dirs: string[] = [];

  const startGateway = () =>
    startAether({
      role: 'gateway',
      env: {
        ...services.env,
        AETHER_LEASE_TTL_S: LEASE_TTL_S,
        AETHER_LAMBDA_ACCESS_KEY_ID: KEY.accessKeyId,
        AETHER_LAMBDA_SECRET_ACCESS_KEY: KEY.secretAccessKey,
        AETHER_ASYNC_CONCURRENCY: '2',
        AETHER_ASYNC_RETRY_BASE_MS: '200',
        AETHER_ASYNC_LEASE_S: '2',
      },
    });

  before(async () => {
    services = await startServices();
    for (let i = 0; i < 2; i++) dirs.push(fs.mkdtempSync(path.join(os.tmpdir(), `aether-async-w${i}-`)));
    workers.push(
      ...(await Promise.all(
        dirs.map((dataDir, i) =>
          startAether({
            role: 'worker',
            isolation: 'bwrap',
            dataDir,
            env: { ...services.env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: `w${i}`, AETHER_LEASE_TTL_S: LEASE_TTL_S },
          }),
        ),
      )),
    );
    gateways.push(await startGateway(), await startGateway());
    await until(async () => (await gateways[1]!.api('GET', '/api/workers')).body.length === 2, 10_000, 'both workers');
  });
  after(async () => {
    await Promise.all([...gateways, ...workers].map((a) => a.stop()));
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    await services?.stop();
  });

  const okIds = async (g: Aether, fn: string) =>
    new Set(
      ((await g.api('GET', `/api/functions/${fn}/invocations?limit=1000`)).body as Rec[])
        .filter((r) => r.invocation_type === 'Event' && r.error === null)
        .map((r) => r.request_id),
    );

  test('retries and dead letters across gateways: a dead letter is seen, redriven and deleted through either', async () => {
    const [g0, g1] = gateways as [Aether, Aether];
    await g0.deploy({ name: 'fail', max_retries: 1 }, { 'handler.js': FAIL });
    const lambda = new LambdaClient({ endpoint: g0.url, region: 'us-east-1', credentials: KEY, maxAttempts: 1 });
    const out = await lambda.send(new InvokeCommand({ FunctionName: 'fail', InvocationType: 'Event', Payload: Buffer.from('{"x":1}') }));
    assert.equal(out.StatusCode, 202);
    const id = out.$metadata.requestId!;
    await until(async () => (await g1.api('GET', '/api/functions/fail/dead-letters')).body.length === 1, 20_000, 'the dead letter');
    const [letter] = (await g1.api('GET', '/api/functions/fail/dead-letters')).body;
    assert.deepEqual([letter.id, letter.attempts, letter.reason, letter.payload], [id, 2, 'retries_exhausted', '{"x":1}']);
    assert.deepEqual((await g1.api('POST', `/api/functions/fail/dead-letters/${id}/redrive`)).body, { redriven: 1 });
    await until(
      async () => ((await g0.api('GET', '/api/functions/fail/invocations')).body as Rec[]).filter((r) => r.request_id === id).length === 4,
      20_000,
      'two more attempts after the redrive',
    );
    await until(async () => (await g0.api('GET', '/api/functions/fail/dead-letters')).body.length === 1, 20_000, 'the dead letter again');
    assert.equal((await g0.api('DELETE', `/api/functions/fail/dead-letters/${id}`)).status, 204);
    assert.deepEqual((await g1.api('GET', '/api/functions/fail/dead-letters')).body, []);
  });

  test('kill -9 of a worker and a gateway while events are queued and running: every accepted event runs', async () => {
    const [g0, g1] = gateways as [Aether, Aether];
    await g0.deploy({ name: 'slow', concurrency: 1, max_instances: 4 }, { 'handler.js': SLOW });
    const lambda = new LambdaClient({ endpoint: g0.url, region: 'us-east-1', credentials: KEY, maxAttempts: 1 });
    const accepted: string[] = [];
    for (let i = 0; i < 5; i++) {
      const out = await lambda.send(
        new InvokeCommand({ FunctionName: 'slow', InvocationType: 'Event', Payload: Buffer.from(`{"sdk":${i}}`) }),
      );
      assert.equal(out.StatusCode, 202);
      accepted.push(out.$metadata.requestId!);
    }
    for (let i = 0; i < 5; i++) {
      const res = await g1.invoke('slow', `/h/${i}`, {
        method: 'POST',
        body: `{"http":${i}}`,
        headers: { 'x-aether-invocation-type': 'Event' },
      });
      assert.equal(res.status, 202);
      accepted.push((await res.json()).request_id);
    }
    // Some attempts are running on workers; the rest wait in Redis.
    let busy: { worker_id: string }[] = [];
    await until(
      async () => {
        busy = (await g1.api('GET', '/api/functions/slow/instances')).body.filter((i: { in_flight: number }) => i.in_flight > 0);
        return busy.length >= 2;
      },
      20_000,
      'attempts running',
    );
    const victim = workers[Number(busy[0]!.worker_id.slice(1))]!; // AETHER_WORKER_ID w0, w1
    await Promise.all([victim.kill('SIGKILL'), g0.kill('SIGKILL')]);

    await until(
      async () => {
        const ok = await okIds(g1, 'slow');
        const dead = new Set(
          ((await g1.api('GET', '/api/functions/slow/dead-letters')).body as { request_id: string }[]).map((l) => l.request_id),
        );
        return accepted.every((id) => ok.has(id) || dead.has(id));
      },
      45_000,
      'every accepted event to run (or be dead-lettered)',
    );
  });
});
