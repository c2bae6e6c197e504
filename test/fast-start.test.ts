/**
 * Fast starts end to end, on real sandboxes: a function's code prepared at deploy time (one bundle and
 * V8's code cache, adapters/isolation/fast-start.ts) is what its instances load, and they answer as the
 * plain start does; what cannot be bundled faithfully starts plainly and says why; instances share
 * nothing of a run; env and memory changes reach the next instances.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { appFiles } from '../bench/apps.ts';
import { type Aether, sandboxDrivers, startAether } from './helpers/aether.ts';
import { RUNNING_FILE } from './helpers/running-file.ts';
import { requireOrSkip } from './helpers/skip.ts';
import { until } from './helpers/wait.ts';

/** A function with its own modules, a JSON file, a package, and a file it reads next to itself. */
const MODULAR = {
  'handler.js': `
const greet = require('./lib/greet');
const pad = require('tiny-pad');
${RUNNING_FILE}
exports.handler = async () => ({
  statusCode: 200,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ greeting: pad(greet(process.env.WHO)), loadedFrom: runningFile(), stackSays: new Error().stack.split('\\n')[1].trim() }),
});`,
  'lib/greet.js': `const { word } = require('./words.json');
const template = require('fs').readFileSync(require('path').join(__dirname, 'template.txt'), 'utf8').trim();
module.exports = (who) => template.replace('WORD', word).replace('WHO', who);`,
  'lib/words.json': '{"word": "hello"}',
  'lib/template.txt': 'WORD, WHO!\n',
  'node_modules/tiny-pad/package.json': '{"name": "tiny-pad", "main": "pad.js"}',
  'node_modules/tiny-pad/pad.js': `module.exports = (s) => '[' + s + ']';`,
};

/**
 * Two requests that overlap, so that two instances start (concurrency 1); each says what its instance drew
 * at load. Each request holds its instance 3 s: long enough for the second instance to start on a loaded host.
 */
const RANDOM = {
  'handler.js': `
const crypto = require('crypto');
${RUNNING_FILE}
const drawn = { uuid: crypto.randomUUID(), random: Math.random(), loadedAt: Date.now() };
exports.handler = async (event, context) => {
  await new Promise((r) => setTimeout(r, 3000));
  return { statusCode: 200, headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...drawn, requestId: context.awsRequestId, bundled: runningFile().startsWith('/opt/aether/start/') }) };
};`,
};

