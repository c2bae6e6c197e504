/** Through the public API: what a function can't do, and what the user is told when a limit hits. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { sandboxDrivers, startAether, type Aether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

const PROBE = `
const net = require('net');
const fs = require('fs');
const tryConnect = (port, host) => new Promise((resolve) => {
  const s = net.connect({ port, host }, () => { s.destroy(); resolve('connected'); });
  s.on('error', (e) => resolve(e.code));
  s.setTimeout(1000, () => { s.destroy(); resolve('timeout'); });
});
const tryRead = (p) => { try { fs.readdirSync(p); return 'readable'; } catch (e) { return e.code; } };
exports.handler = async (event) => {
  if (event.path === '/oom') { const keep = []; for (;;) keep.push(Buffer.alloc(8 * 1024 * 1024, 1)); }
  if (event.path === '/log') { console.log('my secret is ' + process.env.API_KEY); return 'logged'; }
  const gw = JSON.parse(event.query.gw);
  return { statusCode: 200, body: JSON.stringify({
    gateway: await tryConnect(gw.port, gw.host),
    gatewayLoopback: await tryConnect(gw.port, '127.0.0.1'),
    dataDir: tryRead(event.query.data),
    uid: process.getuid(),
  }) };
};`;

for (const driver of sandboxDrivers()) {
  describe(`containment through the API on ${driver}`, () => {
    let a: Aether;
    before(async () => {
      a = await startAether({ isolation: driver });
      await a.deploy({ name: 'probe', memory_mb: 96, env_vars: { API_KEY: 'sk-live-1234567890' } }, { 'handler.js': PROBE });
    });
    after(() => a.stop());

    test('cannot reach the gateway or read the data dir, and runs unprivileged', async () => {
      const u = new URL(a.url);
      const gw = encodeURIComponent(JSON.stringify({ host: u.hostname, port: Number(u.port) }));
      const res = await a.invoke('probe', `/?gw=${gw}&data=${encodeURIComponent(a.dataDir)}`);
      assert.equal(res.status, 200);
      const out = await res.json();
      assert.notEqual(out.gateway, 'connected');
      assert.notEqual(out.gatewayLoopback, 'connected');
      assert.equal(out.dataDir, 'ENOENT');
      assert.notEqual(out.uid, 0);
    });

    test('exceeding memory_mb kills the instance: 502 saying so, and the next request works', async () => {
      const res = await a.invoke('probe', '/oom');
      assert.equal(res.status, 502);
      const err = (await res.json()).error;
      assert.match(err.message, /memory limit of 96 MB exceeded|heap out of memory/i);
      await until(
        async () =>
          (await a.api('GET', '/api/functions/probe/logs?stream=platform')).body.lines.some((l: any) => /oom|crashed/.test(l.event)),
        5000,
        'the OOM kill in the function log',
      );
      const u = new URL(a.url);
      const gw = encodeURIComponent(JSON.stringify({ host: u.hostname, port: Number(u.port) }));
      assert.equal((await a.invoke('probe', `/?gw=${gw}&data=/`)).status, 200);
    });

    test('env var values never reach the logs', async () => {
      assert.equal(await (await a.invoke('probe', '/log')).text(), 'logged');
      let lines: any[] = [];
      await until(
        async () => {
          lines = (await a.api('GET', '/api/functions/probe/logs?stream=stdout')).body.lines;
          return lines.some((l) => l.message.startsWith('my secret is'));
        },
        5000,
        'the line in the function log',
      );
      assert.ok(lines.some((l) => l.message === 'my secret is ****'));
      const all = JSON.stringify(lines) + a.logs.join('\n');
      assert.ok(!all.includes('sk-live-1234567890'));
    });
  });
}
