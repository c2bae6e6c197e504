/**
 * The microVM path for real: the guest image is built (Debian's cloud kernel via apt), VMs boot under
 * QEMU/TCG, and a function answers HTTP through hostfwd. Needs qemu-system-x86, busybox-static and
 * e2fsprogs, and a built agent (npm run build). AETHER_TEST_VM_CACHE=<dir> keeps the kernel download
 * and images between runs.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, cp, mkdir, mkdtemp, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { request, type IncomingMessage } from 'node:http';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { probeAccel } from '../src/adapters/isolation/microvm/qemu/accel.js';
import { QemuDriver } from '../src/adapters/isolation/microvm/qemu/driver.js';
import type { BootTimings } from '../src/adapters/isolation/microvm/guest.js';
import type { VmInstance } from '../src/adapters/isolation/microvm/qemu/vm.js';
import type { AetherError } from '../src/core/errors.js';
import type { InstanceHandle, InstanceSpec } from '../src/core/ports.js';
import { buildImage, GUEST_MODULES, type GuestImage } from '../src/guest/image/build-image.js';
import { newcArchive, type CpioEntry } from '../src/guest/image/newc.js';

const run = promisify(execFile);
const QEMU = 'qemu-system-x86_64';

let work: string;
let cacheDir: string;
let image: GuestImage;
let driver: QemuDriver;
const live = new Set<InstanceHandle>();

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'aether-microvm-'));
  await chmod(work, 0o755);
  cacheDir = process.env.AETHER_TEST_VM_CACHE ?? path.join(work, 'cache');
});

after(async () => {
  await Promise.all([...live].map((instance) => instance.stop(0)));
  await rm(work, { recursive: true, force: true });
});

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

/** `busybox cpio -t` lists an archive the way the kernel will unpack it. */
async function cpioList(archive: Buffer): Promise<string[]> {
  const child = spawn('busybox', ['cpio', '-t'], { stdio: ['pipe', 'pipe', 'ignore'] });
  child.stdin.end(archive);
  let out = '';
  for await (const chunk of child.stdout) out += chunk;
  return out.split('\n').filter(Boolean);
}

async function codeDir(name: string, files: Record<string, string>): Promise<string> {
  const dir = path.join(work, 'code', name);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  for (const [file, text] of Object.entries(files)) await writeFile(path.join(dir, file), text, { mode: 0o644 });
  return dir;
}

interface Logs {
  stdout: string[];
  stderr: string[];
}

function spec(id: string, code: string, logs: Logs, extra: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    instanceId: `${id}-${Date.now().toString(36)}`,
    functionId: id,
    codeDir: code,
    env: { GREETING: 'hello from the host' },
    port: 3000,
    memoryMb: 128,
    vcpu: 1,
    concurrency: 4,
    startTimeoutMs: 60_000,
    onLog: (stream, line) => logs[stream].push(line),
    ...extra,
  };
}

async function start(s: InstanceSpec): Promise<VmInstance> {
  const instance = await driver.start(s);
  live.add(instance);
  void instance.exited.then(() => live.delete(instance));
  return instance;
}

interface Reply {
  status: number;
  body: string;
  /** ms from sending the request to the first byte of the response. */
  firstByteMs: number;
}

async function get(instance: InstanceHandle, urlPath: string): Promise<Reply> {
  const socket = await instance.connect();
  const sent = performance.now();
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = request({ createConnection: () => socket, path: urlPath, headers: { host: 'fn' } }, resolve);
    req.on('error', reject);
    req.end();
  });
  const firstByteMs = performance.now() - sent;
  let body = '';
  for await (const chunk of res) body += chunk;
  socket.destroy();
  return { status: res.statusCode!, body, firstByteMs };
}

async function qemuProcessesMentioning(text: string): Promise<string[]> {
  const { stdout } = await run('ps', ['-eo', 'args']);
  return stdout.split('\n').filter((line) => line.startsWith(QEMU) && line.includes(text));
}

function describeBoot(b: BootTimings | undefined): string {
  return b ? `VMM ${b.vmm} ms, kernel ${b.kernel} ms, init ${b.init} ms, agent ${b.agent} ms, ready after ${b.total} ms` : 'no timings';
}

