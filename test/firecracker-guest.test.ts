/**
 * The guest side of the Firecracker driver, as far as it runs without Firecracker: the init
 * script's Firecracker mode (valid busybox ash, the steps in order, the vsock ports the driver
 * listens on), mmds-fetch.mjs against a real MMDS V2 HTTP server (token session, awaiting-config,
 * polling), drop-privileges.mjs run for real, and the real image booted under QEMU/TCG with
 * Firecracker's boot parameters and disk order, 169.254.169.254:80 forwarded to that MMDS server:
 * init must get as far as the vsock relays, where QEMU (no vsock device here) makes it stop.
 * Booting under Firecracker itself needs a KVM host with Firecracker (docs/microvm.md).
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { CodeDisks } from '../src/adapters/isolation/microvm/code-disk.js';
import { machineArgs } from '../src/adapters/isolation/microvm/qemu/args.js';
import { hostTscKhz } from '../src/adapters/isolation/microvm/qemu/tsc.js';
import { agentDir, agentNodeArgs } from '../src/guest/agent-files.js';
import { FIRECRACKER_VSOCK, GUEST_PATHS, INIT_LOG_PREFIX } from '../src/guest/agent/protocol.mjs';
import { buildImage, GUEST_MODULES, GUEST_VSOCK_MODULES } from '../src/guest/image/build-image.js';
import { initScript } from '../src/guest/image/init-script.js';
import { skipUnless } from './helpers/skip.ts';

const run = promisify(execFile);
const script = initScript(GUEST_MODULES, GUEST_VSOCK_MODULES);

/** The body of a shell function in the script. */
function shellFunction(name: string): string {
  const start = script.indexOf(`\n${name}() {\n`);
  assert.ok(start >= 0, `no ${name}()`);
  return script.slice(start, script.indexOf('\n}\n', start));
}

/** Asserts that each pattern matches a line after the previous one's, and returns those lines. */
function inOrder(text: string, patterns: RegExp[]): string[] {
  const lines = text.split('\n');
  let at = 0;
  return patterns.map((pattern) => {
    const found = lines.findIndex((line, i) => i >= at && pattern.test(line));
    assert.ok(found >= 0, `${pattern} not found after line ${at}: ${lines[at]}`);
    at = found + 1;
    return lines[found]!;
  });
}

