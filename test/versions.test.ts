import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { newAlias, pickVersion, versionsToRemove } from '../src/core/versions.ts';
import type { FunctionRecord } from '../src/core/types.ts';
import { startAether, type Aether } from './helpers/aether.ts';

const handler = (says: string) => `exports.handler = async () => ({ statusCode: 200, body: '${says}:' + process.env.V });`;

describe('weighted choice and retention rules (pure)', () => {
  test('pickVersion gives each additional version its stretch of [0, 1) and the alias version the rest', () => {
    const alias = { version: 7, additional_version_weights: { '8': 0.1, '9': 0.25 } };
    assert.equal(pickVersion(alias, 0), 8);
    assert.equal(pickVersion(alias, 0.0999), 8);
    assert.equal(pickVersion(alias, 0.1), 9);
    assert.equal(pickVersion(alias, 0.3499), 9);
    assert.equal(pickVersion(alias, 0.35), 7);
    assert.equal(pickVersion(alias, 0.9999), 7);
    assert.equal(pickVersion({ version: 3, additional_version_weights: {} }, 0.5), 3);
    assert.equal(pickVersion({ version: 3, additional_version_weights: { '4': 1 } }, 0.9999), 4);
    // Over an even grid of r the shares are the weights exactly.
    const counts = new Map<number, number>();
    for (let i = 0; i < 10_000; i++) {
      const v = pickVersion(alias, i / 10_000);
      counts.set(v, (counts.get(v) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(counts), { 7: 6500, 8: 1000, 9: 2500 });
  });

  test('newAlias checks versions and weights', () => {
    const fn = { id: 'f', name: 'f', version: 9 } as FunctionRecord;
    const exists = (v: number) => v >= 2 && v <= 9;
    const ok = newAlias(fn, 'prod', { version: 7, additional_version_weights: { '8': 0.1 } }, exists, undefined, new Date(0));
    assert.deepEqual(ok, {
      function_id: 'f',
      name: 'prod',
      version: 7,
      additional_version_weights: { '8': 0.1 },
      created_at: '1970-01-01T00:00:00.000Z',
      updated_at: '1970-01-01T00:00:00.000Z',
    });
    const moved = newAlias(fn, 'prod', { version: 8, additional_version_weights: {} }, exists, ok, new Date(1000));
    assert.equal(moved.created_at, ok.created_at);
    assert.equal(moved.updated_at, '1970-01-01T00:00:01.000Z');
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        return (err as { code: string }).code;
      }
      return 'none';
    };
    assert.equal(
      code(() => newAlias(fn, 'p', { version: 1, additional_version_weights: {} }, exists, undefined)),
      'version_not_found',
    );
    assert.equal(
      code(() => newAlias(fn, 'p', { version: 7, additional_version_weights: { '10': 0.5 } }, exists, undefined)),
      'version_not_found',
    );
    assert.equal(
      code(() => newAlias(fn, 'p', { version: 7, additional_version_weights: { '7': 0.5 } }, exists, undefined)),
      'invalid_alias',
    );
    assert.equal(
      code(() => newAlias(fn, 'p', { version: 7, additional_version_weights: { '8': 0.6, '9': 0.5 } }, exists, undefined)),
      'invalid_alias',
    );
  });

  test('versionsToRemove keeps the newest, the current one and those an alias runs', () => {
    const v = (n: number) => ({ version: n }) as FunctionRecord;
    const all = [1, 2, 3, 4, 5, 6].map(v);
    const alias = { version: 2, additional_version_weights: { '3': 0.5 } } as never;
    assert.deepEqual(
      versionsToRemove(all, 6, [alias], 2).map((r) => r.version),
      [1, 4],
    );
    assert.deepEqual(versionsToRemove(all, 6, [], 10), []);
  });
});

const KEY = { accessKeyId: 'AKIAAETHERTEST000001', secretAccessKey: 'aether-test-secret-0123456789' };
const LAMBDA_ENV = { AETHER_LAMBDA_ACCESS_KEY_ID: KEY.accessKeyId, AETHER_LAMBDA_SECRET_ACCESS_KEY: KEY.secretAccessKey };

