/**
 * What a hostile client or tenant must not be able to do to others, through the public API of a real
 * server with real sandboxes: hold a function's slots with slow request bodies, have requests routed
 * to an instance the host has killed, or take the server's file descriptors.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ROOT, sandboxDrivers, startAether, type Aether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

/** Echoes how many body bytes it got, in server mode and in handler mode. */
const SERVER_ECHO = `require('http').createServer((req, res) => {
  let n = 0; req.on('data', (c) => (n += c.length)); req.on('end', () => res.end(String(n)));
}).listen(process.env.PORT);`;
const HANDLER_ECHO = `exports.handler = async (event) => String(Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8').length);`;

/** A raw HTTP client: sends the head and `sent` of the body, then one more byte every `dripMs` (if given), never all of it. */
function slowClient(url: string, path: string, contentLength: number, sent: string, dripMs?: number) {
  const u = new URL(url);
  const socket = net.connect(Number(u.port), u.hostname);
  let answer = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => (answer += d));
  socket.on('error', () => {});
  const drip = dripMs ? setInterval(() => socket.write('x'), dripMs) : undefined;
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  void closed.then(() => clearInterval(drip));
  socket.write(`POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: ${contentLength}\r\n\r\n${sent}`);
  return {
    socket,
    /** The status line's code once the server answered, after the connection closed. */
    status: async () => {
      await closed;
      return Number(/^HTTP\/1\.1 (\d+)/.exec(answer)?.[1] ?? 0);
    },
    answer: () => answer,
  };
}

const driver = sandboxDrivers()[0]!;

describe(`slow request bodies do not hold a function's slots (${driver})`, () => {
  let a: Aether;
  before(async () => {
    a = await startAether({
      isolation: driver,
      env: { AETHER_BODY_TIMEOUT_MS: '3000', AETHER_BODY_IDLE_TIMEOUT_MS: '1500', AETHER_BODY_BUFFER_KB: '4' },
    });
    const limits = { concurrency: 4, max_instances: 2, memory_mb: 96 };
    await a.deploy({ name: 'server-echo', ...limits }, { 'handler.js': SERVER_ECHO });
    await a.deploy({ name: 'handler-echo', ...limits }, { 'handler.js': HANDLER_ECHO });
  });
  after(() => a?.stop());

  for (const fn of ['server-echo', 'handler-echo']) {
    test(`${fn}: twenty clients dripping their bodies leave a normal request served`, { timeout: 30_000 }, async () => {
      assert.equal(await (await a.invoke(fn, '/', { method: 'POST', body: 'warm' })).text(), '4');
      const slow = Array.from({ length: 20 }, () => slowClient(a.url, `/functions/${fn}/`, 100, 'x', 250));
      await new Promise((r) => setTimeout(r, 300)); // all twenty are waiting for their bodies now
      const t0 = Date.now();
      const res = await a.invoke(fn, '/', { method: 'POST', body: 'hello', signal: AbortSignal.timeout(5000) });
      assert.equal(await res.text(), '5');
      assert.ok(Date.now() - t0 < 1500, `normal request took ${Date.now() - t0} ms`);
      // The slow ones are told why, once their body timeout passes.
      const statuses = await Promise.all(slow.map((c) => c.status()));
      assert.deepEqual(new Set(statuses), new Set([408]));
      assert.match(slow[0]!.answer(), /"code":"body_timeout"/);
    });

    test(`${fn}: a large body that stalls is cut off when idle; a flowing one arrives whole`, { timeout: 30_000 }, async () => {
      const stalled = slowClient(a.url, `/functions/${fn}/`, 64 * 1024, 'y'.repeat(8 * 1024));
      const t0 = Date.now();
      assert.equal(await stalled.status(), 408);
      assert.ok(Date.now() - t0 < 5000, `stalled body cut after ${Date.now() - t0} ms`);
      const big = 'z'.repeat(64 * 1024);
      assert.equal(await (await a.invoke(fn, '/', { method: 'POST', body: big })).text(), String(big.length));
    });
  }
});

/** On /arm, probes the metadata service with a wrong token a moment later: the host kills the instance for it. */
const PROBER = `const probe = () => new Promise((resolve) => {
  const headers = { authorization: 'Bearer replayed' };
  const req = require('http').get({ socketPath: '/run/aether/mmds.sock', path: '/v1/config', headers }, (res) => { res.resume(); res.on('end', resolve); });
  req.on('error', resolve);
});
exports.handler = async (event) => {
  if (event.path === '/arm') { setTimeout(probe, 300); return 'armed'; }
  if (event.path === '/wait') { await new Promise((r) => setTimeout(r, 10_000)); return 'survived'; }
  return 'ok';
};`;

