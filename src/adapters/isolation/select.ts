/**
 * Picks the isolation driver (drivers.ts lists them) at start-up. Nothing is assumed from what is
 * installed: each candidate must really start: a probe VM must boot, a sandbox must run a trivial
 * function. `auto` takes the strongest that works (Firecracker, then QEMU, only where a KVM probe
 * boot succeeds; then gVisor, then bubblewrap) and never degrades to no isolation.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { IsolationDriver } from '../../core/ports.js';
import { errorMessage } from '../../core/errors.js';
import type { KernelChoice } from '../../guest/image/build-image.js';
import { ISOLATION_DRIVERS, type IsolationMode } from './drivers.js';
import { FirecrackerDriver } from './microvm/firecracker/driver.js';
import { jailerConfig } from './microvm/firecracker/jailer.js';
import { QemuDriver } from './microvm/qemu/driver.js';
import { BwrapDriver } from './sandbox/bwrap.js';
import { CgroupTree } from './cgroup.js';
import { GvisorDriver, RUNSC_PLATFORM } from './sandbox/gvisor.js';
import { cleanLeftovers, prepareSandboxHost, type SandboxHost } from './sandbox/host.js';
import { NoIsolationDriver } from './sandbox/none.js';
import { mkdirTraversable } from './sandbox/rootfs.js';
import { UidPool } from './uid-pool.js';

const run = promisify(execFile);

export interface SelectOptions {
  /** Where the per-instance channel directories are created. */
  runDir: string;
  pidsLimit: number;
  openFilesLimit: number;
  tmpMb: number;
  /** Prepare functions' code at deploy time for faster starts (default: yes). */
  fastStart?: boolean;
  /** The sandbox drivers' own files (root skeleton, runsc state). Default: `sandbox` next to runDir. */
  stateDir?: string;
  /** cgroup path under each controller for the instance groups (default `aether`). */
  cgroupParent?: string;
  /** Host uids given to instances, one per live instance (default 200000, 50000 of them). */
  uids?: { first: number; size: number };
  probeTimeoutMs?: number;
  /** Guest kernels, images and code disks for microVMs (shared by every Aether on the host). */
  vmCacheDir?: string;
  /** The microVMs' guest kernel (KERNEL_PATH, KERNEL_MODULES_DIR). */
  kernel?: KernelChoice;
  /** Run Firecracker through the jailer at this path (FIRECRACKER_JAILER). */
  firecrackerJailer?: string;
  /** QEMU: resume snapshots instead of booting (AETHER_VM_SNAPSHOTS, default on). */
  vmSnapshots?: boolean;
  /** Long steps (building the guest image on first use) report here. */
  onProgress?: (message: string) => void;
}

export interface SelectedDriver {
  driver: IsolationDriver;
  /** One line for the start-up log: what was chosen and why (for `none`, a warning). */
  reason: string;
}

interface Candidate {
  name: 'gvisor' | 'bwrap';
  version(host: SandboxHost): Promise<string>;
  create(host: SandboxHost): IsolationDriver;
}

const CANDIDATES: Candidate[] = [
  {
    name: 'gvisor',
    version: async (host) => {
      const { stdout } = await run('runsc', ['--version'], { env: { PATH: host.hostPath } });
      const release = /version\s+(?:\S*~)?(\d{8})/.exec(stdout)?.[1] ?? stdout.split('\n')[0]!.trim();
      return `runsc ${release} ${RUNSC_PLATFORM}`;
    },
    create: (host) => new GvisorDriver(host),
  },
  {
    name: 'bwrap',
    version: async (host) => {
      const { stdout } = await run('bwrap', ['--version'], { env: { PATH: host.hostPath } });
      await run('setpriv', ['--version'], { env: { PATH: host.hostPath } });
      await BwrapDriver.checkReachable(host);
      return stdout.trim();
    },
    create: (host) => new BwrapDriver(host),
  },
];

const PROBE_HANDLER = "exports.handler = async () => 'ok';\n";