describe('versions and aliases API', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap', env: { AETHER_VERSIONS_KEPT: '3', ...LAMBDA_ENV } });
  });
  after(() => a.stop());

  test('every deploy is a version: code hash and configuration, secrets masked, newest first', async () => {
    const fn = await a.deploy({ name: 'ver', env_vars: { V: 'one', SECRET: 'hunter22' } }, { 'index.js': handler('a') });
    assert.equal(fn.version, 1);
    const patched = await a.api('PATCH', '/api/functions/ver', { env_vars: { V: 'two', SECRET: 'hunter22' } });
    assert.equal(patched.body.version, 2);
    const up = await a.upload('ver', { 'index.js': handler('b') });
    assert.equal(up.body.version, 3);
    const res = await a.api('GET', '/api/functions/ver/versions');
    assert.equal(res.status, 200);
    assert.deepEqual(
      res.body.map((v: { version: number; code_hash: string }) => [v.version, v.code_hash]),
      [
        [3, up.body.code_hash],
        [2, fn.code_hash],
        [1, fn.code_hash],
      ],
    );
    assert.notEqual(up.body.code_hash, fn.code_hash);
    assert.deepEqual(res.body[1].config.env_vars, { V: '********', SECRET: '********' });
    assert.equal(res.body[1].config.name, 'ver');
    assert.ok(!JSON.stringify(res.body).includes('hunter22'));
    assert.ok(Date.parse(res.body[0].created_at) >= Date.parse(res.body[2].created_at));
    const one = await a.api('GET', '/api/functions/ver/versions/2');
    assert.deepEqual(one.body, res.body[1]);
    const missing = await a.api('GET', '/api/functions/ver/versions/9');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'version_not_found');
  });

  test('aliases: create, move, list, delete, with clear errors', async () => {
    await a.deploy({ name: 'al' }, { 'index.js': handler('a') });
    await a.upload('al', { 'index.js': handler('b') });
    const put = await a.api('PUT', '/api/functions/al/aliases/prod', { version: 1, additional_version_weights: { '2': 0.1 } });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    assert.deepEqual([put.body.name, put.body.version, put.body.additional_version_weights], ['prod', 1, { '2': 0.1 }]);
    const moved = await a.api('PUT', '/api/functions/al/aliases/prod', { version: 2 });
    assert.deepEqual([moved.body.version, moved.body.additional_version_weights], [2, {}]);
    assert.equal(moved.body.created_at, put.body.created_at);
    await a.api('PUT', '/api/functions/al/aliases/beta', { version: 2 });
    const list = await a.api('GET', '/api/functions/al/aliases');
    assert.deepEqual(
      list.body.map((x: { name: string }) => x.name),
      ['beta', 'prod'],
    );
    assert.equal((await a.api('GET', '/api/functions/al/aliases/prod')).body.version, 2);

    const errors: [string, unknown, number, string, RegExp][] = [
      ['prod', { version: 5 }, 404, 'version_not_found', /no version 5 \(its latest is 2/],
      [
        'prod',
        { version: 1, additional_version_weights: { '2': 1.5 } },
        400,
        'validation_failed',
        /additional_version_weights.2: weights are shares from 0 to 1/,
      ],
      ['prod', { version: 1, additional_version_weights: { '2': -0.1 } }, 400, 'validation_failed', /weights are shares/],
      ['prod', { version: 1, additional_version_weights: { '1': 0.5 } }, 400, 'invalid_alias', /own version/],
      ['prod', { version: 1, additional_version_weights: { x: 0.5 } }, 400, 'validation_failed', /keys must be version numbers/],
      ['prod', { version: 0 }, 400, 'validation_failed', /version/],
      ['prod', {}, 400, 'validation_failed', /version/],
      ['123', { version: 1 }, 400, 'validation_failed', /path parameter alias: alias names are 1-128 letters/],
      ['a.b', { version: 1 }, 400, 'validation_failed', /alias names/],
      ['$LATEST', { version: 1 }, 400, 'validation_failed', /alias names/],
    ];
    for (const [name, body, status, code, message] of errors) {
      const res = await a.api('PUT', `/api/functions/al/aliases/${encodeURIComponent(name)}`, body);
      assert.equal(res.status, status, `${name} ${JSON.stringify(body)}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, code);
      assert.match(res.body.error.message, message);
    }
    assert.equal((await a.api('GET', '/api/functions/al/aliases/prod')).body.version, 2, 'a rejected change leaves the alias as it was');

    assert.equal((await a.api('DELETE', '/api/functions/al/aliases/beta')).status, 204);
    const gone = await a.api('DELETE', '/api/functions/al/aliases/beta');
    assert.equal(gone.status, 404);
    assert.equal(gone.body.error.code, 'alias_not_found');
    assert.equal((await a.api('GET', '/api/functions/al/aliases/beta')).body.error.code, 'alias_not_found');
    assert.equal((await a.api('GET', '/api/functions/nope/aliases')).body.error.code, 'not_found');
  });

  test('old versions and their code go beyond AETHER_VERSIONS_KEPT; those an alias runs stay', async () => {
    const codeDir = (hash: string) => path.join(a.dataDir, 'code', hash);
    const v1 = await a.deploy({ name: 'keep' }, { 'index.js': handler('1') });
    assert.equal((await a.api('PUT', '/api/functions/keep/aliases/old', { version: 1 })).status, 200);
    const hashes: string[] = [v1.code_hash];
    for (const n of [2, 3, 4, 5]) hashes.push((await a.upload('keep', { 'index.js': handler(String(n)) })).body.code_hash);
    const versions = async () => (await a.api('GET', '/api/functions/keep/versions')).body.map((v: { version: number }) => v.version);
    assert.deepEqual(await versions(), [5, 4, 3, 1]);
    assert.ok(fs.existsSync(codeDir(hashes[0]!)), 'the alias keeps version 1 and its code');
    assert.ok(!fs.existsSync(codeDir(hashes[1]!)), 'version 2 code removed');
    assert.equal((await a.api('GET', '/api/functions/keep/versions/2')).body.error.code, 'version_not_found');
    assert.equal((await a.api('PUT', '/api/functions/keep/aliases/old', { version: 2 })).body.error.code, 'version_not_found');
    // Once the alias moves on, version 1 goes with the next deploy.
    await a.api('PUT', '/api/functions/keep/aliases/old', { version: 4 });
    await a.api('PATCH', '/api/functions/keep', { memory_mb: 256 }); // a configuration change is a version too (same code)
    assert.deepEqual(await versions(), [6, 5, 4]);
    assert.ok(!fs.existsSync(codeDir(hashes[0]!)));
    assert.ok(fs.existsSync(codeDir(hashes[4]!)), 'versions 5 and 6 share their code');
    // Deleting the function removes all of its code.
    assert.equal((await a.api('DELETE', '/api/functions/keep')).status, 204);
    for (const h of hashes) assert.ok(!fs.existsSync(codeDir(h)), `code ${h} removed with the function`);
  });
});

/** What `n` invocations of `ref` (name[:qualifier]) answered, counted, `parallel` at a time. */
async function answers(a: Aether, ref: string, n: number, parallel = 16): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  let left = n;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (left-- > 0) {
        const res = await a.invoke(ref);
        const text = await res.text();
        assert.equal(res.status, 200, text);
        counts.set(text, (counts.get(text) ?? 0) + 1);
      }
    }),
  );
  return counts;
}

describe('invocation by qualifier (bwrap)', () => {
  let a: Aether;
  let lambda: LambdaClient;
  before(async () => {
    a = await startAether({ isolation: 'bwrap', env: LAMBDA_ENV });
    lambda = new LambdaClient({ endpoint: a.url, region: 'eu-central-1', credentials: KEY, maxAttempts: 1 });
    await a.deploy({ name: 'q', env_vars: { V: '1' }, concurrency: 50 }, { 'index.js': handler('a') }); // version 1
    await a.api('PATCH', '/api/functions/q', { env_vars: { V: '2' } }); // version 2: configuration only
    await a.upload('q', { 'index.js': handler('b') }); // version 3
  });
  after(async () => {
    lambda.destroy();
    await a.stop();
  });

  test('name:version runs that version, name and name:$LATEST the latest; unknown qualifiers are 404', async () => {
    const text = async (ref: string) => (await a.invoke(ref)).text();
    assert.equal(await text('q:1'), 'a:1');
    assert.equal(await text('q:2'), 'a:2');
    assert.equal(await text('q:3'), 'b:2');
    assert.equal(await text('q'), 'b:2');
    assert.equal(await text('q:$LATEST'), 'b:2');
    for (const [ref, code] of [
      ['q:9', 'version_not_found'],
      ['q:0', 'version_not_found'],
      ['q:nope', 'alias_not_found'],
      ['nope:1', 'not_found'],
    ]) {
      const res = await a.invoke(ref!);
      assert.equal(res.status, 404, ref);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, code, ref);
    }
    // Instances are per version: each one runs exactly one.
    const instances = (await a.api('GET', '/api/functions/q/instances')).body as { version: number; state: string }[];
    assert.deepEqual([...new Set(instances.filter((i) => i.state === 'ready').map((i) => i.version))].sort(), [1, 2, 3]);
  });

  test('an alias with weights splits its invocations within 3 % of them over 2,000 requests', async () => {
    assert.equal(
      (await a.api('PUT', '/api/functions/q/aliases/live', { version: 1, additional_version_weights: { '3': 0.1 } })).status,
      200,
    );
    const counts = await answers(a, 'q:live', 2000);
    assert.deepEqual([...counts.keys()].sort(), ['a:1', 'b:2']);
    const canary = counts.get('b:2')! / 2000;
    assert.ok(Math.abs(canary - 0.1) <= 0.03, `version 3 got ${(canary * 100).toFixed(1)} % of the invocations, not 10 % ± 3 %`);
  });

  test('rollback is moving the alias: the next invocation runs the version it names', async () => {
    await a.api('PUT', '/api/functions/q/aliases/prod', { version: 3 });
    assert.equal(await (await a.invoke('q:prod')).text(), 'b:2');
    await a.api('PUT', '/api/functions/q/aliases/prod', { version: 2 });
    assert.deepEqual([...(await answers(a, 'q:prod', 20, 4)).keys()], ['a:2']);
    // A new deploy does not move the alias: only $LATEST follows it.
    await a.api('PATCH', '/api/functions/q', { env_vars: { V: '4' } }); // version 4
    assert.equal(await (await a.invoke('q:prod')).text(), 'a:2');
    assert.equal(await (await a.invoke('q')).text(), 'b:4');
  });

  test('the Lambda Invoke API: Qualifier (or name:qualifier) picks the version, X-Amz-Executed-Version says which ran', async () => {
    const invoke = async (FunctionName: string, Qualifier?: string) => {
      const out = await lambda.send(new InvokeCommand({ FunctionName, Qualifier, Payload: Buffer.from('{}') }));
      return { version: out.ExecutedVersion, body: JSON.parse(Buffer.from(out.Payload!).toString()).body as string };
    };
    assert.deepEqual(await invoke('q', '1'), { version: '1', body: 'a:1' });
    assert.deepEqual(await invoke('q:2'), { version: '2', body: 'a:2' });
    assert.deepEqual(await invoke('q', 'prod'), { version: '2', body: 'a:2' });
    assert.deepEqual(await invoke('q'), { version: '$LATEST', body: 'b:4' });
    await a.api('PUT', '/api/functions/q/aliases/prod', { version: 1 });
    assert.deepEqual(await invoke('arn:aws:lambda:eu-central-1:123456789012:function:q:prod'), { version: '1', body: 'a:1' });
    for (const qualifier of ['9', 'nope']) {
      const err = await invoke('q', qualifier).then(
        () => assert.fail('expected an error'),
        (e: { name: string; $metadata: { httpStatusCode: number }; message: string }) => e,
      );
      assert.deepEqual([err.name, err.$metadata.httpStatusCode], ['ResourceNotFoundException', 404]);
      assert.match(err.message, new RegExp(`Function not found: .*function:q:${qualifier}`));
    }
  });
});
