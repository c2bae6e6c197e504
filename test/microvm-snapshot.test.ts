/**
 * QEMU snapshots for real, under TCG: a template VM boots until its agent waits for a token, its
 * migration state goes to a file, and instances resume that state with their own code disk, token,
 * clock and random bytes. One snapshot is shared by the tests (a template boot is seconds under TCG).
 * AETHER_TEST_VM_CACHE=<dir> keeps the kernel download and image between runs.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request, type IncomingMessage } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { QemuDriver } from '../src/adapters/isolation/microvm/qemu/driver.js';
import type { VmInstance } from '../src/adapters/isolation/microvm/qemu/vm.js';
import { CgroupTree } from '../src/adapters/isolation/cgroup.js';
import { UidPool } from '../src/adapters/isolation/uid-pool.js';
import type { InstanceSpec } from '../src/core/ports.js';
import { skipUnless } from './helpers/skip.js';

const run = promisify(execFile);

const isRoot = process.getuid?.() === 0;
const cgroups = new CgroupTree({ parent: `aether-test-vmsnap-${process.pid}` });
const FIRST_UID = 310_000;
const MB = 1024 * 1024;

const hasQemu = (() => {
  try {
    execFileSync('qemu-system-x86_64', ['--version']);
    return true;
  } catch {
    return false;
  }
})();

/** What the test function reports: which code it is, its clock, and randomness from each source. */
const REPORTER = (name: string) => `
  const crypto = require('node:crypto');
  const fs = require('node:fs');
  const urandom = () => {
    const fd = fs.openSync('/dev/urandom', 'r');
    const bytes = Buffer.alloc(16);
    fs.readSync(fd, bytes);
    fs.closeSync(fd);
    return bytes.toString('hex');
  };
  exports.handler = async () => ({
    statusCode: 200,
    body: JSON.stringify({
      name: ${JSON.stringify(name)},
      now: Date.now(),
      crypto: crypto.randomBytes(16).toString('hex'),
      uuid: crypto.randomUUID(),
      math: Math.random(),
      urandom: urandom(),
    }),
  });
`;

interface Report {
  name: string;
  now: number;
  crypto: string;
  uuid: string;
  math: number;
  urandom: string;
}

