/** The function code contract, server mode and handler mode, CommonJS and ESM, on each sandbox driver. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { sandboxDrivers, startAether, type Aether } from './helpers/aether.ts';

const DEP = {
  'node_modules/shout/package.json': '{"name":"shout","main":"index.js"}',
  'node_modules/shout/index.js': 'module.exports = (s) => s.toUpperCase() + "!";',
};

const cases: { name: string; files: Record<string, string>; spec?: Record<string, unknown> }[] = [
  {
    name: 'server-cjs',
    files: {
      'handler.js': `require('http').createServer((req, res) => { let b = ''; req.on('data', (c) => (b += c)); req.on('end', () => { res.writeHead(201, { 'x-fn': 'server-cjs', 'content-type': 'application/json' }); res.end(JSON.stringify({ method: req.method, url: req.url, hdr: req.headers['x-test'], body: b, greet: process.env.GREETING })); }); }).listen(process.env.PORT || 3000);`,
    },
  },
  {
    name: 'server-esm',
    files: {
      'package.json': '{"type":"module","main":"app.js"}',
      'app.js': `import http from 'node:http'; http.createServer((req, res) => { let b = ''; req.on('data', (c) => (b += c)); req.on('end', () => { res.writeHead(201, { 'x-fn': 'server-esm', 'content-type': 'application/json' }); res.end(JSON.stringify({ method: req.method, url: req.url, hdr: req.headers['x-test'], body: b, greet: process.env.GREETING })); }); }).listen(Number(process.env.PORT));`,
    },
  },
  {
    name: 'handler-cjs',
    files: {
      ...DEP,
      'index.js': `const shout = require('shout'); exports.handler = async (event, context) => ({ statusCode: 201, headers: { 'x-fn': 'handler-cjs', 'content-type': 'application/json' }, body: JSON.stringify({ method: event.method, url: event.path + (event.rawQuery ? '?' + event.rawQuery : ''), hdr: event.headers['x-test'], body: event.body, greet: process.env.GREETING, shout: shout('hi'), rid: context.requestId }) });`,
    },
  },
  {
    name: 'handler-esm',
    files: {
      ...DEP,
      'lib/main.mjs': `import shout from 'shout'; export async function handler(event) { return { statusCode: 201, headers: { 'x-fn': 'handler-esm', 'content-type': 'application/json' }, body: JSON.stringify({ method: event.method, url: event.path + (event.rawQuery ? '?' + event.rawQuery : ''), hdr: event.headers['x-test'], body: event.body, greet: process.env.GREETING, shout: shout('hi') }) }; }`,
    },
    spec: { entrypoint: 'lib/main.mjs' },
  },
  {
    name: 'fetch-esm',
    files: {
      'handler.mjs': `export default { async fetch(request) { const u = new URL(request.url); return new Response(JSON.stringify({ method: request.method, url: u.pathname + u.search, hdr: request.headers.get('x-test'), body: await request.text(), greet: process.env.GREETING }), { status: 201, headers: { 'x-fn': 'fetch-esm', 'content-type': 'application/json' } }); } };`,
    },
  },
];

for (const driver of sandboxDrivers()) {
  describe(`code contract on ${driver}`, () => {
    let a: Aether;
    before(async () => {
      a = await startAether({ isolation: driver });
    });
    after(() => a.stop());

    for (const c of cases) {
      test(c.name, async () => {
        await a.deploy({ name: c.name, env_vars: { GREETING: 'hello from env' }, ...c.spec }, c.files);
        const res = await a.invoke(c.name, '/some/path?x=1&y=two', {
          method: 'POST',
          headers: { 'x-test': 'yes', 'content-type': 'text/plain' },
          body: 'payload',
        });
        assert.equal(res.status, 201);
        assert.equal(res.headers.get('x-fn'), c.name);
        const out = await res.json();
        assert.equal(out.method, 'POST');
        assert.equal(out.url, '/some/path?x=1&y=two');
        assert.equal(out.hdr, 'yes');
        assert.equal(out.body, 'payload');
        assert.equal(out.greet, 'hello from env');
        if (c.name.startsWith('handler')) assert.equal(out.shout, 'HI!');
        const get = await a.invoke(c.name, '');
        assert.equal(get.status, 201);
        assert.equal((await get.json()).method, 'GET');
      });
    }

    test('code without an entry point is refused at upload with a clear 400', async () => {
      await a.api('POST', '/api/functions', { name: 'noentry', runtime: 'node' });
      const up = await a.upload('noentry', { 'other.js': 'module.exports = 1' });
      assert.equal(up.status, 400);
      assert.equal(up.body.error.code, 'no_entry_point');
      assert.match(up.body.error.message, /no entry point.*the archive contains other\.js/);
    });
  });
}
