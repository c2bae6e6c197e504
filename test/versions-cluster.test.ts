/**
 * Versions and aliases in a cluster: 2 gateways and 2 workers (bwrap) on real etcd (records, versions,
 * aliases), Redis and S3 (code, removed by retention): deploys and aliases made through one gateway
 * are invoked by qualifier through both, over HTTP and the AWS SDK's InvokeCommand.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { codeKey } from '../src/adapters/s3/s3-code-store.ts';
import { startAether, type Aether } from './helpers/aether.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

const KEY = { accessKeyId: 'AKIAAETHERTEST000001', secretAccessKey: 'aether-test-secret-0123456789' };
const LAMBDA_ENV = { AETHER_LAMBDA_ACCESS_KEY_ID: KEY.accessKeyId, AETHER_LAMBDA_SECRET_ACCESS_KEY: KEY.secretAccessKey };
const handler = (says: string) => `exports.handler = async () => ({ statusCode: 200, body: '${says}:' + process.env.V });`;

describe('versions and aliases in a cluster (2 gateways, 2 workers)', () => {
  let services: Services;
  const gateways: Aether[] = [];
  const workers: Aether[] = [];
  const dirs: string[] = [];

  before(async () => {
    services = await startServices();
    for (let i = 0; i < 2; i++) {
      const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `aether-vworker${i}-`));
      dirs.push(dataDir);
      workers.push(
        await startAether({
          role: 'worker',
          isolation: 'bwrap',
          dataDir,
          env: { ...services.env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: `w${i}` },
        }),
      );
    }
    for (let i = 0; i < 2; i++) {
      gateways.push(await startAether({ role: 'gateway', env: { ...services.env, ...LAMBDA_ENV, AETHER_VERSIONS_KEPT: '2' } }));
    }
    await until(async () => (await gateways[1]!.api('GET', '/api/workers')).body.length === 2, 10_000, 'both workers to register');
  });
  after(async () => {
    await Promise.all([...gateways, ...workers].map((a) => a.stop()));
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    await services.stop();
  });

  const text = async (a: Aether, ref: string) => {
    const res = await a.invoke(ref);
    const body = await res.text();
    assert.equal(res.status, 200, `${ref}: ${body}`);
    return body;
  };
  /** Through every gateway (the other one learns of changes through its etcd watch). */
  const everywhere = async (ref: string, expected: string) => {
    for (const g of gateways) await until(async () => (await text(g, ref)) === expected, 5000, `${ref} to answer ${expected}`);
  };

  test('versions and aliases made through one gateway; invoked by qualifier through both, over HTTP and InvokeCommand', async () => {
    const [g0, g1] = [gateways[0]!, gateways[1]!];
    const v1 = await g0.deploy({ name: 'vc', env_vars: { V: '1' } }, { 'index.js': handler('a') });
    const v2 = await g1.upload('vc', { 'index.js': handler('b') });
    assert.equal(v2.body.version, 2);
    await until(async () => (await g0.api('GET', '/api/functions/vc/versions')).body.length === 2, 5000, 'both versions on g0');
    const versions = (await g0.api('GET', '/api/functions/vc/versions')).body;
    assert.deepEqual(
      versions.map((v: { version: number; code_hash: string }) => [v.version, v.code_hash]),
      [
        [2, v2.body.code_hash],
        [1, v1.code_hash],
      ],
    );

    assert.equal((await g1.api('PUT', '/api/functions/vc/aliases/prod', { version: 1 })).status, 200);
    await everywhere('vc:prod', 'a:1');
    await everywhere('vc:1', 'a:1');
    await everywhere('vc:2', 'b:1');
    await everywhere('vc', 'b:1');

    // Instances are per version, on the workers; both gateways list them with their worker.
    const instances = (await g1.api('GET', '/api/functions/vc/instances')).body as { version: number; worker_id: string }[];
    assert.deepEqual([...new Set(instances.map((i) => i.version))].sort(), [1, 2]);
    assert.ok(instances.every((i) => ['w0', 'w1'].includes(i.worker_id)));

    for (const g of gateways) {
      const lambda = new LambdaClient({ endpoint: g.url, region: 'eu-central-1', credentials: KEY, maxAttempts: 1 });
      try {
        const out = await lambda.send(new InvokeCommand({ FunctionName: 'vc', Qualifier: 'prod', Payload: Buffer.from('{}') }));
        assert.equal(out.ExecutedVersion, '1');
        assert.equal(JSON.parse(Buffer.from(out.Payload!).toString()).body, 'a:1');
        const latest = await lambda.send(new InvokeCommand({ FunctionName: 'vc', Payload: Buffer.from('{}') }));
        assert.equal(latest.ExecutedVersion, '$LATEST');
        assert.equal(JSON.parse(Buffer.from(latest.Payload!).toString()).body, 'b:1');
      } finally {
        lambda.destroy();
      }
    }

    // Rollback and roll forward: moving the alias through one gateway moves it for both.
    await g0.api('PUT', '/api/functions/vc/aliases/prod', { version: 2 });
    await everywhere('vc:prod', 'b:1');
    await g1.api('PUT', '/api/functions/vc/aliases/prod', { version: 1 });
    await everywhere('vc:prod', 'a:1');
  });

  test('retention removes old versions from etcd and their code from S3; an alias keeps its version', async () => {
    const [g0, g1] = [gateways[0]!, gateways[1]!];
    const s3 = new S3Client({
      endpoint: services.s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    });
    const inS3 = (hash: string) =>
      s3.send(new HeadObjectCommand({ Bucket: 'function-code', Key: codeKey(hash, 'zip') })).then(
        () => true,
        () => false,
      );
    try {
      const first = await g0.deploy({ name: 'rc' }, { 'index.js': handler('r1') });
      await g0.api('PUT', '/api/functions/rc/aliases/old', { version: 1 });
      const second = (await g0.upload('rc', { 'index.js': handler('r2') })).body;
      const third = (await g0.upload('rc', { 'index.js': handler('r3') })).body;
      const fourth = (await g0.upload('rc', { 'index.js': handler('r4') })).body;
      assert.equal(fourth.version, 4);
      const listed = async (g: Aether) =>
        JSON.stringify((await g.api('GET', '/api/functions/rc/versions')).body.map((v: { version: number }) => v.version));
      await until(async () => (await listed(g1)) === '[4,3,1]', 5000, 'g1 to list versions 4, 3 and 1');
      assert.ok(await inS3(first.code_hash), 'the alias keeps version 1 and its code');
      assert.ok(!(await inS3(second.code_hash)), 'version 2 code removed from S3');
      assert.ok(await inS3(third.code_hash));
      await everywhere('rc:old', 'r1:undefined');
      const gone = await g1.invoke('rc:2');
      assert.equal(gone.status, 404);
      assert.equal(((await gone.json()) as { error: { code: string } }).error.code, 'version_not_found');

      // Deleting the function takes its versions, aliases and code with it.
      assert.equal((await g1.api('DELETE', '/api/functions/rc')).status, 204);
      for (const hash of [first.code_hash, third.code_hash, fourth.code_hash]) assert.ok(!(await inS3(hash)), `${hash} removed`);
      await g0.deploy({ name: 'rc' }, { 'index.js': handler('new') });
      await until(async () => (await listed(g1)) === '[1]', 5000, 'the new rc to have only its own version');
      assert.equal((await g1.api('GET', '/api/functions/rc/aliases')).body.length, 0);
    } finally {
      s3.destroy();
    }
  });
});
