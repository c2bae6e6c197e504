/** kill -9 at any moment loses no acknowledged function or code. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { HANDLER_CJS, startAether } from './helpers/aether.ts';

test('after kill -9 every acknowledged function and upload is there and serves', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-durable-'));
  try {
    const first = await startAether({ dataDir });
    const acknowledged: string[] = [];
    // Creates and uploads race with the kill: whatever was acknowledged must survive.
    const writer = (async () => {
      for (let i = 0; ; i++) {
        try {
          const res = await first.api('POST', '/api/functions', { name: `f${i}`, runtime: 'node', env_vars: { N: String(i) } });
          if (res.status !== 201) return;
          const up = await first.upload(`f${i}`, { 'handler.js': HANDLER_CJS.replace('event.path', `"f${i}"`) });
          if (up.status !== 200) return;
          acknowledged.push(`f${i}`);
        } catch {
          return; // the server died mid-request
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 1500));
    await first.api('POST', '/api/functions', { name: 'running', runtime: 'node' });
    await first.upload('running', { 'handler.js': HANDLER_CJS });
    assert.equal((await first.invoke('running', '/')).status, 200); // an instance is up when the server dies
    await first.kill('SIGKILL');
    await writer;
    assert.ok(acknowledged.length >= 3, `only ${acknowledged.length} uploads before the kill`);

    const second = await startAether({ dataDir });
    try {
      assert.ok(
        second.logs.some((l) => /removed [1-9]\d* instances left by a previous run/.test(l)),
        'leftovers of the killed server were cleaned',
      );
      assert.equal((await second.invoke('running', '/')).status, 200);
      const names = new Set(((await second.api('GET', '/api/functions')).body as any[]).map((f) => f.name));
      for (const name of acknowledged) assert.ok(names.has(name), `${name} was lost`);
      for (const name of [acknowledged[0]!, acknowledged.at(-1)!]) {
        const res = await second.invoke(name, '/');
        assert.equal(res.status, 200);
        assert.equal((await res.json()).path, name);
      }
    } finally {
      await second.stop();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
