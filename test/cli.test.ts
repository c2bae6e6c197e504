/** The `aether` command itself: start-up errors in one line, the roles' help, and the microVM image build. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { ISOLATION_DRIVERS } from '../src/adapters/isolation/drivers.ts';
import { ROOT } from './helpers/aether.ts';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'dist/cli/main.js');

test('invalid configuration stops every role with one line naming the setting', async () => {
  const cases: [string, Record<string, string>, RegExp][] = [
    ['serve', { PORT: '99999' }, /^aether: invalid configuration: PORT: /],
    ['gateway', {}, /^aether: invalid configuration: ETCD_ENDPOINTS: is required in cluster mode/],
    [
      'worker',
      {
        ETCD_ENDPOINTS: 'http://127.0.0.1:1',
        REDIS_ADDR: 'localhost',
        MINIO_ENDPOINT: 'http://s3',
        MINIO_ACCESS_KEY: 'a',
        MINIO_SECRET_KEY: 'b',
        AETHER_API_TOKEN: '0123456789abcdef',
      },
      /^aether: invalid configuration: REDIS_ADDR: must be host:port/,
    ],
  ];
  for (const [role, env, pattern] of cases) {
    const err = await run(process.execPath, [CLI, role], { env: { PATH: process.env.PATH, ...env } }).then(
      () => assert.fail(`${role} started`),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2, role);
    assert.equal(err.stderr.trim().split('\n').length, 1, `${role}: one line, got ${err.stderr}`);
    assert.match(err.stderr, pattern);
  }
});

test('aether image build builds the guest image once and then finds it by content hash', async () => {
  const first = JSON.parse((await run(process.execPath, [CLI, 'image', 'build'], { maxBuffer: 1 << 20 })).stdout);
  for (const file of [first.kernel, first.initrd, first.rootfs]) assert.ok(fs.statSync(file).size > 0, file);
  assert.match(first.hash, /^[0-9a-f]{64}$/);
  const started = Date.now();
  const second = JSON.parse((await run(process.execPath, [CLI, 'image', 'build'])).stdout);
  assert.deepEqual(second, first);
  assert.ok(Date.now() - started < 15_000, 'the cached image is found, not rebuilt');
});

test('the help of serve and worker lists every isolation driver and what an instance is under it', async () => {
  for (const role of ['serve', 'worker']) {
    const { stdout } = await run(process.execPath, [CLI, role, '--help']);
    assert.match(stdout, /^ {2}auto {9}the strongest one that really starts a function/m, role);
    for (const [name, driver] of Object.entries(ISOLATION_DRIVERS)) {
      assert.ok(stdout.includes(`\n  ${name.padEnd(12)} ${driver.what}\n`), `${role} --help: ${name}`);
    }
  }
});