for (const driver of sandboxDrivers()) {
  describe(`an instance the host kills takes no more requests (${driver})`, () => {
    let a: Aether;
    before(async () => {
      a = await startAether({ isolation: driver });
      await a.deploy({ name: 'prober', memory_mb: 96, concurrency: 4, max_instances: 1 }, { 'handler.js': PROBER });
    });
    after(() => a?.stop());

    test('requests after the kill go to a new instance; the one it killed says why', { timeout: 30_000 }, async () => {
      assert.equal(await (await a.invoke('prober', '/')).text(), 'ok');
      const inFlight = a.invoke('prober', '/wait');
      assert.equal(await (await a.invoke('prober', '/arm')).text(), 'armed');
      const failures: string[] = [];
      let served = 0;
      for (const end = Date.now() + 2500; Date.now() < end; ) {
        const res = await a.invoke('prober', '/');
        if (res.status === 200) served++;
        else failures.push(`${res.status} ${await res.text()}`);
      }
      const killed = await inFlight;
      assert.equal(killed.status, 502);
      assert.match((await killed.json()).error.message, /metadata request refused: wrong token/);
      // At most the one request that was in flight at the moment of the kill fails, and it says why.
      assert.ok(failures.length <= 1, failures.join('\n'));
      for (const f of failures) assert.match(f, /^502 .*metadata request refused: wrong token/);
      assert.ok(served > 0);
    });
  });
}

/** On /flood, opens connections to its own agent and metadata sockets as fast as it can, and keeps them. */
const FLOODER = `const net = require('net');
let open = 0, connected = 0, failed = 0, flooding = false;
const flood = (path) => {
  const s = net.connect(path);
  s.once('connect', () => { open++; connected++; setImmediate(flood, path); });
  s.once('error', () => { failed++; setTimeout(flood, 5, path); });
  s.once('close', () => { open--; });
};
exports.handler = async (event) => {
  if (event.path === '/flood' && !flooding) {
    flooding = true;
    setTimeout(() => { for (let i = 0; i < 8; i++) flood(i % 2 ? '/run/aether/agent.sock' : '/run/aether/mmds.sock'); }, 50);
    setTimeout(() => console.log(\`flood: \${connected} connected, \${open} open, \${failed} failed\`), 2000);
  }
  await new Promise((r) => setTimeout(r, 500)); // concurrency 1: the other /flood goes to the other instance
  return 'flooding';
};`;

/** How many more files the function can open (up to 5000), and what stopped it. */
const LIMITS = `exports.handler = async () => {
  const fs = require('fs');
  const fds = [];
  let stop = 'none';
  try { while (fds.length < 5000) fds.push(fs.openSync('/dev/null', 'r')); } catch (e) { stop = e.code; }
  for (const fd of fds) fs.closeSync(fd);
  return { statusCode: 200, body: JSON.stringify({ opened: fds.length, stop }) };
};`;

const openFds = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

for (const driver of sandboxDrivers()) {
  describe(`a tenant flooding its host sockets cannot take the server's file descriptors (${driver})`, () => {
    let a: Aether;
    before(async () => {
      a = await startAether({ isolation: driver, env: { AETHER_INSTANCE_OPEN_FILES: '512' } });
      await a.deploy({ name: 'victim', memory_mb: 96 }, { 'handler.js': HANDLER_ECHO });
      await a.deploy({ name: 'flooder', memory_mb: 96, concurrency: 1, min_instances: 2, max_instances: 2 }, { 'handler.js': FLOODER });
    });
    after(() => a?.stop());

    test('an instance can hold at most AETHER_INSTANCE_OPEN_FILES descriptors', async () => {
      await a.deploy({ name: 'limits', memory_mb: 96 }, { 'handler.js': LIMITS });
      const { opened, stop } = await (await a.invoke('limits')).json();
      assert.equal(stop, 'EMFILE');
      assert.ok(opened > 400 && opened < 512, `opened ${opened} files`); // node itself holds a few
    });

    test('other tenants keep being served and can upload while two instances flood', { timeout: 60_000 }, async () => {
      assert.equal(await (await a.invoke('victim', '/', { method: 'POST', body: 'warm' })).text(), '4');
      await until(
        async () =>
          (await a.api('GET', '/api/functions/flooder/instances')).body.filter((i: { state: string }) => i.state === 'ready').length === 2,
        20_000,
        'two flooder instances',
      );
      const before = openFds(a.proc.pid!);
      const started = await Promise.all([a.invoke('flooder', '/flood'), a.invoke('flooder', '/flood')]);
      for (const res of started) assert.equal(res.status, 200);
      // Let the flood run long enough to have taken every descriptor it could.
      let peak = before;
      for (const end = Date.now() + 4000; Date.now() < end; ) {
        peak = Math.max(peak, openFds(a.proc.pid!));
        await new Promise((r) => setTimeout(r, 200));
      }
      const health = await fetch(`${a.url}/healthz`);
      assert.equal(health.status, 200);
      assert.equal(await (await a.invoke('victim', '/', { method: 'POST', body: 'hello' })).text(), '5');
      const upload = await a.upload('victim', { 'handler.js': HANDLER_ECHO.replace('String(', "'v2:' + String(") });
      assert.equal(upload.status, 200, JSON.stringify(upload.body));
      assert.equal(await (await a.invoke('victim', '/', { method: 'POST', body: 'hello' })).text(), 'v2:5'); // a cold start, too
      peak = Math.max(peak, openFds(a.proc.pid!));
      assert.ok(peak < before + 500, `the server went from ${before} to ${peak} open descriptors`);
      // The flood was real: both instances connected far more often than they may hold connections.
      let connected: number[] = [];
      await until(
        async () => {
          const { lines } = (await a.api('GET', '/api/functions/flooder/logs?stream=stdout')).body;
          connected = lines.flatMap((l: { message: string }) => /flood: (\d+) connected/.exec(l.message)?.[1] ?? []).map(Number);
          return connected.length === 2;
        },
        10_000,
        'both flooding instances to report',
      );
      assert.ok(
        connected.every((n) => n > 200),
        `connections made per instance: ${connected}`,
      );
    });
  });
}

