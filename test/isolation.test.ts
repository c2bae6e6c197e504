/**
 * The bubblewrap and gVisor drivers against real sandboxes: what a function can see, reach and
 * exhaust from inside, and that nothing of an instance is left on the host after it stopped.
 * Each driver's block is skipped only when its start-up probe fails on this host.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CgroupTree, InstanceCgroup } from '../src/adapters/isolation/cgroup.js';
import { UidPool } from '../src/adapters/isolation/uid-pool.js';
import { selectDriver, type SelectOptions } from '../src/adapters/isolation/select.js';
import type { ExitInfo, InstanceHandle, InstanceSpec, IsolationDriver } from '../src/core/ports.js';
import { freePort } from '../src/adapters/free-port.js';
import { skipUnless } from './helpers/skip.ts';

const TMP_MB = 8;
const PIDS_LIMIT = 128;
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-isolation-'));
fs.chmodSync(base, 0o755); // sandboxes run as other uids and must reach their code below it
const runDir = path.join(base, 'run');
const stateDir = path.join(base, 'state');
// Stands for Aether's data dir: world-readable, so only the sandbox can keep a function out of it.
const dataDir = path.join(base, 'data');
fs.mkdirSync(dataDir, { mode: 0o755 });
fs.writeFileSync(path.join(dataDir, 'aether.db'), 'secret', { mode: 0o644 });
// Unique per run: never touches the groups of an Aether running on this host.
const cgroups = new CgroupTree({ parent: `aether-test-${process.pid}-${randomBytes(3).toString('hex')}` });
const uidBase = 250_000 + (process.pid % 500) * 40;

function options(i: number): SelectOptions {
  return {
    runDir,
    stateDir,
    pidsLimit: PIDS_LIMIT,
    openFilesLimit: 256,
    tmpMb: TMP_MB,
    cgroupParent: cgroups.parent,
    uids: { first: uidBase + i * 10, size: 10 },
  };
}

const drivers = new Map<string, IsolationDriver | string>();
for (const [i, name] of (['bwrap', 'gvisor'] as const).entries()) {
  drivers.set(
    name,
    await selectDriver(name, options(i)).then(
      (s) => s.driver,
      (err: Error) => err.message,
    ),
  );
}

// The host's own services that no instance may reach: a TCP server on loopback and the host address.
const hostServer = net.createServer((socket) => socket.on('error', () => {}).end('host secret'));
await new Promise<void>((resolve) => hostServer.listen(0, '0.0.0.0', resolve));
const hostPort = (hostServer.address() as net.AddressInfo).port;
const hostIp = Object.values(os.networkInterfaces())
  .flat()
  .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;

const live = new Set<InstanceHandle>();
after(async () => {
  await Promise.all([...live].map((h) => h.stop(0)));
  hostServer.close();
  await cgroups.removeParent();
  fs.rmSync(base, { recursive: true, force: true });
});

let seq = 0;
function codeDir(source: string): string {
  const dir = path.join(base, `code-${++seq}`);
  fs.mkdirSync(dir);
  // World-writable: only the read-only mount may keep the function from writing its code.
  fs.chmodSync(dir, 0o777);
  fs.writeFileSync(path.join(dir, 'index.js'), source, { mode: 0o644 });
  return dir;
}

async function start(driver: IsolationDriver, source: string, opts: Partial<InstanceSpec> = {}): Promise<InstanceHandle> {
  const handle = await driver.start({
    instanceId: `t${process.pid}-${++seq}`,
    functionId: 'fn',
    codeDir: codeDir(source),
    env: {},
    port: 3000,
    memoryMb: 128,
    vcpu: 1,
    concurrency: 1,
    startTimeoutMs: 10_000,
    onLog: () => {},
    ...opts,
  });
  live.add(handle);
  void handle.exited.then(() => live.delete(handle));
  return handle;
}

async function invoke(handle: InstanceHandle): Promise<{ status: number; body: string }> {
  const socket = (await handle.connect()) as net.Socket;
  return new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => socket, path: '/', headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const cgroupDirs = (id: string) => ['memory', 'pids', 'cpu'].map((ctrl) => cgroups.controllerDir(ctrl, id));
const readCgroup = (id: string, ctrl: string, file: string) =>
  fs.readFileSync(path.join(cgroups.controllerDir(ctrl, id), file), 'utf8').trim();

/**
 * Live host processes running as `uid`. Zombies are left out: they run nothing, and here the
 * sandbox's orphaned init waits for this machine's PID 1, which reaps slowly.
 */
