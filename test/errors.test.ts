/**
 * Errors: one closed list of codes with their statuses (documented as it is), the cause kept where an
 * error wraps another, and failures that used to be swallowed now said: a worker's start-up clean-up that
 * cannot reach etcd, and a server role whose shutdown fails.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { asUnavailable as etcdUnavailable } from '../src/adapters/etcd/client.js';
import { toAetherError } from '../src/adapters/http/errors.js';
import { asUnavailable as redisUnavailable } from '../src/adapters/redis/connection.js';
import { AetherError, badRequest, ERRORS, unavailable } from '../src/core/errors.js';
import { ROOT } from './helpers/aether.ts';
import { freePort } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

test('docs/errors.md lists exactly the codes of src/core/errors.ts, with their statuses and meanings', () => {
  const rows = fs
    .readFileSync(path.join(ROOT, 'docs/errors.md'), 'utf8')
    .split('\n')
    .flatMap((line) => {
      const row = /^\| `(\w+)` \| (\d{3}) \| (.+) \|$/.exec(line);
      return row ? [[row[1], { status: Number(row[2]), meaning: row[3] }] as const] : [];
    });
  assert.deepEqual(rows, Object.entries(ERRORS));
});

test('the status comes with the code, and only listed codes compile', () => {
  assert.equal(new AetherError('queue_full', 'full').status, 503);
  assert.equal(badRequest('no', 'unsafe_path').status, 400);
  assert.equal(unavailable('busy').code, 'no_capacity');
  // @ts-expect-error not a code in the list
  assert.throws(() => new AetherError('queue_ful', 'a typo'));
  // @ts-expect-error a 502 code is not a bad request
  badRequest('wrong family', 'start_failed');
});

test('an error that wraps another keeps it as its cause', () => {
  const disk = new Error('EIO: disk on fire');
  const internal = toAetherError(disk);
  assert.deepEqual([internal.status, internal.code, internal.message, internal.cause], [500, 'internal', 'internal error', disk]);

  const grpc = new Error('14 UNAVAILABLE: No connection established');
  const etcd = etcdUnavailable(grpc, 'the function store', 'store_unavailable');
  assert.deepEqual([etcd.status, etcd.code, etcd.cause], [503, 'store_unavailable', grpc]);
  assert.match(etcd.message, /the function store \(etcd\) is unavailable: 14 UNAVAILABLE/);

  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' });
  const redis = redisUnavailable(refused, 'the provisioning queue is unavailable') as AetherError;
  assert.deepEqual([redis.status, redis.code, redis.cause], [503, 'queue_unavailable', refused]);
});

/** Runs a command until `done(output)` holds (then stops it) or it exits; its whole output and exit code. */
function runUntil(args: string[], env: Record<string, string>, done: (output: string) => boolean) {
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return {
    child,
    output: () => output,
    exited,
    async waitFor(what: string): Promise<void> {
      await until(async () => done(output) || child.exitCode !== null, 30_000, what);
    },
  };
}

test('a worker that cannot reach etcd at start-up says that its old routes stay until their lease expires', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-worker-'));
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const [etcdPort, redisPort] = [await freePort(), await freePort()]; // nothing listens on either
  const worker = runUntil(
    [path.join(ROOT, 'dist/cli/main.js'), 'worker'],
    {
      PORT: '0',
      AETHER_DATA_DIR: dataDir,
      AETHER_API_TOKEN: 'test-token-0123456789abcdef',
      AETHER_ISOLATION: 'none',
      ETCD_ENDPOINTS: `http://127.0.0.1:${etcdPort}`,
      REDIS_ADDR: `127.0.0.1:${redisPort}`,
      MINIO_ENDPOINT: 'http://127.0.0.1:1',
      MINIO_ACCESS_KEY: 'a',
      MINIO_SECRET_KEY: 'b',
    },
    (output) => output.includes('could not remove the routes left by a previous run'),
  );
  t.after(() => worker.child.kill('SIGKILL'));
  await worker.waitFor('the warning');
  const line = worker
    .output()
    .split('\n')
    .find((l) => l.includes('could not remove the routes left by a previous run'));
  assert.ok(line, worker.output());
  assert.match(JSON.parse(line).err, /discovery \(etcd\) is unavailable/);
});

test('a server role whose shutdown fails says why before exiting 1', async () => {
  const script = `
    import { untilSignal } from './src/cli/until-signal.ts';
    untilSignal({ close: () => Promise.reject(new Error('etcd went away while withdrawing the registration')) });
    console.log('serving');
    setInterval(() => {}, 1000);`;
  const role = runUntil(['--import', 'tsx', '--input-type=module', '-e', script], {}, (output) => output.includes('serving'));
  await role.waitFor('the role to serve');
  role.child.kill('SIGTERM');
  assert.equal(await role.exited, 1);
  assert.match(role.output(), /aether: could not shut down cleanly: etcd went away while withdrawing the registration\n$/);
});
