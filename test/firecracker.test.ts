/**
 * The Firecracker driver against the API double (test/helpers/firecracker-double.ts), which the
 * driver spawns for real as `firecracker` from test/helpers/fake-bin (first on PATH). No guest boots:
 * the double plays the guest with the real agent. (a) the double against Firecracker's spec,
 * (b) the driver's calls, errors, stop and snapshots, (c) the host network plan.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AetherError } from '../src/core/errors.js';
import type { InstanceHandle, InstanceSpec } from '../src/core/ports.js';
import { FirecrackerApi, FirecrackerFault } from '../src/adapters/isolation/microvm/firecracker/api.js';
import { FirecrackerDriver } from '../src/adapters/isolation/microvm/firecracker/driver.js';
import { jailerCommand, jailerConfig, vmCgroups } from '../src/adapters/isolation/microvm/firecracker/jailer.js';
import {
  bridgePlan,
  DEFAULT_NETWORK,
  HostNetwork,
  IpPool,
  nftRuleset,
  tapPlan,
  type Command,
} from '../src/adapters/isolation/microvm/firecracker/network.js';
import { FirecrackerDouble, REQUIRED } from './helpers/firecracker-double.js';
import { findReference } from './helpers/reference.ts';
import { requireOrSkip, skipUnless } from './helpers/skip.ts';

const apiSpec = findReference('firecracker-api.yaml', 'AETHER_FIRECRACKER_SPEC');
const SPEC_FILE = apiSpec.file ?? '';
const noSpec = `Firecracker's API spec was not found (looked in ${apiSpec.looked.join(', ')}; AETHER_FIRECRACKER_SPEC names it)`;
process.env.PATH = `${path.resolve('test/helpers/fake-bin')}:${process.env.PATH}`;

let work: string;
let requestLog: string;
const commands: Command[] = [];
let driver: FirecrackerDriver;
let image: { kernel: string; initrd: string; rootfs: string };
let code: string;

before(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'fc-'));
  await chmod(work, 0o755);
  requestLog = path.join(work, 'requests.jsonl');
  process.env.FC_DOUBLE_LOG = requestLog;
  image = { kernel: path.join(work, 'vmlinux'), initrd: path.join(work, 'initrd.gz'), rootfs: path.join(work, 'rootfs.ext4') };
  for (const file of Object.values(image)) await writeFile(file, 'not a real image: the double only checks it exists');
  code = path.join(work, 'code');
  await mkdir(code, { mode: 0o755 });
  await writeFile(
    path.join(code, 'index.js'),
    'console.log("loaded on " + process.env.GREETING);\nexports.handler = async (event) => ({ greeting: process.env.GREETING, path: event.path });\n',
    { mode: 0o644 },
  );
  driver = await FirecrackerDriver.create({
    runDir: path.join(work, 'run'),
    cacheDir: path.join(work, 'cache'),
    image,
    network: new HostNetwork(DEFAULT_NETWORK, async (command) => void commands.push(command)),
  });
});

after(async () => {
  await rm(work, { recursive: true, force: true });
});

interface Logged {
  key: string;
  body: Record<string, unknown>;
}

/** The requests the double received since `from` (an offset into the log). */
function logged(from = 0): Logged[] {
  if (!existsSync(requestLog)) return [];
  return readFileSync(requestLog, 'utf8')
    .slice(from)
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Logged);
}
const logSize = () => (existsSync(requestLog) ? readFileSync(requestLog, 'utf8').length : 0);

function spec(id: string, extra: Partial<InstanceSpec> = {}, logs: string[] = []): InstanceSpec {
  return {
    instanceId: `${id}-${Date.now().toString(36)}`,
    functionId: id,
    codeDir: code,
    env: { GREETING: 'hello' },
    port: 3000,
    memoryMb: 128,
    vcpu: 1,
    concurrency: 1,
    startTimeoutMs: 20_000,
    onLog: (stream, line) => logs.push(`${stream}: ${line}`),
    ...extra,
  };
}

async function invoke(instance: InstanceHandle, urlPath: string): Promise<{ status: number; body: string }> {
  const socket = await instance.connect();
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = request({ createConnection: () => socket, path: urlPath, headers: { host: 'fn' } }, resolve);
    req.on('error', reject);
    req.end();
  });
  let body = '';
  for await (const chunk of res) body += chunk;
  socket.destroy();
  return { status: res.statusCode!, body };
}

