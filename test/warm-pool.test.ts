/**
 * The warm pool through real HTTP and real sandboxes: cold starts take pre-started instances (their
 * instance info says so), the pool refills, a pooled instance serves one function for its whole
 * life and sees nothing of another's code, env or files, other memory sizes join the pool once they
 * are in demand, and AETHER_WARM_POOL_MB=0 works as before. The pool's size decisions without
 * sandboxes: warm-pool-policy.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { type Aether, sandboxDrivers, startAether } from './helpers/aether.ts';
import { RUNNING_FILE } from './helpers/running-file.ts';
import { until } from './helpers/wait.ts';

// Reports what the instance can see of itself and its neighbours; /write leaves a file in /tmp.
const PROBE = `
const fs = require('fs');
${RUNNING_FILE}
const look = (p) => { try { return fs.readdirSync(p); } catch (err) { return err.code; } };
exports.handler = async (event) => {
  if (event.path === '/write') fs.writeFileSync('/tmp/tenant', process.env.NAME);
  return { statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({
    name: process.env.NAME, env: process.env, code: look('/code'), tmp: look('/tmp'), cwd: process.cwd(),
    mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8'), started: process.uptime(),
    bundled: runningFile().startsWith('/opt/aether/start/') }) };
};`;
const files = (name: string) => ({ 'handler.js': PROBE, [`${name}-only.txt`]: `${name}'s own file` });

interface PoolStatus {
  budget_mb: number;
  sizes: Array<{ memory_mb: number; idle: number; target: number }>;
  starting: number;
  hits: number;
  misses: number;
}

/** gVisor pre-starts take a second or more on a busy 2-core host. */
const REFILL_TIMEOUT_MS = 30_000;