describe('init script, Firecracker mode', () => {
  test('is valid busybox ash', async () => {
    const file = path.join(tmpdir(), `init-${process.pid}.sh`);
    await writeFile(file, script);
    await run('busybox', ['sh', '-n', file]); // rejects on a syntax error
  });

  test('is selected by aether.vmm=firecracker after the common modules, and the probe reboots', () => {
    inOrder(script, [
      /^case " \$\(cat \/proc\/cmdline\) " in \*" aether\.vmm=firecracker "\*\) vmm=firecracker ;; esac$/,
      /aether\.probe=1\) log probe-ok; halt_vm ;;/,
      /^for m in virtio_ring .* virtio_console; do insmod/,
      /^\[ "\$vmm" = firecracker \] && firecracker_mode$/,
      /^until find_devices; do$/, // the QEMU path follows unchanged
    ]);
    assert.match(script, /^halt_vm\(\) \{ \[ "\$vmm" = firecracker \] && reboot -f; poweroff -f; \}$/m);
  });

  test('runs its steps in order: disks by order, MMDS, clock and RNG, address from MMDS, code, vsock relays, agent, reboot', () => {
    const body = shellFunction('firecracker_mode');
    const vsock = (port: number) => `VSOCK-CONNECT:2:${port}`;
    const steps = inOrder(body, [
      /^ {2}trap halt_vm INT/,
      new RegExp(`^ {2}for m in ${GUEST_VSOCK_MODULES.join(' ')}; do insmod`),
      /until \[ -b \/dev\/vda \] && \[ -b \/dev\/vdb \] && \[ -e \/sys\/class\/net\/eth0 \]/,
      /ip addr add \$ip dev eth0 .* ip route add 169\.254\.169\.254 dev eth0/,
      /^ {2}mount_root_image \/dev\/vda$/,
      /mkfifo -m 600 \$R\/run\/out \$R\/run\/err/,
      new RegExp(`^ {2}instance=\\$\\(chroot \\$R /usr/bin/node ${GUEST_PATHS.agent}/mmds-fetch\\.mjs "\\[aether-init\\]"\\)`),
      /^ {2}token=\$1 ip=\$2 gw=\$3$/,
      /^ {2}clock_and_rng \$5 \$4$/, // time (0: keep) and seed, before any of the function runs
      /ip route del 169\.254\.169\.254 dev eth0 && ip route add blackhole 169\.254\.169\.254/,
      /ip addr flush dev eth0 && ip addr add \$ip dev eth0 && ip route add default via \$gw/,
      /^ {2}mount -t ext4 -o ro,noload,nodev,nosuid \/dev\/vdb \$R\/code/,
      new RegExp(`socat UNIX-LISTEN:/run/aether/agent\\.sock,fork,user=1000,group=1000,mode=600 ${vsock(FIRECRACKER_VSOCK.agent)} &$`),
      new RegExp(`socat UNIX-LISTEN:/run/aether/mmds\\.sock,user=1000,group=1000,mode=600 ${vsock(FIRECRACKER_VSOCK.mmds)} &$`),
      new RegExp(`socat -u PIPE:/run/out ${vsock(FIRECRACKER_VSOCK.stdout)} &$`),
      new RegExp(`socat -u PIPE:/run/err ${vsock(FIRECRACKER_VSOCK.stderr)} &$`),
      /until \[ -S \$R\/run\/aether\/agent\.sock \] && \[ -S \$R\/run\/aether\/mmds\.sock \]/,
      /^ {2}printf '%s\\n' "\$token" \| env -i PATH=\/usr\/bin:\/bin AETHER_UID=1000 \\$/,
      new RegExp(`chroot \\$R /usr/bin/node --import ${GUEST_PATHS.agent}/drop-privileges\\.mjs "\\$@" >\\$R/run/out 2>\\$R/run/err &$`),
      /^ {2}log agent-started$/,
      /^ {2}trap 'kill -TERM \$agent 2>\/dev\/null' INT TERM$/,
      /^ {2}await_agent$/,
      /^ {2}reboot -f$/,
    ]);
    assert.equal(steps.length, 23);
    assert.doesNotMatch(
      body,
      /poweroff|virtio-ports|serial/,
      'no power-off (Firecracker would not exit), no virtio-serial, no drive serials',
    );
  });
});

/** A real HTTP server with MMDS V2's session rules, serving `instance` at /aether once it is set. */
class MmdsV2 {
  instance: unknown;
  readonly requests: string[] = [];
  private readonly tokens = new Set<string>();
  readonly server: Server = createServer((req, res) => {
    this.requests.push(`${req.method} ${req.url}`);
    if (req.method === 'PUT' && req.url === '/latest/api/token') {
      if (!/^\d+$/.test(String(req.headers['x-metadata-token-ttl-seconds']))) return void res.writeHead(400).end('ttl header missing');
      const token = `t${this.tokens.size}`;
      this.tokens.add(token);
      return void res.writeHead(200).end(token);
    }
    if (req.method === 'GET' && req.url === '/aether') {
      if (!this.tokens.has(String(req.headers['x-metadata-token']))) return void res.writeHead(401).end('no valid session token');
      if (req.headers.accept !== 'application/json') return void res.writeHead(400).end('JSON only here');
      if (this.instance === undefined) return void res.writeHead(404).end('Resource not found: /aether.');
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.instance));
    }
    res.writeHead(405).end();
  });

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
}