describe('cpio newc writer', () => {
  test('writes what busybox cpio reads, the same bytes whatever the input order', async () => {
    const entries: CpioEntry[] = [
      { path: 'bin', type: 'dir', mode: 0o755 },
      { path: 'bin/tool', type: 'file', mode: 0o755, data: Buffer.from('#!/bin/sh\necho hi\n') },
      { path: 'bin/link', type: 'symlink', target: 'tool' },
      { path: 'etc', type: 'dir', mode: 0o755 },
      { path: 'etc/empty', type: 'file', mode: 0o644, data: Buffer.alloc(0) },
    ];
    const archive = newcArchive(entries);
    assert.deepEqual(await cpioList(archive), ['bin', 'bin/link', 'bin/tool', 'etc', 'etc/empty']);
    assert.ok(newcArchive([...entries].reverse()).equals(archive));
    assert.throws(() => newcArchive([...entries, entries[1]!]), /duplicate/);
  });
});

describe('guest image', () => {
  test('is built once, then found by the hash of its inputs, and is reproducible', async () => {
    const progress: string[] = [];
    const first = Date.now();
    image = await buildImage({ cacheDir, onProgress: (m) => progress.push(m) });
    const buildMs = Date.now() - first;
    const mtime = (await stat(image.rootfs)).mtimeMs;

    const again = Date.now();
    const cached = await buildImage({ cacheDir, onProgress: (m) => progress.push(`again: ${m}`) });
    assert.deepEqual(cached, image);
    assert.equal((await stat(image.rootfs)).mtimeMs, mtime, 'the cached image was rebuilt');
    assert.ok(!progress.some((m) => m.startsWith('again:')), `a cached build reported work: ${progress.join('; ')}`);
    const cachedMs = Date.now() - again;

    // A second cache (sharing only the downloaded kernel) builds the very same bytes.
    const other = path.join(work, 'cache-2');
    await cp(path.join(cacheDir, 'kernels'), path.join(other, 'kernels'), { recursive: true });
    const rebuilt = await buildImage({ cacheDir: other });
    assert.equal(rebuilt.hash, image.hash);
    assert.equal(await sha256(rebuilt.initrd), await sha256(image.initrd));
    assert.equal(await sha256(rebuilt.rootfs), await sha256(image.rootfs));
    await rm(other, { recursive: true });

    const initrd = await cpioList(
      await run('gzip', ['-dc', image.initrd], { encoding: 'buffer', maxBuffer: 64 << 20 }).then((r) => r.stdout),
    );
    for (const entry of ['init', 'bin/busybox', ...GUEST_MODULES.map((m) => `lib/modules/${m}.ko`)]) {
      assert.ok(initrd.includes(entry), `initramfs lacks ${entry}`);
    }
    const { stdout: agentFiles } = await run('debugfs', ['-R', 'ls -p /opt/aether/agent', image.rootfs]);
    assert.match(agentFiles, /\/listen-mode\.mjs\//);
    assert.match(agentFiles, /\/main\.mjs\//);
    const { stdout: node } = await run('debugfs', ['-R', 'stat /usr/bin/node', image.rootfs]);
    assert.equal(Number(/Size: (\d+)/.exec(node)?.[1]), (await stat(await realpath(process.execPath))).size);
    console.log(
      `# image ${image.hash.slice(0, 12)}: built in ${buildMs} ms (kernel download included on a cold cache), found again in ${cachedMs} ms`,
    );
  });
});

describe('accelerator probe', () => {
  test('uses KVM only when a guest actually boots under it, within the timeout', async () => {
    const started = Date.now();
    const result = await probeAccel(QEMU, image, 3000);
    const ms = Date.now() - started;
    assert.ok(ms < 6000, `probe took ${ms} ms`);
    assert.ok(result.accel === 'kvm' || result.accel === 'tcg');
    if (result.accel === 'kvm') assert.match(result.detail, /KVM boot in \d+ ms/);
    assert.deepEqual(await qemuProcessesMentioning(image.initrd), [], 'the probe VM outlived the probe');
    console.log(`# accelerator probe: ${result.accel} (${result.detail}) in ${ms} ms`);
  });
});

describe('QEMU microVM driver (TCG)', () => {
  before(async () => {
    // Boots, every one (microvm-snapshot.test.ts covers resuming snapshots).
    driver = await QemuDriver.create({ runDir: path.join(work, 'run'), cacheDir, accel: 'tcg', tcgMinStartTimeoutMs: 0, snapshots: false });
  });

  test('boots the function under its own kernel and serves it through hostfwd', async () => {
    // Guest egress is blocked (restrict=on): this host port must never see the guest.
    const sentinel = createServer((socket) => {
      sentinelHits++;
      socket.destroy();
    });
    let sentinelHits = 0;
    await new Promise<void>((resolve) => sentinel.listen(0, '127.0.0.1', resolve));
    const sentinelPort = (sentinel.address() as { port: number }).port;
    const code = await codeDir('probe', {
      'index.js': `
        const fs = require('node:fs');
        const net = require('node:net');
        const os = require('node:os');
        const { execSync } = require('node:child_process');
        console.log('function loaded');
        console.log('y'.repeat(40000));
        const attempt = (fn) => { try { fn(); return 'allowed'; } catch (err) { return err.code; } };
        const dial = (options) => new Promise((resolve) => {
          const s = net.connect(options);
          s.setTimeout(2000, () => { s.destroy(); resolve('timeout'); });
          s.once('connect', () => { s.destroy(); resolve('connected'); });
          s.once('error', (err) => resolve(err.code));
        });
        const zombies = () => fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p))
          .filter((p) => { try { return fs.readFileSync('/proc/' + p + '/stat', 'utf8').split(') ')[1][0] === 'Z'; } catch { return false; } }).length;
        exports.handler = async (event) => {
          if (event.path === '/info') {
            console.error('info requested');
            return { release: os.release(), version: fs.readFileSync('/proc/version', 'utf8'), greeting: process.env.GREETING,
              uid: process.getuid(), pid1: fs.readFileSync('/proc/1/cmdline', 'utf8').split('\\0').join(' ').trim(),
              rootWritable: attempt(() => fs.writeFileSync('/usr/x', 'x')), tmpWritable: attempt(() => fs.writeFileSync('/tmp/x', 'x')) };
          }
          if (event.path === '/isolation') {
            const ports = fs.readdirSync('/dev').filter((d) => d.startsWith('vport'));
            return { ports: ports.map((p) => attempt(() => fs.openSync('/dev/' + p, 'r'))),
              metadataSocket: await dial({ path: '/run/aether/mmds.sock' }),
              egress: await dial({ host: '10.0.2.2', port: ${sentinelPort} }) };
          }
          if (event.path === '/zombies') {
            execSync('/bin/sh -c "/bin/busybox sleep 0.2 & exit 0"');
            await new Promise((r) => setTimeout(r, 1500));
            return { zombies: zombies() };
          }
          if (event.path === '/exit') { setTimeout(() => process.exit(3), 100); return 'bye'; }
          return { statusCode: 404, body: 'no such path' };
        };
      `,
    });
    const logs: Logs = { stdout: [], stderr: [] };
    const s = spec('probe', code, logs);
    const instance = await start(s);
    console.log(`# boot phases: ${describeBoot(instance.boot)}`);
    assert.ok(instance.boot, 'no boot timings');

    const info = await get(instance, '/info');
    assert.equal(info.status, 200, info.body);
    console.log(`# first request: first byte after ${info.firstByteMs.toFixed(1)} ms`);
    const guest = JSON.parse(info.body);
    assert.notEqual(guest.release, os.release(), 'the function ran under the host kernel');
    if (!process.env.KERNEL_PATH) assert.match(guest.release, /-cloud-amd64$/);
    assert.match(guest.version, new RegExp(`^Linux version ${guest.release.replace(/[.+]/g, '\\$&')} `));
    assert.equal(guest.greeting, 'hello from the host', 'env from the metadata service');
    assert.equal(guest.uid, 1000, 'the function runs unprivileged in the guest');
    assert.match(guest.pid1, /busybox sh \/init/);
    assert.equal(guest.rootWritable, 'EROFS');
    assert.equal(guest.tmpWritable, 'allowed');

    const isolation = JSON.parse((await get(instance, '/isolation')).body);
    assert.ok(isolation.ports.length >= 4, `virtio ports: ${JSON.stringify(isolation.ports)}`);
    assert.ok(
      isolation.ports.every((r: string) => r === 'EACCES'),
      `the function can open a host channel: ${JSON.stringify(isolation)}`,
    );
    assert.ok(['ENOENT', 'ECONNREFUSED'].includes(isolation.metadataSocket), `metadata reachable again: ${isolation.metadataSocket}`);
    assert.notEqual(isolation.egress, 'connected');
    assert.equal(sentinelHits, 0, 'the guest reached a host port');
    sentinel.close();

    // Several connections at once: each is paired with one the agent dialed.
    const parallel = await Promise.all([1, 2, 3].map(() => get(instance, '/info')));
    assert.deepEqual(
      parallel.map((r) => r.status),
      [200, 200, 200],
    );

    assert.deepEqual(JSON.parse((await get(instance, '/zombies')).body), { zombies: 0 }, 'init does not reap orphans');

    assert.ok(logs.stdout.includes('function loaded'), `stdout: ${JSON.stringify(logs.stdout)}`);
    assert.deepEqual(
      logs.stdout.filter((l) => l.startsWith('y')).map((l) => l.length),
      [16384, 16384, 7232],
      'a long line reaches the log in pieces of at most 16 KiB, as on every driver',
    );
    assert.ok(logs.stderr.includes('info requested'), `stderr: ${JSON.stringify(logs.stderr)}`);
    assert.ok(!logs.stdout.concat(logs.stderr).some((l) => l.includes('hello from the host')), 'env values were logged');

    // The function exiting powers the VM off, and the host sees that as the instance ending.
    assert.equal((await get(instance, '/exit')).body, 'bye');
    const exit = await instance.exited;
    assert.equal(exit.code, 3);
    assert.equal(exit.signal, null);
    assert.deepEqual(await qemuProcessesMentioning(s.instanceId), []);
    await assert.rejects(instance.connect(), (err: AetherError) => err.code === 'instance_stopped');
  });

  test('stop() delivers SIGTERM to the function, then the VM powers off', async () => {
    const code = await codeDir('graceful', {
      'index.js': `
        process.on('SIGTERM', () => { console.log('got SIGTERM'); process.exit(0); });
        exports.handler = async () => 'ok';
      `,
    });
    const logs: Logs = { stdout: [], stderr: [] };
    const s = spec('graceful', code, logs);
    const instance = await start(s);
    assert.equal((await get(instance, '/')).body, 'ok');
    const stopping = Date.now();
    await instance.stop(10_000);
    const exit = await instance.exited;
    const ms = Date.now() - stopping;
    assert.equal(exit.code, 0, JSON.stringify(exit));
    assert.equal(exit.reason, 'stopped');
    assert.ok(logs.stdout.includes('got SIGTERM'), `stdout: ${JSON.stringify(logs.stdout)}`);
    assert.ok(ms < 10_000, `stop waited for the grace period (${ms} ms): SIGTERM did not arrive`);
    assert.deepEqual(await qemuProcessesMentioning(s.instanceId), []);
    console.log(`# boot phases: ${describeBoot(instance.boot)}; graceful stop in ${ms} ms`);
  });

  test("a function that cannot load fails the start with the agent's reason", async () => {
    const code = await codeDir('broken', { 'README.txt': 'no entry module here\n' });
    const s = spec('broken', code, { stdout: [], stderr: [] });
    await assert.rejects(driver.start(s), (err: AetherError) => {
      assert.equal(err.status, 502);
      assert.equal(err.code, 'start_failed');
      assert.match(err.message, /exit code 78/);
      assert.match(err.message, /entry module not found/);
      return true;
    });
    assert.deepEqual(await qemuProcessesMentioning(s.instanceId), []);
  });

  test('a VM that is not ready in time is killed', async () => {
    const code = await codeDir('slow', { 'index.js': 'exports.handler = async () => "ok";\n' });
    const s = spec('slow', code, { stdout: [], stderr: [] }, { startTimeoutMs: 500 });
    await assert.rejects(driver.start(s), (err: AetherError) => err.status === 504 && err.code === 'start_timeout');
    assert.deepEqual(await qemuProcessesMentioning(s.instanceId), []);
  });
});