for (const driver of sandboxDrivers()) {
  describe(`fast starts on ${driver}`, () => {
    let a: Aether | undefined;
    let why = '';
    before(async () => {
      a = await startAether({ isolation: driver }).catch((err: Error) => {
        why = `${driver} does not run here: ${err.message}`;
        return undefined;
      });
    });
    after(() => a?.stop());

    /** The function's start mode once deploy-time preparation is over. */
    async function settled(aether: Aether, name: string): Promise<{ mode: string; reason?: string }> {
      let start: { mode: string; reason?: string } | undefined;
      await until(
        async () => {
          start = (await aether.api('GET', `/api/functions/${name}`)).body.start;
          return start?.mode !== 'preparing';
        },
        30_000,
        `${name} to be prepared`,
        20,
      );
      return start!;
    }

    test('a function with its own modules, a package and files next to them starts from its bundle and answers as before', async (t) => {
      if (!requireOrSkip(t, a !== undefined, why)) return;
      await a!.deploy({ name: 'modular', env_vars: { WHO: 'world' } }, MODULAR);
      assert.deepEqual(await settled(a!, 'modular'), { mode: 'bundle' });
      const res = await a!.invoke('modular', '/');
      assert.equal(res.status, 200);
      const out = await res.json();
      assert.equal(out.greeting, '[hello, world!]');
      assert.equal(out.loadedFrom, '/opt/aether/start/bundle.js', 'the instance ran the bundle, not the files');
      assert.match(out.stackSays, / \(?\/code\/handler\.js:14:\d+\)?$/, "stack traces name the function's own file and line");
    });

    test('a real Express app starts from its bundle and serves its JSON routes', async (t) => {
      if (!requireOrSkip(t, a !== undefined, why)) return;
      await a!.deploy({ name: 'express-app' }, appFiles('express'));
      assert.deepEqual(await settled(a!, 'express-app'), { mode: 'bundle' });
      const res = await a!.invoke('express-app', '/echo', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"n": 42}',
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { got: { n: 42 } });
      const logs = await a!.api('GET', '/api/functions/express-app/logs?limit=1000');
      const lines = logs.body.lines.map((l: { line: string }) => l.line).join('\n');
      assert.doesNotMatch(lines, /rejected the code cache/, 'V8 took the code cache made for these flags');
    });

    test('a dynamic require in the function, or a native module, starts plainly and the status says why', async (t) => {
      if (!requireOrSkip(t, a !== undefined, why)) return;
      const dynamic = `const name = process.env.LIB || 'os'; const lib = require(name);
exports.handler = async () => ({ statusCode: 200, body: typeof lib.platform });`;
      await a!.deploy({ name: 'dynamic', env_vars: { LIB: 'os' } }, { 'handler.js': dynamic });
      const start = await settled(a!, 'dynamic');
      assert.equal(start.mode, 'plain');
      assert.match(start.reason!, /dynamic require\(\) in handler\.js/);
      const res = await a!.invoke('dynamic', '/');
      assert.equal(res.status, 200);
      assert.equal(await res.text(), 'function', 'the plain start still works');

      const native = { 'handler.js': HANDLER, 'node_modules/addon/build/Release/addon.node': 'not loaded by this handler' };
      await a!.deploy({ name: 'native' }, native);
      const nativeStart = await settled(a!, 'native');
      assert.equal(nativeStart.mode, 'plain');
      assert.match(nativeStart.reason!, /native module node_modules\/addon\/build\/Release\/addon\.node/);
      assert.equal((await a!.invoke('native', '/')).status, 200);
    });

    test('two instances of one prepared function draw their own random values and get their own request ids', async (t) => {
      if (!requireOrSkip(t, a !== undefined, why)) return;
      await a!.deploy({ name: 'random', concurrency: 1, max_instances: 2 }, RANDOM);
      assert.deepEqual(await settled(a!, 'random'), { mode: 'bundle' });
      const [one, two] = await Promise.all([a!.invoke('random', '/'), a!.invoke('random', '/')]);
      const [x, y] = [await one!.json(), await two!.json()];
      assert.ok(x.bundled && y.bundled, 'both ran the bundle');
      assert.notEqual(one!.headers.get('x-request-id'), two!.headers.get('x-request-id'));
      assert.notEqual(x.requestId, y.requestId);
      const instances = (await a!.api('GET', '/api/functions/random/instances')).body;
      assert.equal(instances.length, 2, 'the overlapping requests started two instances');
      assert.notEqual(x.uuid, y.uuid);
      assert.notEqual(x.random, y.random);
    });

    test('an env change reaches the next instance of a bundled function; a memory change prepares anew', async (t) => {
      if (!requireOrSkip(t, a !== undefined, why)) return;
      await a!.deploy({ name: 'env', env_vars: { WHO: 'first' } }, MODULAR);
      assert.deepEqual(await settled(a!, 'env'), { mode: 'bundle' });
      assert.equal((await (await a!.invoke('env', '/')).json()).greeting, '[hello, first!]');

      await a!.api('PATCH', '/api/functions/env', { env_vars: { WHO: 'second' } });
      assert.deepEqual(await settled(a!, 'env'), { mode: 'bundle' });
      assert.equal((await (await a!.invoke('env', '/')).json()).greeting, '[hello, second!]', 'nothing of the old env was kept');

      // The code cache is only valid for the V8 flags it was made with: the heap size follows memory_mb.
      const patched = await a!.api('PATCH', '/api/functions/env', { memory_mb: 192 });
      assert.equal(patched.body.start.mode, 'preparing', 'new flags, a new preparation');
      assert.deepEqual(await settled(a!, 'env'), { mode: 'bundle' });
      const out = await (await a!.invoke('env', '/')).json();
      assert.equal(out.greeting, '[hello, second!]');
      const logs = await a!.api('GET', '/api/functions/env/logs?limit=1000');
      assert.doesNotMatch(logs.body.lines.map((l: { line: string }) => l.line).join('\n'), /rejected the code cache/);
    });
  });
}

test('with AETHER_FAST_START=0 functions start plainly, and their status says so', async (t) => {
  const driver = sandboxDrivers()[0]!;
  const a = await startAether({ isolation: driver, env: { AETHER_FAST_START: '0' } }).catch((err: Error) => {
    requireOrSkip(t, false, `${driver} does not run here: ${err.message}`);
    return undefined;
  });
  if (!a) return;
  try {
    await a.deploy({ name: 'plain', env_vars: { WHO: 'world' } }, MODULAR);
    let start: { mode: string; reason?: string } | undefined;
    await until(
      async () => (start = (await a.api('GET', '/api/functions/plain')).body.start)?.mode !== 'preparing',
      30_000,
      'its start mode',
      20,
    );
    assert.deepEqual(start, { mode: 'plain', reason: 'fast starts are off (AETHER_FAST_START=0)' });
    const out = await (await a.invoke('plain', '/')).json();
    assert.equal(out.greeting, '[hello, world!]');
    assert.doesNotMatch(out.loadedFrom, /\/opt\/aether\/start\//, 'loaded from the code as uploaded');
  } finally {
    await a.stop();
  }
});

const HANDLER = `exports.handler = async () => ({ statusCode: 200, body: 'ok' });`;