/** The subset of YAML the spec uses that we need: paths with methods and body refs, definitions' required/properties/enums. */
function readSpec(text: string) {
  const paths = new Map<string, string | undefined>(); // "PUT /x" -> body definition
  const defs = new Map<string, { required: string[]; properties: string[]; enums: Map<string, string[]> }>();
  let section = '';
  let current: string | undefined;
  let def: { required: string[]; properties: string[]; enums: Map<string, string[]> } | undefined;
  let list: 'required' | 'properties' | undefined;
  let prop: string | undefined;
  let enumOf: string | undefined;
  let pathName = '';
  let inBody = false;
  for (const line of text.split('\n')) {
    const top = /^(\w+):/.exec(line);
    if (top) section = top[1]!;
    if (section === 'paths') {
      const p = /^ {2}(\/\S*):$/.exec(line);
      if (p) pathName = p[1]!;
      const m = /^ {4}(get|put|patch|post|delete):$/.exec(line);
      if (m) {
        current = `${m[1]!.toUpperCase()} ${pathName}`;
        paths.set(current, undefined);
        inBody = false;
      }
      if (/^ {10}in: body$/.test(line)) inBody = true;
      const ref = /^\s+\$ref: "#\/definitions\/(\w+)"$/.exec(line);
      if (ref && inBody && current && paths.get(current) === undefined) paths.set(current, ref[1]);
      if (/^ {6}responses:$/.test(line)) inBody = false;
    } else if (section === 'definitions') {
      const d = /^ {2}(\w+):$/.exec(line);
      if (d) defs.set(d[1]!, (def = { required: [], properties: [], enums: new Map() }));
      if (/^ {4}required:$/.test(line)) list = 'required';
      else if (/^ {4}properties:$/.test(line)) list = 'properties';
      else if (/^ {4}\w/.test(line)) list = undefined;
      const item = /^ {6}- (\w+)$/.exec(line);
      if (item && list === 'required') def?.required.push(item[1]!);
      const p = /^ {6}(\w+):$/.exec(line);
      if (p && list === 'properties') def?.properties.push((prop = p[1]!));
      const inlineEnum = /^ {8}enum: \[(.*)\]$/.exec(line);
      if (inlineEnum && prop)
        def?.enums.set(
          prop,
          inlineEnum[1]!.split(',').map((v) => v.trim().replace(/"/g, '')),
        );
      enumOf = /^ {8}enum:$/.test(line) ? prop : /^ {10}- /.test(line) ? enumOf : undefined;
      const value = /^ {10}- (\w+)$/.exec(line);
      if (value && enumOf && prop) def?.enums.set(prop, [...(def.enums.get(prop) ?? []), value[1]!]);
    }
  }
  return { paths, defs };
}

describe('the double against the spec', { skip: skipUnless(apiSpec.file !== undefined, noSpec) }, () => {
  test('every call the double serves is in the spec, requiring exactly the fields the spec requires', async () => {
    const { paths, defs } = readSpec(await readFile(SPEC_FILE, 'utf8'));
    assert.ok(paths.size > 20 && defs.size > 30, `the reader found ${paths.size} paths and ${defs.size} definitions`);
    for (const [key, { definition, fields }] of Object.entries(REQUIRED)) {
      assert.ok(paths.has(key), `${key} is not in the spec`);
      assert.equal(paths.get(key), definition, `${key}: body schema`);
      if (definition) assert.deepEqual([...fields].sort(), [...defs.get(definition)!.required].sort(), `${key}: required fields`);
    }
  });
});

describe('the double enforces the rules', () => {
  let double: FirecrackerDouble;
  let api: FirecrackerApi;
  before(async () => {
    const socket = path.join(work, 'rules.sock');
    double = await FirecrackerDouble.listen(socket, { guest: 'silent', console: () => {}, onGuestExit: () => {} });
    api = new FirecrackerApi(socket);
  });
  after(() => double.close());

  const refused = async (call: Promise<unknown>, pattern: RegExp) => {
    const err = await call.then(
      () => assert.fail('accepted'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof FirecrackerFault && err.status === 400, String(err));
    assert.match(err.faultMessage, pattern);
  };

  test('pre-boot and post-boot ordering, required fields, unknown paths', async () => {
    await refused(api.put('/machine-config', { vcpu_count: 1 }), /missing field `mem_size_mib`/);
    await refused(api.put('/nope', {}), /Invalid request method and\/or path: PUT \/nope/);
    await refused(api.put('/actions', { action_type: 'InstanceStart' }), /without kernel/);
    await refused(api.patch('/vm', { state: 'Paused' }), /before starting/);
    await api.put('/boot-source', { kernel_image_path: image.kernel });
    await refused(api.put('/actions', { action_type: 'InstanceStart' }), /root block device/);
    await refused(api.put('/snapshot/load', { snapshot_path: image.rootfs, mem_file_path: image.rootfs }), /not allowed after configuring/);
    await refused(api.put('/mmds/config', { network_interfaces: ['eth0'] }), /does not correspond/);
    await api.put('/drives/rootfs', { drive_id: 'rootfs', path_on_host: image.rootfs, is_root_device: true, is_read_only: true });
    await api.put('/actions', { action_type: 'InstanceStart' });
    assert.equal((await api.get<{ state: string }>('/')).state, 'Running');
    await refused(api.put('/machine-config', { vcpu_count: 1, mem_size_mib: 128 }), /not supported after starting/);
    await refused(api.put('/snapshot/create', { snapshot_path: path.join(work, 's'), mem_file_path: path.join(work, 'm') }), /not paused/);
    await api.patch('/vm', { state: 'Paused' });
    await api.put('/snapshot/create', { snapshot_type: 'Full', snapshot_path: path.join(work, 's'), mem_file_path: path.join(work, 'm') });
  });
});

describe('the driver against the double', () => {
  test('boots with the calls in order, serves a request, stops with SendCtrlAltDel', async () => {
    process.env.FC_DOUBLE_GUEST = 'agent';
    const from = logSize();
    const logs: string[] = [];
    const s = spec('hello', {}, logs);
    const instance = await driver.start(s);
    const reply = await invoke(instance, '/some/path');
    assert.equal(reply.status, 200, reply.body);
    assert.deepEqual(JSON.parse(reply.body), { greeting: 'hello', path: '/some/path' });
    const calls = logged(from);
    assert.deepEqual(
      calls.map((c) => `${c.key}${c.key === 'PUT /actions' ? ` ${String(c.body.action_type)}` : ''}`),
      [
        'GET /',
        'PUT /machine-config',
        'PUT /boot-source',
        'PUT /drives/{drive_id}',
        'PUT /drives/{drive_id}',
        'PUT /network-interfaces/{iface_id}',
        'PUT /vsock',
        'PUT /mmds/config',
        'PUT /mmds',
        'PUT /actions InstanceStart',
        'PUT /mmds',
      ],
    );
    assert.deepEqual(calls.at(-1)!.body, {}, 'MMDS is wiped once the agent is ready');
    const mmds = calls.at(-3)!.body.aether as {
      token: string;
      config: { env: Record<string, string>; port: number };
      network: { ip: string };
      seed: string;
      time?: number;
    };
    assert.match(mmds.token, /^[0-9a-f]{64}$/);
    assert.match(mmds.seed, /^[0-9a-f]{64}$/, 'random bytes for the guest kernel');
    assert.equal(mmds.time, undefined, 'a booted guest keeps the clock it booted with');
    assert.deepEqual(mmds.config.env, { GREETING: 'hello' });
    assert.equal(mmds.network.ip, '172.30.0.2/24');
    assert.equal(calls[1]!.body.mem_size_mib, 128 + 64);
    assert.match(String(calls[2]!.body.boot_args), /aether\.vmm=firecracker aether\.ip=172\.30\.0\.2\/24 aether\.gw=172\.30\.0\.1 /);
    assert.deepEqual(calls[5]!.body, { iface_id: 'eth0', host_dev_name: 'aetap2', guest_mac: '06:00:ac:1e:00:02' });
    assert.deepEqual(calls[7]!.body, { version: 'V2', network_interfaces: ['eth0'] });
    assert.ok(logs.includes('stdout: loaded on hello'), logs.join('\n'));
    // Its boot, phase by phase, from init's console lines (the cold-start metrics take them from here).
    const boot = instance.boot!;
    assert.ok(boot, 'a booted VM reports its boot phases');
    for (const phase of ['vmm', 'kernel', 'init', 'agent'] as const) assert.ok(Number(boot[phase]) >= 0, `${phase}: ${boot[phase]}`);

    const stopped = Date.now();
    await instance.stop(10_000);
    assert.ok(Date.now() - stopped < 5000, 'the guest stopped on ctrl-alt-del, not by the kill');
    const exit = await instance.exited;
    assert.equal(exit.reason, 'stopped');
    assert.deepEqual(logged(from).at(-1), { key: 'PUT /actions', body: { action_type: 'SendCtrlAltDel' } });
    assert.deepEqual(commands.at(-1), { argv: ['ip', 'link', 'del', 'aetap2'] });
    assert.equal(existsSync(path.join(work, 'run', s.instanceId)), false, 'the instance directory is removed');
  });

  test('a guest that ignores ctrl-alt-del is killed after the grace period', async () => {
    process.env.FC_DOUBLE_GUEST = 'deaf';
    const instance = await driver.start(spec('deaf'));
    const stopped = Date.now();
    await instance.stop(300);
    const exit = await instance.exited;
    assert.ok(Date.now() - stopped >= 300);
    assert.equal(exit.signal, 'SIGKILL');
    assert.equal(exit.reason, 'stopped');
  });

  test("the guest's report of the agent's exit condemns the instance at once and ends it, whatever its power-off does", async () => {
    process.env.FC_DOUBLE_GUEST = 'lingering';
    const exiting = path.join(work, 'exiting');
    await mkdir(exiting, { mode: 0o755 });
    await writeFile(
      path.join(exiting, 'index.js'),
      "exports.handler = async (event) => { if (event.path === '/exit') setTimeout(() => process.exit(3), 50); return 'bye'; };\n",
      { mode: 0o644 },
    );
    const instance = await driver.start(spec('lingering', { codeDir: exiting }));
    assert.equal((await invoke(instance, '/exit')).body, 'bye');
    assert.equal(await instance.condemned, 'exited with code 3');
    await assert.rejects(instance.connect(), (err: AetherError) => err.code === 'instance_stopped');
    const condemnedAt = Date.now();
    const exit = await instance.exited; // the double never ends by itself: only the host's kill ends it
    assert.ok(Date.now() - condemnedAt < 3000, `ended ${Date.now() - condemnedAt} ms after the report`);
    assert.deepEqual([exit.code, exit.signal, exit.reason], [3, null, 'exited with code 3']);
  });

  test("Firecracker's fault message is the start error, and nothing is left behind", async () => {
    process.env.FC_DOUBLE_GUEST = 'agent';
    const broken = new FirecrackerDriver(
      {
        runDir: path.join(work, 'run'),
        cacheDir: path.join(work, 'cache'),
        network: new HostNetwork(DEFAULT_NETWORK, async (c) => void commands.push(c)),
      },
      { ...image, kernel: path.join(work, 'missing-vmlinux') },
    );
    const s = spec('broken');
    const err = await broken.start(s).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof AetherError && err.status === 502 && err.code === 'start_failed', String(err));
    assert.match(err.message, /firecracker refused PUT \/boot-source: 400 Unable to open the kernel file .*missing-vmlinux/);
    assert.equal(existsSync(path.join(work, 'run', s.instanceId)), false);
    assert.deepEqual(commands.at(-1), { argv: ['ip', 'link', 'del', 'aetap2'] });
  });

  test('a guest that never gets ready times out', async () => {
    process.env.FC_DOUBLE_GUEST = 'silent';
    const err = await driver.start(spec('silent', { startTimeoutMs: 500 })).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof AetherError && err.code === 'start_timeout', String(err));
  });

  test('probe: a boot that reports probe-ok passes; no usable KVM device fails', async () => {
    process.env.FC_DOUBLE_GUEST = 'agent';
    const device = path.join(work, 'kvm');
    await writeFile(device, '');
    const ok = await driver.probe(5000, device);
    assert.equal(ok.ok, true, ok.detail);
    const missing = await driver.probe(5000, path.join(work, 'no-kvm'));
    assert.deepEqual(missing, { ok: false, detail: `${path.join(work, 'no-kvm')} is not usable` });
  });

  test('snapshot of a generic VM, then a cold start restores it', async () => {
    process.env.FC_DOUBLE_GUEST = 'agent';
    const from = logSize();
    const snap = await driver.snapshot(path.join(work, 'snap'), 128, 1, 10_000);
    assert.ok(existsSync(snap.snapshotPath) && existsSync(snap.memPath));
    const created = logged(from).map((c) => c.key);
    assert.ok(!created.slice(0, created.indexOf('PUT /actions')).includes('PUT /mmds'), 'the template has no instance in MMDS');
    assert.deepEqual(created.slice(-2), ['PATCH /vm', 'PUT /snapshot/create']);

    const restoredFrom = logSize();
    const instance = await driver.start(spec('restored'));
    assert.deepEqual(JSON.parse((await invoke(instance, '/r')).body), { greeting: 'hello', path: '/r' });
    const calls = logged(restoredFrom);
    assert.deepEqual(
      calls.map((c) => c.key),
      ['GET /', 'PUT /snapshot/load', 'PATCH /drives/{drive_id}', 'PUT /mmds', 'PUT /mmds'],
    );
    const load = calls[1]!.body;
    assert.equal(load.resume_vm, true);
    assert.deepEqual(load.network_overrides, [{ iface_id: 'eth0', host_dev_name: 'aetap2' }]);
    assert.match(String((load.vsock_override as { uds_path: string }).uds_path), /restored-.*\/vsock$/);
    assert.match(String(calls[2]!.body.path_on_host), /code\/[0-9a-f]{64}\.ext4$/);
    // The resumed guest's clock is the template's: it gets the host's, and its own random bytes.
    const handed = calls[3]!.body.aether as { seed: string; time: number };
    assert.ok(Math.abs(handed.time * 1000 - Date.now()) < 30_000, `time ${handed.time}`);
    assert.match(handed.seed, /^[0-9a-f]{64}$/);
    assert.equal(instance.boot, undefined, 'a restored VM did not boot: no boot phases');
    await instance.stop();
  });

  test('every call the driver made exists in the spec, with only fields the spec defines', async (t) => {
    if (!requireOrSkip(t, apiSpec.file !== undefined, noSpec)) return;
    const { paths, defs } = readSpec(await readFile(SPEC_FILE, 'utf8'));
    const seen = new Set<string>();
    for (const { key, body } of logged()) {
      seen.add(key);
      assert.ok(paths.has(key), key);
      const def = defs.get(paths.get(key) ?? '');
      if (!def?.properties.length) continue; // free-form (MMDS contents)
      for (const [field, value] of Object.entries(body)) {
        assert.ok(def.properties.includes(field), `${key}: ${field} is not in ${paths.get(key)}`);
        const allowed = def.enums.get(field);
        if (allowed) assert.ok(allowed.includes(String(value)), `${key}: ${field}=${String(value)} not in ${allowed.join(',')}`);
      }
    }
    for (const key of ['PUT /snapshot/load', 'PUT /snapshot/create', 'PATCH /vm', 'PATCH /drives/{drive_id}', 'PUT /vsock'])
      assert.ok(seen.has(key), key);
    const backend = defs.get('MemoryBackend')!;
    assert.deepEqual(backend.required.sort(), ['backend_path', 'backend_type']);
    assert.ok(backend.enums.get('backend_type')!.includes('File'));
  });
});

describe('the driver through the jailer (FIRECRACKER_JAILER, fake-bin/jailer)', () => {
  const jailerBin = path.resolve('test/helpers/fake-bin/jailer');
  const jailBase = () => path.join(work, 'run', 'jail');
  let jailed: FirecrackerDriver;
  let jailerLog: string;
  const jailerCalls = () =>
    readFileSync(jailerLog, 'utf8')
      .split('--end--\n')
      .filter(Boolean)
      .map((call) => call.split('\n').slice(0, -1));

  before(async () => {
    jailerLog = path.join(work, 'jailer.log');
    process.env.FC_JAILER_LOG = jailerLog;
    process.env.FC_DOUBLE_GUEST = 'agent';
    // The jailed double runs as uid 200000 and appends to the request log.
    await writeFile(requestLog, '', { flag: 'a' });
    await chmod(requestLog, 0o666);
    jailed = await FirecrackerDriver.create({
      runDir: path.join(work, 'run'),
      cacheDir: path.join(work, 'cache'),
      image,
      network: new HostNetwork(DEFAULT_NETWORK, async (command) => void commands.push(command)),
      jailer: jailerConfig(jailerBin, path.join(work, 'run')),
    });
  });

  test('spawns Firecracker through the jailer, as its own uid, with every file inside the chroot', async () => {
    const from = logSize();
    const s = spec('jailed');
    const instance = await jailed.start(s);
    const reply = await invoke(instance, '/j');
    assert.deepEqual(JSON.parse(reply.body), { greeting: 'hello', path: '/j' });

    assert.deepEqual(jailerCalls().at(-1), [
      '--id',
      s.instanceId,
      '--exec-file',
      path.resolve('test/helpers/fake-bin/firecracker'),
      '--uid',
      '200000',
      '--gid',
      '200000',
      '--chroot-base-dir',
      jailBase(),
      '--cgroup-version',
      '1',
      '--cgroup',
      `memory.limit_in_bytes=${(128 + 64 + 64) * 1024 * 1024}`,
      '--cgroup',
      'cpu.cfs_period_us=100000',
      '--cgroup',
      'cpu.cfs_quota_us=100000',
      '--',
      '--api-sock',
      '/firecracker.sock',
    ]);
    const root = path.join(jailBase(), 'firecracker', s.instanceId, 'root');
    const calls = logged(from);
    const body = (key: string, n = 0) => calls.filter((c) => c.key === key)[n]!.body;
    assert.equal(body('PUT /boot-source').kernel_image_path, '/vmlinux');
    assert.equal(body('PUT /boot-source').initrd_path, '/initrd.gz');
    assert.equal(body('PUT /drives/{drive_id}', 0).path_on_host, '/rootfs.ext4');
    assert.match(String(body('PUT /drives/{drive_id}', 1).path_on_host), /^\/[0-9a-f]{64}\.ext4$/);
    assert.equal(body('PUT /vsock').uds_path, '/vsock');
    for (const [inside, host] of [
      ['vmlinux', image.kernel],
      ['rootfs.ext4', image.rootfs],
    ] as const) {
      assert.equal((await stat(path.join(root, inside))).ino, (await stat(host)).ino, `${inside} is a hard link`);
    }
    assert.equal((await stat(path.join(root, 'firecracker.sock'))).uid, 200000, 'Firecracker runs as the jailed uid');
    assert.ok(
      commands.some((c) => c.argv.join(' ') === 'ip tuntap add dev aetap2 mode tap user 200000'),
      'the TAP belongs to that uid',
    );

    await instance.stop(10_000);
    assert.equal((await instance.exited).reason, 'stopped');
    assert.equal(existsSync(path.join(jailBase(), 'firecracker', s.instanceId)), false, 'the jail is removed');
  });

  test('snapshot and restore through the jailer: the files move in and out of the chroots', async () => {
    const snap = await jailed.snapshot(path.join(work, 'jailed-snap'), 128, 1, 10_000);
    assert.ok(existsSync(snap.snapshotPath) && existsSync(snap.memPath));
    const from = logSize();
    const s = spec('jailed-restore');
    const instance = await jailed.start(s);
    assert.deepEqual(JSON.parse((await invoke(instance, '/r')).body), { greeting: 'hello', path: '/r' });
    const load = logged(from).find((c) => c.key === 'PUT /snapshot/load')!.body;
    assert.equal(load.snapshot_path, '/vm.snap');
    assert.deepEqual(load.mem_backend, { backend_type: 'File', backend_path: '/vm.mem' });
    assert.deepEqual(load.vsock_override, { uds_path: '/vsock' });
    const root = path.join(jailBase(), 'firecracker', s.instanceId, 'root');
    assert.ok(existsSync(path.join(root, 'rootfs.ext4')), 'the drives the snapshot names are in the new chroot');
    await instance.stop(10_000);
    assert.deepEqual(await readdir(path.join(jailBase(), 'firecracker')), [], 'no jail is left behind');
  });
});

describe('host network plan', () => {
  test('addresses: lowest free first, reused after release, exhaustion is an error', () => {
    const pool = new IpPool('10.9.0.0/29');
    assert.deepEqual([pool.take(), pool.take(), pool.take()], [2, 3, 4]);
    pool.release(3);
    assert.equal(pool.take(), 3);
    assert.deepEqual([pool.take(), pool.take()], [5, 6]);
    assert.throws(() => pool.take(), /no free address left in 10\.9\.0\.0\/29/);
    assert.deepEqual(pool.attachment(6, 'aetap'), { tap: 'aetap6', guestIp: '10.9.0.6/29', gateway: '10.9.0.1', mac: '06:00:0a:09:00:06' });
    assert.throws(() => new IpPool('10.9.0.1/24'), /host bits/);
  });

  test('rules: guests reach neither each other nor the host; egress only when enabled, NATed, never to private ranges', () => {
    const closed = nftRuleset(DEFAULT_NETWORK);
    assert.match(closed, /table bridge aether \{[^}]*iifname "aetap\*" oifname "aetap\*" drop/);
    assert.match(closed, /chain input \{[^}]*iifname "aebr0" drop/);
    assert.match(closed, /chain forward \{\n[^\n]*\n {4}iifname "aebr0" drop\n {4}oifname "aebr0" drop/);
    assert.doesNotMatch(closed, /masquerade|accept\n/);
    const open = nftRuleset({ ...DEFAULT_NETWORK, egress: { uplink: 'eth0' } });
    assert.match(
      open,
      /iifname "aebr0" ip daddr \{ 10\.0\.0\.0\/8, 172\.16\.0\.0\/12, 192\.168\.0\.0\/16, 169\.254\.0\.0\/16, [^}]*\} drop[^\n]*\n[^\n]*oifname "eth0" ip saddr 172\.30\.0\.0\/24 accept/,
    );
    assert.match(open, /ip saddr 172\.30\.0\.0\/24 oifname "eth0" masquerade/);
  });

  test('plans: bridge once, a TAP per instance, torn down on release; a failed TAP frees its address', async () => {
    assert.deepEqual(
      bridgePlan(DEFAULT_NETWORK).map((c) => c.argv.join(' ')),
      ['ip link add aebr0 type bridge', 'ip addr add 172.30.0.1/24 dev aebr0', 'ip link set aebr0 up', 'nft -f -'],
    );
    assert.ok(
      bridgePlan({ ...DEFAULT_NETWORK, egress: { uplink: 'eth0' } }).some((c) => c.argv.join(' ') === 'sysctl -w net.ipv4.ip_forward=1'),
    );
    assert.deepEqual(tapPlan(DEFAULT_NETWORK, 'aetap7', 1234)[0]!.argv, [
      'ip',
      'tuntap',
      'add',
      'dev',
      'aetap7',
      'mode',
      'tap',
      'user',
      '1234',
    ]);
    const ran: string[] = [];
    const net = new HostNetwork(DEFAULT_NETWORK, async ({ argv }) => {
      ran.push(argv.join(' '));
      if (argv.includes('aetap3') && argv.includes('master')) throw new Error('boom');
    });
    const a = await net.attach();
    await assert.rejects(net.attach(), /boom/);
    assert.equal(ran.filter((c) => c.startsWith('ip link add aebr0')).length, 1);
    assert.ok(ran.includes('ip link del aetap3'), 'the half-made TAP is removed');
    await a.release();
    await a.release();
    assert.equal(ran.filter((c) => c === 'ip link del aetap2').length, 1, 'release is idempotent');
    assert.equal((await net.attach()).tap, 'aetap2', 'addresses are reused');
  });

  test('jailer command line', () => {
    const opts = {
      jailer: '/usr/bin/jailer',
      firecracker: '/usr/bin/firecracker',
      id: 'inst-1',
      uid: 10001,
      gid: 10001,
      chrootBase: '/srv/jailer',
      cgroupVersion: 1 as const,
      cgroups: vmCgroups(1, 192, 0.5),
      newPidNs: true,
      firecrackerArgs: ['--api-sock', '/run/firecracker.sock'],
    };
    const cmd = jailerCommand(opts);
    assert.equal(cmd.chrootRoot, '/srv/jailer/firecracker/inst-1/root');
    assert.deepEqual(cmd.args, [
      '--id',
      'inst-1',
      '--exec-file',
      '/usr/bin/firecracker',
      '--uid',
      '10001',
      '--gid',
      '10001',
      '--chroot-base-dir',
      '/srv/jailer',
      '--cgroup-version',
      '1',
      '--cgroup',
      `memory.limit_in_bytes=${256 * 1024 * 1024}`,
      '--cgroup',
      'cpu.cfs_period_us=100000',
      '--cgroup',
      'cpu.cfs_quota_us=50000',
      '--new-pid-ns',
      '--',
      '--api-sock',
      '/run/firecracker.sock',
    ]);
    assert.deepEqual(vmCgroups(2, 128, 2), { 'memory.max': String(192 * 1024 * 1024), 'cpu.max': '200000 100000' });
    assert.throws(() => jailerCommand({ ...opts, id: 'bad/id' }), /must be/);
  });
});
