/**
 * MicroVM cold start, phase by phase: the QEMU driver started directly (no Aether server in front:
 * its few ms of routing are noise next to a boot of seconds), one fresh VM per sample, each asked
 * for one response; booted, then resumed from the driver's snapshot, each resume with a function
 * never run before (its own code disk). The phases are the driver's own timings (`VmInstance.boot`
 * and `.restore`: the host's clock at QMP's and init's events), not estimates; first byte and the
 * total are timed here.
 *
 * One mode (handler): the mode only changes what the agent loads (ms), the boot costs seconds, and
 * every sample is a whole VM boot (5-7 s under TCG). Sandboxes show the modes side by side.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { QemuDriver } from '../src/adapters/isolation/microvm/qemu/driver.js';
import type { VmInstance } from '../src/adapters/isolation/microvm/qemu/vm.js';
import { functionFiles, type Mode } from './functions.js';
import { summarize, type Summary } from './stats.js';

const MODE: Mode = 'handler';
const START_TIMEOUT_MS = 60_000;
const RESPONSE_TIMEOUT_MS = 10_000;
/** The function's memory: the guest gets the driver's overhead on top. */
const MEMORY_MB = 128;

export interface MicroVmRow {
  driver: 'qemu';
  /** tcg or kvm, and why (the driver's probe). */
  accel: string;
  accel_detail: string;
  mode: Mode;
  /** QEMU start, firmware, kernel load and decompression: until the guest's clock starts. */
  vmm: Summary;
  /** Guest kernel boot until /init runs. */
  kernel: Summary;
  /** /init: modules, devices, network, mounts. */
  init: Summary;
  /** node start, config, function load, until the agent takes connections. */
  agent: Summary;
  /** QEMU spawned -> agent ready (the sum of the four). */
  ready: Summary;
  /** Agent ready -> first response byte of the first request. */
  first_byte: Summary;
  /** driver.start() called -> first response byte (includes the host's preparation: code disk, channel). */
  cold_start: Summary;
  /** Resumed from a snapshot instead (undefined: the snapshot could not be built, `snapshot_error` says why). */
  snapshot?: SnapshotRow;
  snapshot_error?: string;
}

export interface SnapshotRow {
  /** The snapshot's template: booted until its agent waits, then migrated to a file (once). */
  build_ms: number;
  /** QEMU start and loading the state until the guest runs. */
  restore: Summary;
  /** Clock, RNG, the code disk attached and mounted. */
  code: Summary;
  /** The agent: config, loading the function, until it takes connections. */
  agent: Summary;
  /** QEMU spawned -> agent ready. */
  ready: Summary;
  first_byte: Summary;
  /** driver.start() of a function never run -> first response byte. */
  cold_start: Summary;
}

/**
 * Where the guest image and code disks live between runs: Aether's own default for root (the
 * kernel download and image build happen once), else a directory under the temp dir.
 */
function cacheDir(): string {
  return process.env.AETHER_VM_CACHE ?? (process.getuid?.() === 0 ? '/var/cache/aether/vm' : path.join(os.tmpdir(), 'aether-bench-vm'));
}

