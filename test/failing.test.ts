/**
 * Functions that cannot start, on one node with real sandboxes: the `failing` state in the API, the
 * fast 503 during the backoff instead of a sandbox per request, one probe start after it, and a new
 * deploy (code or config) starting from scratch. The rules themselves: start-failures.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { HANDLER_CJS, startAether, type Aether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

const BACKOFF_MS = 1500;
const THROWS = `throw new Error('boom at import');`;

describe('functions that cannot start', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({
      isolation: 'bwrap',
      env: { AETHER_START_BACKOFF_MS: String(BACKOFF_MS), AETHER_START_BACKOFF_MAX_MS: '5000', AETHER_START_TIMEOUT_MS: '1500' },
    });
  });
  after(() => a.stop());

  const failedStarts = (name: string) =>
    a.logs.filter((l) => l.includes('"instance failed to start"') && l.includes(`"function":"${name}"`)).length;
  const fnView = async (name: string) => (await a.api('GET', `/api/functions/${name}`)).body;
  const invoke = async (name: string) => {
    const t0 = Date.now();
    const res = await a.invoke(name);
    const body = await res.text();
    return { status: res.status, ms: Date.now() - t0, body: body.startsWith('{') ? JSON.parse(body) : body };
  };

  test('an entry that throws at import: failing, fast 503s with the last error, one probe after the backoff', async () => {
    await a.deploy({ name: 'throws' }, { 'handler.js': THROWS });
    assert.equal((await fnView('throws')).status, 'ok');

    const first = await invoke('throws');
    assert.equal(first.status, 502);
    assert.equal(first.body.error.code, 'start_failed');
    assert.match(first.body.error.message, /boom at import/);
    const view = await fnView('throws');
    assert.equal(view.status, 'failing');
    assert.match(view.last_error, /boom at import/);
    assert.ok(Date.parse(view.failing_since) <= Date.now());
    // The list shows it too.
    assert.equal((await a.api('GET', '/api/functions')).body.find((f: any) => f.name === 'throws').status, 'failing');

    // During the backoff: no new sandbox, a fast answer saying why.
    const burst = await Promise.all(Array.from({ length: 10 }, () => invoke('throws')));
    for (const r of burst) {
      assert.equal(r.status, 503);
      assert.equal(r.body.error.code, 'function_failing');
      assert.match(r.body.error.message, /its last start failed, next attempt in \d+ s: .*boom at import/);
    }
    assert.ok(Math.max(...burst.map((r) => r.ms)) < first.ms, 'faster than a start attempt');

    // After the backoff one request tries again (and fails again): the delay doubles.
    await until(async () => (await invoke('throws')).status === 502, 5000, 'the probe after the backoff');
    // Output arrives through a pipe: wait for the log line, then check that the burst started nothing.
    await until(async () => failedStarts('throws') >= 2, 5000, 'the log of the second failed start');
    assert.equal(failedStarts('throws'), 2, 'one start, one probe: none for the burst');
    const again = await invoke('throws');
    assert.equal(again.status, 503);
    assert.match(again.body.error.message, /its last 2 starts failed/);
    assert.equal((await fnView('throws')).failing_since, view.failing_since);
    const records = (await a.api('GET', '/api/functions/throws/invocations?status=error')).body;
    assert.ok(records.some((r: any) => r.status === 503 && /function throws is failing/.test(r.error) && r.instance_id === null));
    assert.ok(records.some((r: any) => r.status === 502 && r.cold_start && r.instance_id));

    // New code: a new version starts from scratch, at once.
    await a.upload('throws', { 'handler.js': HANDLER_CJS });
    const fixed = await fnView('throws');
    assert.deepEqual([fixed.status, fixed.last_error, fixed.failing_since], ['ok', null, null]);
    assert.equal((await invoke('throws')).status, 200);
  });

  test('a config change resets it too; a probe that succeeds clears it', async () => {
    // Fails to start until a moment after it was deployed.
    const until2s = `if (Date.now() < ${Date.now() + 2000}) throw new Error('not yet'); ${HANDLER_CJS}`;
    await a.deploy({ name: 'later' }, { 'handler.js': until2s });
    assert.equal((await invoke('later')).status, 502);
    assert.equal((await invoke('later')).status, 503);
    assert.equal((await fnView('later')).status, 'failing');

    const patched = await a.api('PATCH', '/api/functions/later', { env_vars: { X: '1' } });
    assert.equal(patched.body.status, 'ok', 'a config change is a new version');
    const tried = await invoke('later');
    assert.notEqual(tried.status, 503, 'the new version gets a start attempt at once');

    await until(async () => (await invoke('later')).status === 200, 10_000, 'a probe to succeed');
    const view = await fnView('later');
    assert.deepEqual([view.status, view.last_error, view.failing_since], ['ok', null, null]);
    assert.equal((await invoke('later')).status, 200);
  });

  test('a server that never listens fails its start by timeout, and is failing', async () => {
    await a.deploy({ name: 'silent' }, { 'handler.js': `setInterval(() => {}, 1000);` });
    const res = await invoke('silent');
    assert.equal(res.status, 502);
    assert.equal(res.body.error.code, 'start_failed');
    const view = await fnView('silent');
    assert.equal(view.status, 'failing');
    assert.match(view.last_error, /did not become ready within 1500 ms/);
    const fast = await invoke('silent');
    assert.equal(fast.status, 503);
    assert.match(fast.body.error.message, /did not become ready/);
  });

  test('an entry point changed in the config to a file the code lacks is failing with the reason', async () => {
    await a.deploy({ name: 'noentry' }, { 'handler.js': HANDLER_CJS });
    assert.equal((await a.api('PATCH', '/api/functions/noentry', { entrypoint: 'src/missing.js' })).status, 200);
    assert.equal((await invoke('noentry')).status, 502);
    const view = await fnView('noentry');
    assert.equal(view.status, 'failing');
    assert.match(view.last_error, /entry module not found: src\/missing\.js/);
  });
});