function processesOf(uid: number): number[] {
  return fs
    .readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      let status: string;
      try {
        status = fs.readFileSync(`/proc/${p}/status`, 'utf8');
      } catch {
        return false; // gone since the listing (ESRCH, ENOENT)
      }
      return status.match(/^Uid:\s+(\d+)/m)?.[1] === String(uid) && !/^State:\s+Z/m.test(status);
    })
    .map(Number);
}

// Tries everything a function should not be able to do and reports what happened (error codes).
const PROBE = `
const fs = require('fs'), net = require('net');
const attempt = (f) => { try { f(); return 'ok'; } catch (e) { return e.code; } };
const dial = (host, port) => new Promise((resolve) => {
  if (!host) return resolve('no host address');
  const s = net.connect({ host, port, timeout: 2000 });
  s.on('connect', () => { s.destroy(); resolve('connected'); });
  s.on('timeout', () => { s.destroy(); resolve('timeout'); });
  s.on('error', (e) => resolve(e.code));
});
const status = (field) => {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\\n').find((l) => l.startsWith(field + ':'));
  return line ? line.slice(field.length + 1).trim() : null;
};
exports.handler = async () => {
  const env = process.env;
  return {
    uid: process.getuid(),
    privileges: { capEff: status('CapEff'), capBnd: status('CapBnd'), noNewPrivs: status('NoNewPrivs') },
    hostname: require('os').hostname(),
    env: { FOO: env.FOO ?? null, hostMarker: env.AETHER_TEST_HOST_MARKER ?? null },
    root: fs.readdirSync('/').sort(),
    etc: fs.readdirSync('/etc'),
    run: fs.readdirSync('/run'),
    read: {
      shadow: attempt(() => fs.readFileSync('/etc/shadow')),
      passwd: attempt(() => fs.readFileSync('/etc/passwd')),
      rootHome: attempt(() => fs.readdirSync('/root')),
      dataDir: attempt(() => fs.readFileSync(env.DATA_DIR + '/aether.db')),
      otherChannel: attempt(() => fs.readdirSync(env.OTHER_CHANNEL)),
      ownChannel: fs.readdirSync('/run/aether').sort(),
    },
    write: {
      code: attempt(() => fs.writeFileSync('/code/x', 'x')),
      root: attempt(() => fs.writeFileSync('/x', 'x')),
      tmp: attempt(() => fs.writeFileSync('/tmp/x', 'x')),
      tmpPastLimit: attempt(() => fs.writeFileSync('/tmp/big', Buffer.alloc((Number(env.TMP_MB) + 1) << 20, 1))),
    },
    signalHost: attempt(() => process.kill(Number(env.HOST_PID), 0)),
    net: {
      hostLoopback: await dial('127.0.0.1', Number(env.HOST_PORT)),
      hostAddress: await dial(env.HOST_IP, Number(env.HOST_PORT)),
      otherInstance: await dial('127.0.0.1', Number(env.OTHER_PORT)),
    },
  };
};
`;

// A server-mode function: with no isolation it would listen on the host's loopback, at OTHER_PORT.
const SERVER = `require('http').createServer((req, res) => res.end(JSON.stringify({ uid: process.getuid() }))).listen(Number(process.env.PORT));`;

// A stand-in for the Aether process: starts one instance, reports, then idles until it is killed.
const HOST_SCRIPT = `
const [mode, options, instanceId, codeDir] = process.argv.slice(1);
const { selectDriver } = await import('./src/adapters/isolation/select.ts');
const { driver } = await selectDriver(mode, JSON.parse(options));
await driver.start({ instanceId, functionId: 'fn', codeDir, env: {}, port: 3000, memoryMb: 128, vcpu: 0.2,
  concurrency: 1, startTimeoutMs: 10000, onLog: () => {} });
process.stdout.write('started\\n');
setInterval(() => {}, 1000);
`;