export async function selectDriver(mode: IsolationMode, opts: SelectOptions): Promise<SelectedDriver> {
  if (mode === 'none') {
    return {
      driver: new NoIsolationDriver({ runDir: opts.runDir }),
      reason: ISOLATION_DRIVERS.none.what,
    };
  }
  const stateDir = opts.stateDir ?? path.join(path.dirname(path.resolve(opts.runDir)), 'sandbox');
  const host = await prepareSandboxHost({
    runDir: opts.runDir,
    stateDir,
    pidsLimit: opts.pidsLimit,
    openFilesLimit: opts.openFilesLimit,
    tmpMb: opts.tmpMb,
    fastStart: opts.fastStart ?? true,
    cgroups: new CgroupTree({ parent: opts.cgroupParent }),
    uids: new UidPool(opts.uids?.first, opts.uids?.size),
  });
  const leftovers = await cleanLeftovers(host);
  const cleaned = leftovers > 0 ? ` (removed ${leftovers} instances left by a previous run)` : '';
  const failures: string[] = [];
  const vmCacheDir = opts.vmCacheDir ?? path.join(stateDir, 'vm');
  if (mode === 'firecracker' || (mode === 'auto' && (await microVmPossible('firecracker')))) {
    try {
      const fc = await FirecrackerDriver.create({
        runDir: opts.runDir,
        cacheDir: vmCacheDir,
        kernel: opts.kernel,
        jailer: opts.firecrackerJailer ? jailerConfig(opts.firecrackerJailer, opts.runDir) : undefined,
      });
      const probe = await fc.probe();
      if (probe.ok) return { driver: fc, reason: `firecracker: ${probe.detail}${cleaned}` };
      failures.push(`firecracker: ${probe.detail}`);
    } catch (err) {
      failures.push(`firecracker: ${errorMessage(err)}`);
    }
    if (mode === 'firecracker') throw new Error(`firecracker isolation unavailable: ${failures.join('; ')}`);
  }
  if (mode === 'qemu' || (mode === 'auto' && (await microVmPossible('qemu-system-x86_64')))) {
    try {
      const qemu = await QemuDriver.create({
        runDir: opts.runDir,
        cacheDir: vmCacheDir,
        kernel: opts.kernel,
        snapshots: opts.vmSnapshots,
        // cgroups and setpriv need root; without it QEMU runs as this process, unconfined.
        confine:
          process.getuid?.() === 0
            ? { cgroups: host.cgroups, uids: host.uids, pidsLimit: host.pidsLimit, openFilesLimit: host.openFilesLimit }
            : undefined,
        onProgress: opts.onProgress,
      });
      const why = `qemu: ${qemu.accel.accel} (${qemu.accel.detail})`;
      // Under TCG a microVM takes seconds to boot: only when asked for by name.
      if (mode === 'qemu' || qemu.accel.accel === 'kvm') return { driver: qemu, reason: `${why}${cleaned}` };
      failures.push(`${why}: not chosen without KVM (AETHER_ISOLATION=qemu uses TCG)`);
    } catch (err) {
      if (mode === 'qemu') throw new Error(`qemu isolation unavailable: ${errorMessage(err)}`);
      failures.push(`qemu: ${errorMessage(err)}`);
    }
  }
  const candidates = CANDIDATES.filter((c) => mode === 'auto' || c.name === mode);
  const missing: string[] = [];
  for (const candidate of candidates) {
    try {
      const version = await candidate.version(host).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
        const { install } = ISOLATION_DRIVERS[candidate.name];
        missing.push(install);
        throw new Error(`not installed (${install})`);
      });
      const driver = candidate.create(host);
      const ms = await probe(driver, host, opts.probeTimeoutMs ?? 15_000);
      const passedOver = failures.length > 0 ? ` (passed over: ${failures.join('; ')})` : '';
      return { driver, reason: `${candidate.name}: ${version} probe ok in ${ms} ms${cleaned}${passedOver}` };
    } catch (err) {
      failures.push(`${candidate.name}: ${errorMessage(err)}`);
    }
  }
  // Suggest installing only what is missing: a sandbox that is there but failed says why above.
  const install = missing.length > 0 ? `${missing.join(' or ')}, and ` : '';
  throw new Error(
    `no working isolation for "${mode}" on this host: ${failures.join('; ')}. ` +
      `To fix: ${install}run Aether as root with the cgroup v1 memory, pids and cpu controllers mounted under /sys/fs/cgroup. ` +
      '(AETHER_ISOLATION=none runs functions without any isolation: development with trusted code only.)',
  );
}

/** A microVM is only worth probing with its VMM installed and a KVM device present. */
async function microVmPossible(vmm: string): Promise<boolean> {
  const kvm = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  return (
    kvm &&
    (await run(vmm, ['--version']).then(
      () => true,
      () => false,
    ))
  );
}

/** Starts a trivial function in the sandbox and stops it again; resolves with the time to ready. */
async function probe(driver: IsolationDriver, host: SandboxHost, timeoutMs: number): Promise<number> {
  const codeDir = path.join(host.stateDir, 'probe');
  await mkdirTraversable(codeDir);
  await writeFile(path.join(codeDir, 'index.js'), PROBE_HANDLER, { mode: 0o644 });
  const started = Date.now();
  const instance = await driver.start({
    instanceId: `probe-${randomBytes(6).toString('hex')}`,
    functionId: 'probe',
    codeDir,
    env: {},
    port: 3000,
    memoryMb: 128,
    vcpu: 1,
    concurrency: 1,
    startTimeoutMs: timeoutMs,
    onLog: () => {},
  });
  const ms = Date.now() - started;
  await instance.stop(0);
  return ms;
}