/** What an instance can see of the host that runs it: processes' command lines and environments, mounts, /dev. */
const LAYOUT = `const fs = require('fs');
const read = (p) => { try { return fs.readFileSync(p, 'utf8'); } catch (e) { return e.code; } };
const tryWrite = (p) => { try { fs.writeFileSync(p, 'x'); fs.unlinkSync(p); return 'written'; } catch (e) { return e.code; } };
exports.handler = async () => {
  const pids = fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p));
  const shm = fs.statfsSync('/dev/shm');
  return { statusCode: 200, body: JSON.stringify({
    cmdlines: pids.map((p) => read('/proc/' + p + '/cmdline').split('\\0').join(' ')),
    environs: pids.map((p) => read('/proc/' + p + '/environ').split('\\0').join(' ')),
    mounts: read('/proc/self/mountinfo'),
    dev: tryWrite('/dev/probe'),
    shm: tryWrite('/dev/shm/probe'),
    shmBytes: shm.blocks * shm.bsize,
  }) };
};`;

for (const driver of sandboxDrivers()) {
  describe(`what a function sees of the host (${driver})`, () => {
    let a: Aether;
    before(async () => {
      a = await startAether({ isolation: driver, env: { AETHER_TMP_MB: '16' } });
    });
    after(() => a?.stop());

    test('no host paths in command lines or environments, /dev read-only, a sized /dev/shm', async () => {
      const { code_hash: hash } = await a.deploy({ name: 'layout', memory_mb: 96 }, { 'handler.js': LAYOUT });
      const res = await a.invoke('layout');
      assert.equal(res.status, 200);
      const seen = await res.json();
      for (const what of [...seen.cmdlines, ...seen.environs]) {
        for (const secret of [a.dataDir, ROOT, hash]) assert.ok(!what.includes(secret), `${secret} shows in: ${what}`);
      }
      assert.ok(!seen.mounts.includes(ROOT), `the checkout path shows in the mount table:\n${seen.mounts}`);
      assert.notEqual(seen.dev, 'written');
      // Sized like /tmp where it is writable (bwrap); gVisor's is not writable by the function at all.
      if (seen.shm === 'written' || driver === 'bwrap') assert.equal(seen.shmBytes, 16 * 1024 * 1024);
    });
  });
}

describe('bwrap with Aether or its data under a private (0700) directory', () => {
  // Stands for a home directory such as /root: only its owner may pass through.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-home-'));
  fs.chmodSync(home, 0o700);
  after(() => fs.rmSync(home, { recursive: true, force: true }));

  test('an installation there works: instances get a copy of the agent', { timeout: 60_000 }, async () => {
    const install = path.join(home, 'aether');
    fs.mkdirSync(install);
    fs.cpSync(path.join(ROOT, 'dist'), path.join(install, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(install, 'package.json'));
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(install, 'node_modules'));
    const a = await startAether({ isolation: 'bwrap', root: install });
    try {
      await a.deploy({ name: 'echo', memory_mb: 96 }, { 'handler.js': HANDLER_ECHO });
      assert.equal(await (await a.invoke('echo', '/', { method: 'POST', body: 'hi' })).text(), '2');
    } finally {
      await a.stop();
    }
  });

  test('a data dir there: the start says which directory and what to change', async () => {
    const dataDir = path.join(home, 'data');
    await assert.rejects(startAether({ isolation: 'bwrap', dataDir }), (err: Error) =>
      err.message.includes(`${home} (mode 0700) does not let other users through. Run \`chmod o+x ${home}\``),
    );
  });
});
