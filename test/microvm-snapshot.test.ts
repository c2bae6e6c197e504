/**
 * QEMU snapshots for real, under TCG: a template VM boots until its agent waits for a token, its
 * migration state goes to a file, and instances resume that state with their own code disk, token,
 * clock and random bytes. One snapshot is shared by the tests (a template boot is seconds under TCG).
 * AETHER_TEST_VM_CACHE=<dir> keeps the kernel download and image between runs.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request, type IncomingMessage } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { QemuDriver } from '../src/adapters/isolation/microvm/qemu/driver.js';
import type { VmInstance } from '../src/adapters/isolation/microvm/qemu/vm.js';
import type { InstanceSpec } from '../src/core/ports.js';
import { skipUnless } from './helpers/skip.js';

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
    driver = await QemuDriver.create({ runDir: path.join(work, 'run'), cacheDir, accel: 'tcg', tcgMinStartTimeoutMs: 0 });
    state = await driver.prepareSnapshot({ memoryMb: 128, vcpu: 1, port: 3000 });
    stateDigest = await sha256(state);
    stateMtime = (await stat(state)).mtimeMs;
  });

  after(async () => {
    await Promise.all([...live].map((instance) => instance.stop(0)));
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
      startTimeoutMs: 60_000,
      onLog: (stream, line) => console.log(`# ${name} ${stream}: ${line}`),
    };
    const instance = await driver.start(spec);
    live.add(instance);
    void instance.exited.then(() => live.delete(instance));
    return instance;
  }

  async function report(instance: VmInstance): Promise<Report & { hostNow: number }> {
    const socket = await instance.connect();
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
    return { ...(JSON.parse(body) as Report), hostNow };
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

  test('two restores of one snapshot draw different random numbers from every source and keep the time', async () => {
    const code = await codeDir('second');
    const [a, b] = await Promise.all([start('second-a', code), start('second-b', code)]);
    assert.ok(a.restore && b.restore, 'an instance booted instead of resuming the snapshot');
    const [ra, rb] = await Promise.all([report(a), report(b)]);
    assert.equal(ra.name, 'second');
    for (const source of ['crypto', 'uuid', 'math', 'urandom'] as const) {
      assert.notEqual(ra[source], rb[source], `both restores drew the same ${source} value`);
    }
    for (const r of [ra, rb]) assert.ok(Math.abs(r.now - r.hostNow) < 2000, `guest clock off by ${r.now - r.hostNow} ms`);
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

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}