for (const [i, name] of ['bwrap', 'gvisor'].entries()) {
  const driver = drivers.get(name)!;
  describe(`${name} isolation`, { skip: skipUnless(typeof driver !== 'string', `${name} does not work on this host: ${driver}`) }, () => {
    const d = driver as IsolationDriver;

    it('shows the function only its runtime, code, agent, channel, /tmp and env', async () => {
      process.env.AETHER_TEST_HOST_MARKER = 'host env must not leak';
      const otherPort = await freePort();
      const other = await start(d, SERVER, { port: otherPort });
      const probe = await start(d, PROBE, {
        memoryMb: 96,
        vcpu: 0.5,
        env: {
          FOO: 'bar',
          DATA_DIR: dataDir,
          OTHER_CHANNEL: path.join(runDir, other.id),
          TMP_MB: String(TMP_MB),
          HOST_PID: String(process.pid),
          HOST_PORT: String(hostPort),
          HOST_IP: hostIp ?? '',
          OTHER_PORT: String(otherPort),
        },
      });
      delete process.env.AETHER_TEST_HOST_MARKER;

      // While running: the limits are in place and the sandbox's host processes are inside them.
      assert.equal(readCgroup(probe.id, 'memory', 'memory.limit_in_bytes'), String(96 * 1024 * 1024));
      assert.equal(readCgroup(probe.id, 'pids', 'pids.max'), String(PIDS_LIMIT));
      assert.equal(readCgroup(probe.id, 'cpu', 'cpu.cfs_quota_us'), '50000');
      assert.notEqual(readCgroup(probe.id, 'pids', 'cgroup.procs'), '');

      const served = await invoke(other);
      assert.equal(served.status, 200, served.body);
      const otherUid = JSON.parse(served.body).uid as number;

      const res = await invoke(probe);
      assert.equal(res.status, 200, res.body);
      const seen = JSON.parse(res.body);
      assert.ok(seen.uid >= uidBase && seen.uid < uidBase + 40, `runs as an unprivileged uid of its own: ${seen.uid}`);
      assert.notEqual(seen.uid, otherUid, 'each instance has its own uid');
      if (name === 'bwrap') {
        // On the host too, every process of the sandbox runs as that uid (gVisor's run as its own).
        const procs = readCgroup(probe.id, 'pids', 'cgroup.procs').split('\n').map(Number);
        assert.deepEqual(
          procs.filter((pid) => !processesOf(seen.uid).includes(pid)),
          [],
        );
      }
      // gVisor's /proc does not report NoNewPrivs (its spec sets noNewPrivileges).
      assert.deepEqual(seen.privileges, {
        capEff: '0000000000000000',
        capBnd: '0000000000000000',
        noNewPrivs: name === 'gvisor' ? null : '1',
      });
      assert.equal(seen.hostname, 'fn');
      assert.deepEqual(seen.env, { FOO: 'bar', hostMarker: null });
      assert.deepEqual(seen.root, ['bin', 'code', 'dev', 'etc', 'lib', 'lib64', 'opt', 'proc', 'run', 'sys', 'tmp', 'usr']);
      assert.deepEqual(seen.etc, ['hosts']);
      assert.deepEqual(seen.run, ['aether']);
      assert.deepEqual(seen.read, {
        shadow: 'ENOENT',
        passwd: 'ENOENT',
        rootHome: 'ENOENT',
        dataDir: 'ENOENT',
        otherChannel: 'ENOENT',
        ownChannel: ['agent.sock', 'frames.sock', 'mmds.sock'],
      });
      const { root, ...write } = seen.write;
      assert.deepEqual(write, { code: 'EROFS', tmp: 'ok', tmpPastLimit: 'ENOSPC' });
      // The root is a read-only root-owned skeleton: gVisor checks the permission first.
      assert.ok(['EROFS', 'EACCES'].includes(root), `writing to /: ${root}`);
      assert.equal(seen.signalHost, 'ESRCH');
      assert.ok(!['connected', 'timeout'].includes(seen.net.hostLoopback), `host loopback: ${seen.net.hostLoopback}`);
      assert.ok(!['connected', 'timeout'].includes(seen.net.otherInstance), `other instance: ${seen.net.otherInstance}`);
      if (hostIp) assert.ok(!['connected', 'timeout'].includes(seen.net.hostAddress), `host address: ${seen.net.hostAddress}`);

      await Promise.all([probe.stop(1000), other.stop(1000)]);
      for (const id of [probe.id, other.id]) {
        for (const dir of cgroupDirs(id)) assert.equal(fs.existsSync(dir), false, `${dir} removed`);
        assert.equal(fs.existsSync(path.join(runDir, id)), false, 'channel dir removed');
        assert.equal(fs.existsSync(path.join(stateDir, 'bundles', id)), false, 'bundle removed');
      }
      if (name === 'gvisor') {
        const containers = execFileSync('runsc', [`--root=${path.join(stateDir, 'runsc')}`, 'list', '--quiet'], { encoding: 'utf8' });
        assert.equal(containers.trim(), '', 'runsc has no state left');
      }
      assert.deepEqual(processesOf(seen.uid), []);
    });

    it('kills an instance that allocates past its memory limit and says so', async () => {
      const hog = await start(d, `const keep = []; exports.handler = async () => { for (;;) keep.push(Buffer.alloc(8 << 20, 1)); };`, {
        memoryMb: 128,
      });
      await assert.rejects(invoke(hog));
      const exit: ExitInfo = await hog.exited;
      assert.equal(exit.oom, true, JSON.stringify(exit));
      assert.equal(exit.reason, 'memory limit of 128 MB exceeded');
      for (const dir of cgroupDirs(hog.id)) assert.equal(fs.existsSync(dir), false, `${dir} removed`);
    });

    it('contains a fork bomb within the pids limit', async () => {
      const bomb = await start(
        d,
        // Lit after the response is out: under gVisor the bomb may take the whole sandbox down.
        `exports.handler = async () => { setTimeout(() => require('child_process').spawn('/bin/sh', ['-c', 'b() { b | b & }; b'], { stdio: 'ignore', detached: true }).unref(), 100); return 'lit'; };`,
        { vcpu: 0.5 },
      );
      assert.equal((await invoke(bomb)).body, 'lit');
      // Wait until the bomb hits the limit (or has taken the instance down with it, under gVisor).
      const hitLimit = async () => /^max [1-9]/m.test(readCgroup(bomb.id, 'pids', 'pids.events'));
      for (let i = 0; i < 100 && !(await hitLimit()); i++) await sleep(50);
      assert.ok(await hitLimit(), 'the bomb reached the pids limit');
      assert.ok(Number(readCgroup(bomb.id, 'pids', 'pids.current')) <= PIDS_LIMIT);
      execFileSync('/bin/true'); // the host can still start processes
      // The instance may die of it (gVisor's sentry does); then it says why.
      const died = await Promise.race([bomb.exited, sleep(300).then(() => undefined)]);
      if (died) assert.equal(died.reason, `process limit of ${PIDS_LIMIT} reached (exit code ${died.code})`);
      await bomb.stop(500);
      // Stopped by the host, a limit it hit before is not what ended it.
      if (!died) assert.equal((await bomb.exited).reason, 'stopped');
      for (const dir of cgroupDirs(bomb.id)) assert.equal(fs.existsSync(dir), false, `${dir} removed`);
    });

    it('takes its instances down when the Aether process dies', async () => {
      const id = `t${process.pid}-${++seq}`;
      // Soon after it is ready, the function stops answering anything: only a kill can end it.
      const code = codeDir(`setTimeout(() => { for (;;); }, 200); exports.handler = async () => 'up';`);
      const aether = spawn(
        process.execPath,
        ['--import', 'tsx', '--input-type=module', '-e', HOST_SCRIPT, name, JSON.stringify(options(2 + i)), id, code],
        {
          cwd: path.resolve(import.meta.dirname, '..'),
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      const [started] = await once(aether.stdout!.setEncoding('utf8'), 'data');
      assert.equal(started, 'started\n');
      const empty = () => readCgroup(id, 'pids', 'cgroup.procs') === '';
      try {
        await sleep(400);
        assert.ok(!empty());
        aether.kill('SIGKILL');
        for (let n = 0; n < 60 && !empty(); n++) await sleep(50);
        assert.ok(empty(), 'nothing of the instance runs once Aether is gone');
      } finally {
        // What the dead process would have cleaned up (killing whatever survived it).
        aether.kill('SIGKILL');
        await new InstanceCgroup(cgroups, id, { memoryMb: 128, vcpu: 1, pids: PIDS_LIMIT }).remove();
      }
    });
  });
}

describe('driver selection and uids', () => {
  it('gives each live instance its own uid and reuses one only after release', () => {
    const pool = new UidPool(300_000, 3);
    const [a, b, c] = [pool.acquire(), pool.acquire(), pool.acquire()];
    assert.deepEqual([a, b, c], [300_000, 300_001, 300_002]);
    assert.throws(() => pool.acquire(), /uids are in use/);
    pool.release(b);
    assert.equal(pool.acquire(), b);
  });

  it('auto picks the strongest sandbox that works here, saying why', async () => {
    const strongest = ['gvisor', 'bwrap'].find((name) => typeof drivers.get(name) !== 'string');
    const selected = selectDriver('auto', options(0));
    if (!strongest) return assert.rejects(selected);
    const { driver, reason } = await selected;
    assert.equal(driver.name, strongest);
    assert.match(reason, new RegExp(`^${strongest}: .+ probe ok in \\d+ ms`));
  });

  it('never falls back to no isolation, and names the fix', async () => {
    const savedPath = process.env.PATH;
    process.env.PATH = fs.mkdtempSync(path.join(base, 'empty-path-')); // no runsc, bwrap or setpriv here
    try {
      await assert.rejects(selectDriver('auto', options(0)), /apt-get install runsc.*apt-get install bubblewrap/s);
    } finally {
      process.env.PATH = savedPath;
    }
  });

  it('warns loudly when asked for no isolation', async () => {
    const { driver, reason } = await selectDriver('none', options(0));
    assert.equal(driver.name, 'none');
    assert.match(reason, /development/);
  });
});
