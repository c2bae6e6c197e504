import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { HANDLER_CJS, makeZip, startAether, TOKEN, type Aether } from './helpers/aether.ts';

describe('management API', () => {
  let a: Aether;
  before(async () => {
    a = await startAether();
  });
  after(() => a.stop());

  test('healthz answers without a token and tells nothing about the host; /api/system does, with the token', async () => {
    const res = await fetch(`${a.url}/healthz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: 'ok' });
    assert.equal((await fetch(`${a.url}/api/system`)).status, 401);
    const system = await a.api('GET', '/api/system');
    assert.equal(system.status, 200);
    assert.equal(system.body.role, 'serve');
    assert.equal(system.body.node, process.version);
    assert.ok(['gvisor', 'bwrap', 'qemu'].includes(system.body.isolation.driver));
    assert.match(system.body.isolation.reason, new RegExp(`^${system.body.isolation.driver}: `));
    assert.ok(system.body.capacity.cpus > 0 && system.body.capacity.memory_mb > 0);
  });

  test('/api requires the bearer token', async () => {
    const none = await fetch(`${a.url}/api/functions`);
    assert.equal(none.status, 401);
    assert.equal((await none.json()).error.code, 'unauthorized');
    const wrong = await a.api('GET', '/api/functions', undefined, { authorization: 'Bearer nope' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.message, 'invalid token');
    const right = await a.api('GET', '/api/functions');
    assert.equal(right.status, 200);
  });

  test('create returns the full record with defaults and masks env values', async () => {
    const res = await a.api('POST', '/api/functions', { name: 'rec', runtime: 'node', env_vars: { SECRET: 'hunter22' } });
    assert.equal(res.status, 201);
    const fn = res.body;
    assert.match(fn.id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(
      {
        name: fn.name,
        runtime: fn.runtime,
        memory_mb: fn.memory_mb,
        vcpu: fn.vcpu,
        port: fn.port,
        timeout_ms: fn.timeout_ms,
        concurrency: fn.concurrency,
        min_instances: fn.min_instances,
        max_instances: fn.max_instances,
        idle_timeout_s: fn.idle_timeout_s,
        entrypoint: fn.entrypoint,
      },
      {
        name: 'rec',
        runtime: 'node',
        memory_mb: 128,
        vcpu: 1,
        port: 3000,
        timeout_ms: 30000,
        concurrency: 10,
        min_instances: 0,
        max_instances: 10,
        idle_timeout_s: 300,
        entrypoint: null,
      },
    );
    assert.deepEqual(fn.env_vars, { SECRET: '********' });
    assert.ok(fn.created_at && fn.updated_at);
    const list = await a.api('GET', '/api/functions');
    assert.ok(!JSON.stringify(list.body).includes('hunter22'));
    const byName = await a.api('GET', '/api/functions/rec');
    assert.equal(byName.body.id, fn.id);
  });

  test('validation errors are 400 with a message naming the field', async () => {
    const cases: [unknown, RegExp][] = [
      [{ name: 'Bad_Name', runtime: 'node' }, /name/],
      [{ name: 'ok', runtime: 'cobol' }, /runtime/],
      [{ runtime: 'node' }, /name/],
      [{ name: 'ok', runtime: 'node', memory_mb: 1 }, /memory_mb/],
      [{ name: 'ok', runtime: 'node', env_vars: { 'BAD-NAME': 'x' } }, /env_vars/],
      [{ name: 'ok', runtime: 'node', env_vars: { PORT: '1' } }, /reserved/],
      [{ name: 'ok', runtime: 'node', min_instances: 5, max_instances: 2 }, /min_instances/],
      [{ name: 'ok', runtime: 'node', entrypoint: '../x.js' }, /entrypoint/],
      [{ name: 'ok', runtime: 'node', surprise: 1 }, /surprise|unrecognized/i],
    ];
    for (const [body, pattern] of cases) {
      const res = await a.api('POST', '/api/functions', body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(res.body.error.code, 'validation_failed');
      assert.match(res.body.error.message, pattern);
    }
    const broken = await fetch(`${a.url}/api/functions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: '{"name":',
    });
    assert.equal(broken.status, 400);
    assert.ok((await broken.json()).error.message);
  });

  test('duplicate names are 409, unknown ids 404', async () => {
    await a.api('POST', '/api/functions', { name: 'dup', runtime: 'node' });
    const again = await a.api('POST', '/api/functions', { name: 'dup', runtime: 'node' });
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, 'conflict');
    const missing = await a.api('GET', '/api/functions/nope');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'not_found');
    const inv = await a.invoke('nope');
    assert.equal(inv.status, 404);
  });

  test('PUT replaces, PATCH merges, and both bump the version', async () => {
    const fn = (await a.api('POST', '/api/functions', { name: 'chg', runtime: 'node', memory_mb: 256, timeout_ms: 5000 })).body;
    const patched = await a.api('PATCH', `/api/functions/${fn.id}`, { timeout_ms: 7000 });
    assert.equal(patched.status, 200);
    assert.equal(patched.body.memory_mb, 256);
    assert.equal(patched.body.timeout_ms, 7000);
    assert.equal(patched.body.version, fn.version + 1);
    const replaced = await a.api('PUT', `/api/functions/chg`, { runtime: 'node', concurrency: 3 });
    assert.equal(replaced.status, 200);
    assert.equal(replaced.body.memory_mb, 128);
    assert.equal(replaced.body.concurrency, 3);
    assert.equal(replaced.body.version, fn.version + 2);
    const bad = await a.api('PATCH', `/api/functions/chg`, { concurrency: 0 });
    assert.equal(bad.status, 400);
    const taken = await a.api('PATCH', `/api/functions/chg`, { name: 'dup' });
    assert.equal(taken.status, 409);
  });

  test('upload answers with hash, size and version; bad uploads are rejected and lose nothing', async () => {
    await a.api('POST', '/api/functions', { name: 'up', runtime: 'node' });
    const ok = await a.upload('up', { 'handler.js': HANDLER_CJS });
    assert.equal(ok.status, 200);
    assert.match(ok.body.code_hash, /^[0-9a-f]{64}$/);
    assert.ok(ok.body.code_size > 0);
    assert.equal(ok.body.version, 1);
    assert.equal((await a.invoke('up', '/x')).status, 200);

    const garbage = await fetch(`${a.url}/api/functions/up/code`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/zip' },
      body: 'not a zip',
    });
    assert.equal(garbage.status, 400);
    assert.ok((await garbage.json()).error.message);
    const wrongType = await fetch(`${a.url}/api/functions/up/code`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/plain' },
      body: 'x',
    });
    assert.equal(wrongType.status, 415);

    const form = new FormData();
    form.set('file', new Blob([makeZip({ 'handler.js': HANDLER_CJS.replace('event.path', '"v2"') })]), 'code.zip');
    const multi = await fetch(`${a.url}/api/functions/up/code`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
      body: form,
    });
    assert.equal(multi.status, 200);
    assert.equal((await multi.json()).version, 2);
    assert.equal((await (await a.invoke('up', '/x')).json()).path, 'v2');

    const after = await a.api('GET', '/api/functions/up');
    assert.equal(after.body.version, 2);
  });

  test('an archive whose entry point cannot resolve is a 400 naming what it contains; the old code keeps serving', async () => {
    await a.api('POST', '/api/functions', { name: 'pack', runtime: 'node' });
    const none = await a.upload('pack', { 'app/handler.js': HANDLER_CJS });
    assert.equal(none.status, 400);
    assert.equal(none.body.error.code, 'no_entry_point');
    assert.match(none.body.error.message, /the archive contains app\/.*zip -r .*"entrypoint" to app\/handler\.js/);
    assert.equal((await a.api('GET', '/api/functions/pack')).body.code_hash, null, 'a function without code still has none');

    assert.equal((await a.upload('pack', { 'handler.js': HANDLER_CJS })).status, 200);
    const v1 = (await a.api('GET', '/api/functions/pack')).body;
    const bad = await a.upload('pack', { 'lib/util.js': '', 'README.md': '' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /the archive contains README\.md, lib\//);
    const after = (await a.api('GET', '/api/functions/pack')).body;
    assert.deepEqual([after.code_hash, after.version], [v1.code_hash, v1.version]);
    assert.equal((await (await a.invoke('pack', '/still')).json()).path, '/still');

    // The check follows the function's entrypoint.
    assert.equal((await a.api('PATCH', '/api/functions/pack', { entrypoint: 'app/handler.js' })).status, 200);
    assert.equal((await a.upload('pack', { 'app/handler.js': HANDLER_CJS })).status, 200);
    assert.equal((await a.invoke('pack', '/nested')).status, 200);
  });

  test('delete stops instances, removes the function and answers 204', async () => {
    await a.api('POST', '/api/functions', { name: 'del', runtime: 'node' });
    await a.upload('del', { 'handler.js': HANDLER_CJS });
    assert.equal((await a.invoke('del')).status, 200);
    assert.equal((await a.api('GET', '/api/functions/del/instances')).body.length, 1);
    const res = await fetch(`${a.url}/api/functions/del`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 204);
    assert.equal((await a.api('GET', '/api/functions/del')).status, 404);
    assert.equal((await a.invoke('del')).status, 404);
  });

  test('invoking a function without code is a clear 409', async () => {
    await a.api('POST', '/api/functions', { name: 'nocode', runtime: 'node' });
    const res = await a.invoke('nocode');
    assert.equal(res.status, 409);
    assert.match((await res.json()).error.message, /no code/);
  });

  test('instances and invocations are listed', async () => {
    await a.api('POST', '/api/functions', { name: 'obs', runtime: 'node' });
    await a.upload('obs', { 'handler.js': HANDLER_CJS });
    for (let i = 0; i < 3; i++) assert.equal((await a.invoke('obs')).status, 200);
    const inst = (await a.api('GET', '/api/functions/obs/instances')).body;
    assert.equal(inst.length, 1);
    assert.equal(inst[0].state, 'ready');
    assert.equal(inst[0].served, 3);
    assert.equal(inst[0].in_flight, 0);
    const inv = (await a.api('GET', '/api/functions/obs/invocations')).body;
    assert.equal(inv.length, 3);
    assert.deepEqual(
      inv.map((i: any) => i.cold_start),
      [false, false, true],
    );
    assert.ok(inv.every((i: any) => i.status === 200 && i.instance_id === inst[0].id && typeof i.duration_ms === 'number'));
  });
});