describe('QEMU snapshots (TCG)', {
  skip: skipUnless(hasQemu, 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)'),
}, () => {
  let work: string;
  let driver: QemuDriver;
  let state: string;
  let stateDigest: string;
  let stateMtime: number;
  const live = new Set<VmInstance>();

  before(async () => {
    work = await mkdtemp(path.join(os.tmpdir(), 'aether-vmsnap-'));
    await chmod(work, 0o755);
    const cacheDir = process.env.AETHER_TEST_VM_CACHE ?? path.join(work, 'cache');
    // As root, every QEMU runs in its own cgroups as its own uid (as `aether serve` does).
    driver = await QemuDriver.create({
      runDir: path.join(work, 'run'),
      cacheDir,
      accel: 'tcg',
      tcgMinStartTimeoutMs: 0,
      snapshotDir: path.join(work, 'snapshots'), // this run's own: a size must have none until the test makes it
      confine: isRoot ? { cgroups, uids: new UidPool(FIRST_UID, 100), pidsLimit: 128, openFilesLimit: 1024 } : undefined,
    });
    state = await driver.prepareSnapshot({ memoryMb: 128, vcpu: 1, port: 3000 });
    stateDigest = await sha256(state);
    stateMtime = (await stat(state)).mtimeMs;
  });

  after(async () => {
    await Promise.all([...live].map((instance) => instance.stop(0)));
    await cgroups.removeParent();
    if (work) await rm(work, { recursive: true, force: true });
  });

  async function codeDir(name: string): Promise<string> {
    const dir = path.join(work, 'code', name);
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await writeFile(path.join(dir, 'index.js'), REPORTER(name), { mode: 0o644 });
    return dir;
  }

  async function start(name: string, code: string, memoryMb = 128): Promise<VmInstance> {
    const spec: InstanceSpec = {
      instanceId: `${name}-${Date.now().toString(36)}`,
      functionId: name,
      codeDir: code,
      env: {},
      port: 3000,
      memoryMb,
      vcpu: 1,
      concurrency: 1,
      startTimeoutMs: 120_000, // a TCG boot is 5-7 s on an idle machine; this one is shared
      onLog: (stream, line) => console.log(`# ${name} ${stream}: ${line}`),
    };
    const instance = await driver.start(spec);
    live.add(instance);
    void instance.exited.then(() => live.delete(instance));
    return instance;
  }

  /** The function's report, and the host's clock when the request went out and when the answer came. */
  async function report(instance: VmInstance): Promise<Report & { sentAt: number; hostNow: number }> {
    const socket = await instance.connect();
    const sentAt = Date.now();
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request({ createConnection: () => socket, path: '/', headers: { host: 'fn' } }, resolve);
      req.on('error', reject);
      req.end();
    });
    const hostNow = Date.now();
    let body = '';
    for await (const chunk of res) body += chunk;
    socket.destroy();
    assert.equal(res.statusCode, 200, body);
    return { ...(JSON.parse(body) as Report), sentAt, hostNow };
  }

  /** The guest's clock is the host's: within the request's round trip, plus the second `date -s` rounds to. */
  function assertClock(r: { now: number; sentAt: number; hostNow: number }): void {
    const at = (ms: number) => new Date(ms).toISOString();
    assert.ok(r.now >= r.sentAt - 1000 && r.now <= r.hostNow + 1000, `guest clock ${at(r.now)}, host ${at(r.sentAt)}..${at(r.hostNow)}`);
  }

  test('a function resumed from the snapshot answers, with its own code and the real time', async () => {
    const instance = await start('first', await codeDir('first'));
    assert.ok(instance.restore, 'the instance booted instead of resuming the snapshot');
    assert.equal(instance.boot, undefined);
    const r = await report(instance);
    assert.equal(r.name, 'first');
    // The template's clock said 2000-01-01 until the host's time came with the token.
    assert.ok(
      Math.abs(r.now - r.hostNow) < 2000,
      `guest clock ${new Date(r.now).toISOString()}, host ${new Date(r.hostNow).toISOString()}`,
    );
    const t = instance.restore;
    console.log(`# restore ${t.restore} ms, clock+RNG+code ${t.code} ms, agent ${t.agent} ms, ready after ${t.total} ms`);
    await instance.stop();
  });

  test('QEMU runs as its own unprivileged uid, in cgroups limiting its memory and CPU, removed after', {
    skip: skipUnless(isRoot, 'cgroups and uids need root'),
  }, async () => {
    const instance = await start('confined', await codeDir('confined'));
    const pid = await qemuPid(instance.id);
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
    assert.ok(uid >= FIRST_UID && uid < FIRST_UID + 100, `QEMU runs as uid ${uid}`);
    assert.match(status, /^Groups:\s*$/m, 'QEMU kept supplementary groups');
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    const groups = await readFile(`/proc/${pid}/cgroup`, 'utf8');
    const own = `/${cgroups.parent}/${instance.id}`;
    assert.match(groups, new RegExp(`:memory:${own}$`, 'm'));
    assert.match(groups, new RegExp(`:cpu,cpuacct:${own}$|:cpu:${own}$`, 'm'));
    const limit = Number(await readFile(path.join(cgroups.controllerDir('memory', instance.id), 'memory.limit_in_bytes'), 'utf8'));
    assert.equal(limit, (128 + 64 + 64 + 128) * MB, 'guest RAM (function + 64) + TCG cache + QEMU');
    assert.equal(Number(await readFile(path.join(cgroups.controllerDir('cpu', instance.id), 'cpu.cfs_quota_us'), 'utf8')), 100_000);
    assert.equal((await report(instance)).name, 'confined');
    await instance.stop();
    await assert.rejects(stat(cgroups.controllerDir('memory', instance.id)), { code: 'ENOENT' });
  });

  test('two restores of one snapshot draw different random numbers from every source and keep the time', async () => {
    const code = await codeDir('second');
    const [a, b] = await Promise.all([start('second-a', code), start('second-b', code)]);
    assert.ok(a.restore && b.restore, 'an instance booted instead of resuming the snapshot');
    const [ra, rb] = await Promise.all([report(a), report(b)]);
    assert.equal(ra.name, 'second');
    for (const source of ['crypto', 'uuid', 'math', 'urandom'] as const) {
      assert.notEqual(ra[source], rb[source], `both restores drew the same ${source} value`);
    }
    for (const r of [ra, rb]) assertClock(r);
    await Promise.all([a.stop(), b.stop()]);
  });

  test('restores leave the snapshot as it was', async () => {
    assert.equal(await sha256(state), stateDigest);
    assert.equal((await stat(state)).mtimeMs, stateMtime);
  });

  test('another memory size boots while its own snapshot is built, then resumes it', async () => {
    const code = await codeDir('bigger');
    const booted = await start('bigger', code, 160);
    assert.ok(booted.boot, 'a machine of another size resumed the 128 MB snapshot');
    assert.equal(booted.restore, undefined);
    assert.equal((await report(booted)).name, 'bigger');
    await booted.stop();
    const bigger = await driver.prepareSnapshot({ memoryMb: 160, vcpu: 1, port: 3000 }); // the one the start began
    assert.notEqual(bigger, state);
    const resumed = await start('bigger-again', code, 160);
    assert.ok(resumed.restore, 'the new snapshot was not used');
    assert.equal((await report(resumed)).name, 'bigger');
    await resumed.stop();
  });
});

/** The QEMU process of an instance: the one whose command line names the instance's channel. */
async function qemuPid(instanceId: string): Promise<number> {
  const { stdout } = await run('ps', ['-eo', 'pid=,args=']);
  const line = stdout
    .split('\n')
    .find((l) => l.includes('qemu-system-x86_64 ') && l.includes(`/${instanceId}/mmds.sock`) && !l.includes('/bin/sh'));
  assert.ok(line, `no QEMU process for ${instanceId}`);
  return Number(line.trim().split(/\s+/)[0]);
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}