describe('mmds-fetch.mjs against an MMDS V2 server', () => {
  const mmds = new MmdsV2();
  const seed = 'c'.repeat(64);
  const instance = { token: 'a'.repeat(64), config: { port: 3000 }, network: { ip: '172.30.0.7/24', gateway: '172.30.0.1' }, seed };
  before(async () => {
    mmds.server.listen(0, '127.0.0.1');
    await once(mmds.server, 'listening');
  });
  after(() => mmds.server.close());

  function fetchOnce() {
    const child = spawn(process.execPath, [path.join(agentDir(), 'mmds-fetch.mjs'), INIT_LOG_PREFIX, mmds.url], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    const done = once(child, 'close').then(([code]) => ({ code: code as number, stdout, stderr }));
    return { done, stderr: () => stderr };
  }

  test('a template says awaiting-config once, polls, and prints token, address and gateway when the instance arrives', async () => {
    mmds.instance = undefined;
    const fetch = fetchOnce();
    const deadline = Date.now() + 10_000;
    while (!fetch.stderr().includes('awaiting-config') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.match(fetch.stderr(), new RegExp(`^\\${INIT_LOG_PREFIX} awaiting-config up=\\d+\\.\\d+\\n$`));
    await new Promise((r) => setTimeout(r, 100)); // a few more polls, each with a fresh session
    mmds.instance = instance;
    const result = await fetch.done;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `${'a'.repeat(64)} 172.30.0.7/24 172.30.0.1 ${seed} 0\n`, 'no time: a booted guest keeps its clock');
    assert.equal(result.stderr.match(/awaiting-config/g)?.length, 1);
    const polls = mmds.requests.filter((r) => r === 'GET /aether').length;
    assert.ok(polls > 2, `polled ${polls} times`);
    assert.equal(mmds.requests.filter((r) => r === 'PUT /latest/api/token').length, polls, 'a token per poll');
  });

  test('a booted instance is read at once, without awaiting-config', async () => {
    mmds.instance = instance;
    const result = await fetchOnce().done;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, '');
  });

  test("a restored template's instance carries the host's time, printed for init to set", async () => {
    mmds.instance = { ...instance, time: 1_796_000_000 };
    const result = await fetchOnce().done;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `${'a'.repeat(64)} 172.30.0.7/24 172.30.0.1 ${seed} 1796000000\n`);
  });

  test('something that is not an instance is refused with the config exit code', async () => {
    mmds.instance = { token: 'x; reboot', network: { ip: '172.30.0.7/24', gateway: '172.30.0.1' } };
    const result = await fetchOnce().done;
    assert.equal(result.code, 78);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /not an instance/);
  });
});

describe('drop-privileges.mjs', { skip: skipUnless(process.getuid?.() === 0, 'drop-privileges.mjs tests need root') }, () => {
  const preload = () => path.join(agentDir(), 'drop-privileges.mjs');
  test('the agent runs as AETHER_UID, never root', async () => {
    const { stdout } = await run(
      process.execPath,
      ['--import', preload(), '-e', 'console.log(process.getuid(), process.getgid(), process.getgroups().join())'],
      {
        env: { AETHER_UID: '1000' },
      },
    );
    assert.equal(stdout, '1000 1000 1000\n', 'no supplementary groups but its own');
  });

  test('without a non-root AETHER_UID it refuses to start', async () => {
    for (const uid of [undefined, '0']) {
      const err = await run(process.execPath, ['--import', preload(), '-e', 'console.log("ran")'], {
        env: uid ? { AETHER_UID: uid } : {},
      }).then(
        () => assert.fail('ran'),
        (e: { code: number; stdout: string }) => e,
      );
      assert.equal(err.code, 78);
      assert.equal(err.stdout, '');
    }
  });
});

const QEMU = 'qemu-system-x86_64';
const hasQemu = await run(QEMU, ['--version']).then(
  () => true,
  () => false,
);