export async function measureMicroVm(samples: number, progress: (what: string) => void): Promise<MicroVmRow> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'aether-bench-vm-'));
  try {
    await fs.chmod(work, 0o711);
    const code = path.join(work, 'code');
    await fs.mkdir(code, { mode: 0o755 });
    for (const [name, text] of Object.entries(functionFiles(MODE))) await fs.writeFile(path.join(code, name), text, { mode: 0o644 });
    const options = { runDir: path.join(work, 'run'), cacheDir: cacheDir(), accel: 'auto' as const };
    // Boots without snapshots: no template built meanwhile, competing for the CPU.
    const driver = await QemuDriver.create({ ...options, snapshots: false, onProgress: (m) => progress(`microvm image: ${m}`) });
    progress(`microvm: qemu ${driver.accel.accel} (${driver.accel.detail}), ${samples} boots`);
    const taken: Sample[] = [];
    for (let i = 0; i < samples; i++) taken.push(await sample(driver, code, i));
    const of = (pick: (s: Sample) => number) => summarize(taken.map(pick));
    const snapshot = await measureSnapshots(await QemuDriver.create(options), work, samples, progress).then(
      (row) => ({ snapshot: row }),
      (err: unknown) => ({ snapshot_error: err instanceof Error ? err.message : String(err) }),
    );
    return {
      ...snapshot,
      driver: 'qemu',
      accel: driver.accel.accel,
      accel_detail: driver.accel.detail,
      mode: MODE,
      vmm: of((s) => s.vmm),
      kernel: of((s) => s.kernel),
      init: of((s) => s.init),
      agent: of((s) => s.agent),
      ready: of((s) => s.total),
      first_byte: of((s) => s.firstByte),
      cold_start: of((s) => s.coldStart),
    };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** The snapshot built first (timed), then one resume per sample, each of a function never run before. */
async function measureSnapshots(driver: QemuDriver, work: string, samples: number, progress: (what: string) => void): Promise<SnapshotRow> {
  progress(`microvm: building the snapshot, then ${samples} resumes of fresh functions`);
  const t0 = performance.now();
  await driver.prepareSnapshot({ memoryMb: MEMORY_MB, vcpu: 1, port: 3000 });
  const buildMs = performance.now() - t0;
  const taken: Array<{ restore: number; code: number; agent: number; total: number; firstByte: number; coldStart: number }> = [];
  for (let i = 0; i < samples; i++) {
    const code = path.join(work, `fresh-${i}`);
    await fs.mkdir(code, { mode: 0o755 });
    for (const [name, text] of Object.entries(functionFiles(MODE))) {
      await fs.writeFile(path.join(code, name), `${text}\n// fresh function ${i} ${Date.now()}\n`, { mode: 0o644 });
    }
    const { instance, coldStart, firstByte } = await timedStart(driver, code, `snap-${i}`);
    if (!instance.restore) throw new Error(`microVM ${instance.id} booted instead of resuming the snapshot`);
    taken.push({ ...instance.restore, firstByte, coldStart });
  }
  const of = (pick: (s: (typeof taken)[number]) => number) => summarize(taken.map(pick));
  return {
    build_ms: Math.round(buildMs),
    restore: of((s) => s.restore),
    code: of((s) => s.code),
    agent: of((s) => s.agent),
    ready: of((s) => s.total),
    first_byte: of((s) => s.firstByte),
    cold_start: of((s) => s.coldStart),
  };
}

interface Sample {
  vmm: number;
  kernel: number;
  init: number;
  agent: number;
  total: number;
  firstByte: number;
  coldStart: number;
}

async function sample(driver: QemuDriver, codeDir: string, i: number): Promise<Sample> {
  const { instance, firstByte, coldStart } = await timedStart(driver, codeDir, `bench-vm-${i}`);
  if (!instance.boot) throw new Error(`microVM ${instance.id} reported no boot timings`);
  return { ...instance.boot, firstByte, coldStart };
}

/** driver.start() of a fresh VM, one GET, stop: the VM and when its first response byte came. */
async function timedStart(
  driver: QemuDriver,
  codeDir: string,
  name: string,
): Promise<{ instance: VmInstance; firstByte: number; coldStart: number }> {
  const logs: string[] = [];
  const t0 = performance.now();
  const instance = await driver.start({
    instanceId: `${name}-${Date.now().toString(36)}`,
    functionId: name,
    codeDir,
    env: {},
    port: 3000,
    memoryMb: MEMORY_MB,
    vcpu: 1,
    concurrency: 1,
    startTimeoutMs: START_TIMEOUT_MS,
    onLog: (stream, line) => logs.push(`${stream}: ${line}`),
  });
  try {
    const readyAt = performance.now();
    const { status, firstAt } = await firstResponse(instance);
    if (status !== 200) throw new Error(`microVM ${instance.id} answered ${status}: ${logs.slice(-5).join(' | ')}`);
    return { instance, firstByte: firstAt - readyAt, coldStart: firstAt - t0 };
  } finally {
    await instance.stop();
  }
}

/** One GET on a new connection to the instance: its status and when the response's first byte arrived. */
async function firstResponse(instance: VmInstance): Promise<{ status: number; firstAt: number }> {
  const socket = await instance.connect();
  return new Promise<{ status: number; firstAt: number }>((resolve, reject) => {
    let firstAt = 0;
    let head = '';
    socket.setEncoding('latin1');
    socket.setTimeout(RESPONSE_TIMEOUT_MS, () =>
      socket.destroy(new Error(`no response from microVM ${instance.id} within ${RESPONSE_TIMEOUT_MS} ms`)),
    );
    socket.on('data', (chunk: string) => {
      firstAt ||= performance.now();
      head += chunk;
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1];
      if (status) resolve({ status: Number(status), firstAt });
    });
    socket.once('error', reject);
    socket.once('end', () => reject(new Error(`no HTTP response from microVM ${instance.id}: ${JSON.stringify(head.slice(0, 200))}`)));
    socket.write('GET / HTTP/1.1\r\nHost: fn\r\nConnection: close\r\n\r\n');
  }).finally(() => socket.destroy());
}