for (const driver of sandboxDrivers()) {
  describe(`warm pool on ${driver}`, () => {
    let a: Aether;
    before(async () => {
      a = await startAether({ isolation: driver, env: { AETHER_WARM_POOL_MB: '384' } });
    });
    after(async () => {
      await a.stop();
      const left = fs
        .readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .filter((line) => line.includes(a.dataDir));
      assert.deepEqual(left, [], 'no mount of the pool is left behind');
    });

    const pool = async () => (await a.api('GET', '/api/system')).body.warm_pool as PoolStatus;
    const idle = async (memoryMb: number) => (await pool()).sizes.find((s) => s.memory_mb === memoryMb)?.idle ?? 0;
    const instances = async (fn: string) => (await a.api('GET', `/api/functions/${fn}/instances`)).body as any[];
    const probe = async (fn: string, path = '/') => {
      const res = await a.invoke(fn, path);
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as any;
    };

    test('a cold start takes a pre-started instance, which then runs only its function; the pool refills', async () => {
      await until(async () => (await idle(128)) >= 1, REFILL_TIMEOUT_MS, 'a first pooled instance');
      const before = await pool();
      const a1 = await a.deploy({ name: 'tenant-a', env_vars: { NAME: 'a', SECRET_A: 'only-for-a' } }, files('a'));
      const b1 = await a.deploy({ name: 'tenant-b', env_vars: { NAME: 'b', SECRET_B: 'only-for-b' } }, files('b'));
      // A's code prepared at deploy (fast-start.ts) reaches the pooled instance too.
      const startMode = async () => (await a.api('GET', '/api/functions/tenant-a')).body.start?.mode;
      await until(async () => (await startMode()) !== 'preparing', REFILL_TIMEOUT_MS, "A's prepared start");
      assert.equal(await startMode(), 'bundle');

      const seenByA = await probe('tenant-a', '/write');
      const [instA] = await instances('tenant-a');
      assert.equal(instA.prewarmed, true, 'the instance came from the pool');
      assert.equal((await pool()).hits, before.hits + 1);
      await until(async () => (await idle(128)) >= 1, REFILL_TIMEOUT_MS, 'the pool to refill');
      const seenByB = await probe('tenant-b');
      const [instB] = await instances('tenant-b');
      assert.equal(instB.prewarmed, true);
      assert.notEqual(instB.id, instA.id);

      // Each sees its own code read-only at /code and its own env, nothing of the other's.
      assert.deepEqual(seenByA.code.sort(), ['a-only.txt', 'handler.js']);
      assert.deepEqual(seenByB.code.sort(), ['b-only.txt', 'handler.js']);
      assert.equal(seenByA.cwd, '/code');
      assert.equal(seenByA.bundled, true, 'A ran from its prepared bundle');
      assert.equal(seenByA.env.SECRET_A, 'only-for-a');
      assert.equal(seenByA.env.SECRET_B, undefined);
      assert.equal(seenByB.env.SECRET_A, undefined);
      assert.equal(seenByB.tmp.includes('tenant'), false, "a fresh instance: nothing of another tenant's /tmp");
      for (const [seen, other] of [
        [seenByA, b1],
        [seenByB, a1],
      ]) {
        assert.equal(seen.mounts.includes(other.code_hash), false, "the other function's code is mounted nowhere in this instance");
      }

      // A keeps serving from the same instance (the same process), and only A.
      const again = await probe('tenant-a');
      assert.equal(again.name, 'a');
      assert.ok(again.started > seenByA.started);
      assert.deepEqual(
        (await instances('tenant-a')).map((i) => i.id),
        [instA.id],
      );
    });

    test('an instance that ends is never pooled again: the next tenant gets a fresh one', async () => {
      const first = await a.deploy({ name: 'reuse-1', env_vars: { NAME: 'one' } }, files('one'));
      await until(async () => (await idle(128)) >= 1, REFILL_TIMEOUT_MS, 'a pooled instance');
      await probe('reuse-1', '/write');
      const hits = (await pool()).hits;
      assert.equal((await a.api('DELETE', `/api/functions/${first.id}`)).status, 204);
      await a.deploy({ name: 'reuse-2', env_vars: { NAME: 'two' } }, files('two'));
      await until(async () => (await idle(128)) >= 1, REFILL_TIMEOUT_MS, 'a pooled instance');
      const seen = await probe('reuse-2');
      assert.equal((await pool()).hits, hits + 1);
      assert.deepEqual(seen.tmp, [], "an empty /tmp: not the deleted function's instance");
      assert.deepEqual(seen.code.sort(), ['handler.js', 'two-only.txt']);
    });

    // Not a matter of the sandbox: on the first driver only.
    if (driver === sandboxDrivers()[0]) {
      test('a start that fails in a pooled instance is a failed start, with the reason', async () => {
        await until(async () => (await idle(128)) >= 1, REFILL_TIMEOUT_MS, 'a pooled instance');
        const hits = (await pool()).hits;
        await a.deploy({ name: 'throws' }, { 'handler.js': "throw new Error('broken at import');" });
        const res = await a.invoke('throws');
        assert.equal(res.status, 502);
        assert.match(await res.text(), /broken at import/);
        assert.equal((await pool()).hits, hits + 1, 'it was a pooled instance that failed');
      });

      test('another memory size finds no pooled instance at first, then joins the pool', async () => {
        await a.deploy({ name: 'big-1', memory_mb: 256 }, files('big'));
        await probe('big-1');
        assert.equal((await instances('big-1'))[0].prewarmed, false, 'no 256 MB instance was pooled yet');
        await until(async () => (await idle(256)) >= 1, REFILL_TIMEOUT_MS, 'a pooled 256 MB instance');
        await a.deploy({ name: 'big-2', memory_mb: 256 }, files('big'));
        await probe('big-2');
        assert.equal((await instances('big-2'))[0].prewarmed, true);
      });
    }
  });
}

describe('without a warm pool (AETHER_WARM_POOL_MB=0)', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: sandboxDrivers()[0], env: { AETHER_WARM_POOL_MB: '0' } });
  });
  after(() => a.stop());

  test('cold starts start instances as before, and the system shows no pool', async () => {
    assert.equal((await a.api('GET', '/api/system')).body.warm_pool, undefined);
    await a.deploy({ name: 'plain' }, files('plain'));
    const res = await a.invoke('plain');
    assert.equal(res.status, 200);
    const [inst] = (await a.api('GET', '/api/functions/plain/instances')).body;
    assert.equal(inst.prewarmed, false);
  });
});