describe('the image in Firecracker mode, booted under QEMU/TCG', {
  skip: skipUnless(hasQemu, `the Firecracker-mode boot needs ${QEMU}, which is not installed`),
}, () => {
  const mmds = new MmdsV2();
  let work: string;
  let image: Awaited<ReturnType<typeof buildImage>>;
  let codeDisk: string;
  // QEMU's user network put in 169.254.169.0/24, so that guestfwd can answer for the MMDS address.
  const network = { ip: '169.254.169.15/24', gateway: '169.254.169.2' };

  before(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'fc-guest-'));
    await chmod(work, 0o755);
    image = await buildImage({ cacheDir: process.env.AETHER_TEST_VM_CACHE ?? path.join(work, 'cache') });
    const code = path.join(work, 'code');
    await mkdir(code, { mode: 0o755 });
    await writeFile(path.join(code, 'index.js'), 'exports.handler = async () => ({});\n', { mode: 0o644 });
    codeDisk = await new CodeDisks(path.join(work, 'disks')).diskFor(code);
    mmds.server.listen(0, '127.0.0.1');
    await once(mmds.server, 'listening');
  });
  after(async () => {
    mmds.server.close();
    await rm(work, { recursive: true, force: true });
  });

  /** Boots until the guest reboots (QEMU runs with -no-reboot) or `until` matches the console; returns the console. */
  async function boot(until: RegExp | undefined, timeoutMs: number): Promise<{ console: string; ended: boolean }> {
    const tsc = await hostTscKhz();
    const cmdline = [
      'reboot=k',
      'aether.vmm=firecracker',
      `aether.ip=${network.ip}`,
      `aether.gw=${network.gateway}`,
      `aether.node=${agentNodeArgs(128, GUEST_PATHS.agent).join(',')}`,
      ...(tsc ? [`tsc_early_khz=${tsc}`] : []),
    ];
    const port = (mmds.server.address() as AddressInfo).port;
    const qemu = spawn(
      QEMU,
      [
        ...machineArgs('tcg', 256, 1, image, cmdline),
        '-netdev',
        `user,id=n0,net=169.254.169.0/24,restrict=on,ipv6=off,guestfwd=tcp:169.254.169.254:80-tcp:127.0.0.1:${port}`,
        '-device',
        'virtio-net-device,netdev=n0',
        // Firecracker's order and no serials: root first (/dev/vda), code second (/dev/vdb).
        '-drive',
        `file=${image.rootfs},if=none,format=raw,readonly=on,id=root`,
        '-device',
        'virtio-blk-device,drive=root',
        '-drive',
        `file=${codeDisk},if=none,format=raw,readonly=on,id=code`,
        '-device',
        'virtio-blk-device,drive=code',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    const ended = once(qemu, 'close').then(() => true);
    const matched = new Promise<boolean>((resolve) => {
      for (const stream of [qemu.stdout, qemu.stderr]) {
        stream.on('data', (d: Buffer) => {
          output += d.toString().replace(/\r/g, '');
          if (until?.test(output)) resolve(false);
        });
      }
    });
    const timer = setTimeout(() => qemu.kill('SIGKILL'), timeoutMs);
    const result = await Promise.race([ended, matched]);
    qemu.kill('SIGKILL');
    clearTimeout(timer);
    await ended;
    return { console: output, ended: result };
  }

  test('a booted instance: disks by order, the instance from MMDS V2, then the vsock relays, which QEMU cannot serve', async () => {
    mmds.instance = { token: 'ab'.repeat(32), config: {}, network, seed: 'cd'.repeat(32) };
    mmds.requests.length = 0;
    const { console: out, ended } = await boot(undefined, 60_000);
    assert.ok(ended, `the guest rebooted by itself:\n${out}`);
    const lines = inOrder(out, [
      /\[aether-init\] start /,
      /\[aether-init\] devices /,
      /\[aether-init\] mounted /,
      /\[aether-init\] config /,
      /\[aether-init\] agent-started /,
      /socat.*VSOCK|AF=40 cid:2 port:10\d\d.*No such device/,
      /\[aether-init\] agent exited status=78 /,
      /reboot: Restarting system/,
    ]);
    assert.match(lines[5]!, /No such device/, 'the failure is the missing vsock device, nothing before it');
    assert.doesNotMatch(out, /fatal:|awaiting-config/);
    assert.deepEqual(mmds.requests.slice(0, 2), ['PUT /latest/api/token', 'GET /aether'], 'one V2 session, one read');
  });

  test('a template (no instance in MMDS) says awaiting-config and keeps polling', async () => {
    mmds.instance = undefined;
    mmds.requests.length = 0;
    // Stop only once the whole line is out: the console arrives in chunks that can split it.
    const { console: out } = await boot(/awaiting-config up=\S*\n/, 60_000);
    inOrder(out, [/\[aether-init\] mounted /, /\[aether-init\] awaiting-config up=/]);
    assert.doesNotMatch(out, /fatal:|\[aether-init\] config /);
    assert.ok(mmds.requests.includes('GET /aether'));
  });
});
