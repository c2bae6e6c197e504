/**
 * Nothing accepted is lost: kill -9 of the single-node server while async invocations are queued,
 * running and waiting for a retry, then a restart on the same data dir, and every accepted event runs
 * (or is dead-lettered). Duplicates are allowed, losses are not.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type Aether, sandboxDrivers, startAether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

const FAIL = `exports.handler = async (event) => { throw new TypeError('always fails: ' + JSON.stringify(event)); };`;
const SLOW = `exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 1000)); return 'slept'; };`;

type Rec = { request_id: string; invocation_type: string; attempts: number; error: string | null };

async function records(a: Aether, fn: string): Promise<Rec[]> {
  return (await a.api('GET', `/api/functions/${fn}/invocations?limit=1000`)).body;
}

async function attemptsOf(a: Aether, fn: string, requestId: string): Promise<Rec[]> {
  return (await records(a, fn)).filter((r) => r.request_id === requestId).reverse();
}

async function postEvent(a: Aether, fn: string, p: string, init: RequestInit = {}): Promise<Response> {
  return a.invoke(fn, p, { method: 'POST', ...init, headers: { 'x-aether-invocation-type': 'Event', ...(init.headers ?? {}) } });
}

describe('async invocations survive kill -9 of the server', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-async-kill-'));
  const env = { AETHER_ASYNC_CONCURRENCY: '2', AETHER_ASYNC_RETRY_BASE_MS: '2000' };
  let a: Aether | undefined;
  after(async () => {
    await a?.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  test('queued, running and retrying events all run (or are dead-lettered) after a restart on the same data dir', async () => {
    a = await startAether({ isolation: sandboxDrivers()[0], dataDir, env });
    await a.deploy({ name: 'slow', concurrency: 1, max_instances: 4 }, { 'handler.js': SLOW });
    await a.deploy({ name: 'fail', max_retries: 2 }, { 'handler.js': FAIL });

    // A failing event whose first attempt is recorded: its retry is due after the restart.
    const failing = (await (await postEvent(a, 'fail', '/', { body: '{}' })).json()).request_id;
    await until(async () => (await attemptsOf(a!, 'fail', failing)).length === 1, 15_000, 'the first failed attempt');

    const accepted: string[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await postEvent(a, 'slow', '/', { body: `{"i":${i}}` });
      assert.equal(res.status, 202);
      accepted.push((await res.json()).request_id);
    }
    // Two are running (the bound), four are queued: now the server dies.
    await until(
      async () =>
        (await a!.api('GET', '/api/functions/slow/instances')).body.filter((i: { in_flight: number }) => i.in_flight > 0).length === 2,
      15_000,
      'two async attempts running',
    );
    await a.kill('SIGKILL');

    a = await startAether({ isolation: sandboxDrivers()[0], dataDir, env });
    await until(
      async () => {
        const ok = new Set(
          (await records(a!, 'slow')).filter((r) => r.invocation_type === 'Event' && r.error === null).map((r) => r.request_id),
        );
        return accepted.every((id) => ok.has(id));
      },
      30_000,
      'every accepted event to run',
    );
    await until(async () => (await a!.api('GET', '/api/functions/fail/dead-letters')).body.length === 1, 20_000, 'the dead letter');
    const [letter] = (await a.api('GET', '/api/functions/fail/dead-letters')).body;
    assert.equal(letter.request_id, failing);
    assert.equal(letter.attempts, 3, 'the attempt count survived the crash');
  });
});
