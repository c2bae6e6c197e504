/**
 * The jailer's command line (Firecracker's production launcher): it creates a chroot at
 * `<chrootBase>/<exec name>/<id>/root`, a cgroup per VM, a new mount (and optionally network and
 * PID) namespace, drops to uid/gid and execs Firecracker inside. Everything Firecracker opens must
 * then be inside that root (hard links of the kernel, images and code disk; the API socket and vsock
 * sockets are created there), so host paths are the chroot's. Set FIRECRACKER_JAILER to the jailer
 * binary to use it (docs/configuration.md, docs/microvm.md); cgroup values come from the function's limits.
 */
import { existsSync } from 'node:fs';
import { chown, link, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';

export interface JailerOptions {
  jailer: string;
  firecracker: string;
  /** Instance id: the jailer allows [A-Za-z0-9-], at most 64 characters. */
  id: string;
  uid: number;
  gid: number;
  chrootBase: string;
  cgroupVersion: 1 | 2;
  /** e.g. memory.limit_in_bytes=... (v1) or memory.max=... (v2); cpu limits alike. */
  cgroups: Record<string, string>;
  /** Path of an existing network namespace to join (optional). */
  netns?: string;
  /**
   * Fork into a new PID namespace. The jailer then forks and its parent exits, leaving Firecracker's
   * pid in `<chroot>/firecracker.pid`; without it the jailer execs Firecracker in place, so the
   * process the driver spawned is Firecracker (the driver relies on that: it watches and kills it).
   */
  newPidNs?: boolean;
  /** Firecracker's own arguments (after `--`), e.g. the API socket inside the chroot. */
  firecrackerArgs: string[];
}

export function jailerCommand(opts: JailerOptions): { file: string; args: string[]; chrootRoot: string } {
  if (!/^[A-Za-z0-9-]{1,64}$/.test(opts.id)) throw new Error(`jailer id ${JSON.stringify(opts.id)} must be [A-Za-z0-9-]{1,64}`);
  const args = [
    '--id',
    opts.id,
    '--exec-file',
    opts.firecracker,
    '--uid',
    String(opts.uid),
    '--gid',
    String(opts.gid),
    '--chroot-base-dir',
    opts.chrootBase,
    '--cgroup-version',
    String(opts.cgroupVersion),
    ...Object.entries(opts.cgroups).flatMap(([key, value]) => ['--cgroup', `${key}=${value}`]),
    ...(opts.netns ? ['--netns', opts.netns] : []),
    ...(opts.newPidNs ? ['--new-pid-ns'] : []),
    '--',
    ...opts.firecrackerArgs,
  ];
  const chrootRoot = path.join(opts.chrootBase, path.basename(opts.firecracker), opts.id, 'root');
  return { file: opts.jailer, args, chrootRoot };
}

/** cgroup settings for a VM of `memoryMb` guest RAM plus the VMM's own overhead, and `vcpu` CPUs. */
export function vmCgroups(version: 1 | 2, memoryMb: number, vcpu: number, vmmOverheadMb = 64): Record<string, string> {
  const bytes = String((memoryMb + vmmOverheadMb) * 1024 * 1024);
  const periodUs = 100_000;
  const quotaUs = String(Math.round(vcpu * periodUs));
  return version === 1
    ? { 'memory.limit_in_bytes': bytes, 'cpu.cfs_period_us': String(periodUs), 'cpu.cfs_quota_us': quotaUs }
    : { 'memory.max': bytes, 'cpu.max': `${quotaUs} ${periodUs}` };
}

/** How the driver runs Firecracker through the jailer (FIRECRACKER_JAILER, see jailerConfig). */
export interface JailerConfig {
  jailer: string;
  /** Must be on the same filesystem as the run and cache directories: files are hard-linked in. */
  chrootBase: string;
  /** Instance n of those running at once gets uid and gid `idBase + n`. */
  idBase: number;
  cgroupVersion: 1 | 2;
}

/** The jailer at `jailer` (FIRECRACKER_JAILER): chroots under `<runDir>/jail`, ids from 200000, the host's cgroup version. */
export function jailerConfig(jailer: string, runDir: string): JailerConfig {
  return {
    jailer,
    chrootBase: path.join(runDir, 'jail'),
    idBase: 200_000,
    cgroupVersion: existsSync('/sys/fs/cgroup/cgroup.controllers') ? 2 : 1,
  };
}

/** The jailer allows [A-Za-z0-9-]{1,64}; instance ids are close to that already. */
export const jailId = (instanceId: string) => instanceId.replace(/[^A-Za-z0-9-]/g, '-').slice(-64);

/** Lowest free offset first, so that uids stay in a small, predictable range. */
export class IdPool {
  private readonly used = new Set<number>();

  take(): number {
    let n = 0;
    while (this.used.has(n)) n++;
    this.used.add(n);
    return n;
  }

  release(n: number): void {
    this.used.delete(n);
  }
}

/**
 * Where one Firecracker process runs and how it names host files: directly (host paths as they are)
 * or jailed (paths inside its chroot, files hard-linked in, sockets appearing under the chroot).
 */
export interface Placement {
  file: string;
  args: string[];
  /** The API socket's host path. */
  apiSocket: string;
  /** The vsock device's uds_path as Firecracker sees it, and the host directory its `<name>_<port>` sockets are in. */
  vsock: string;
  vsockHostDir: string;
  /** Who Firecracker runs as when it is not us: it must be able to connect to the channel's sockets. */
  owner?: { uid: number; gid: number };
  /** A host file as Firecracker can open it. */
  place(hostFile: string): Promise<string>;
  /** Where Firecracker should write a file named `name` (a snapshot), and that path on the host. */
  output(name: string): { vmmPath: string; hostPath: string };
  /** Removes the chroot (jailed), frees the uid. Idempotent. */
  release(): Promise<void>;
}

export function directPlacement(firecracker: string, dir: string, apiSocket: string, vsockName: string): Placement {
  const socket = path.join(dir, apiSocket);
  return {
    file: firecracker,
    args: ['--api-sock', socket],
    apiSocket: socket,
    vsock: path.join(dir, vsockName),
    vsockHostDir: dir,
    place: async (file) => file,
    output: (name) => ({ vmmPath: path.join(dir, name), hostPath: path.join(dir, name) }),
    release: async () => {},
  };
}

export async function jailedPlacement(
  config: JailerConfig,
  vm: { firecracker: string; instanceId: string; memoryMb: number; vcpu: number; ids: IdPool; apiSocket: string; vsockName: string },
): Promise<Placement> {
  const n = vm.ids.take();
  const uid = config.idBase + n;
  const { file, args, chrootRoot } = jailerCommand({
    jailer: config.jailer,
    firecracker: vm.firecracker,
    id: jailId(vm.instanceId),
    uid,
    gid: uid,
    chrootBase: config.chrootBase,
    cgroupVersion: config.cgroupVersion,
    cgroups: vmCgroups(config.cgroupVersion, vm.memoryMb, vm.vcpu),
    firecrackerArgs: ['--api-sock', `/${vm.apiSocket}`],
  });
  const jailDir = path.dirname(chrootRoot);
  let released: Promise<void> | undefined;
  const release = () => (released ??= rm(jailDir, { recursive: true, force: true }).finally(() => vm.ids.release(n)));
  try {
    await mkdir(config.chrootBase, { recursive: true, mode: 0o711 });
    await mkdir(chrootRoot, { recursive: true, mode: 0o711 });
    // Firecracker, as uid, creates its API and vsock sockets in the chroot's root.
    await chown(chrootRoot, uid, uid);
  } catch (err) {
    await release();
    throw err;
  }
  return {
    file,
    args,
    apiSocket: path.join(chrootRoot, vm.apiSocket),
    vsock: `/${vm.vsockName}`,
    vsockHostDir: chrootRoot,
    owner: { uid, gid: uid },
    async place(hostFile) {
      const name = path.basename(hostFile);
      await link(hostFile, path.join(chrootRoot, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EEXIST') return; // placed already (names are content hashes or fixed)
        if (err.code === 'EXDEV')
          throw new Error(`${hostFile} cannot be hard-linked into ${chrootRoot}: put the jailer's chroot base on the same filesystem`);
        throw err;
      });
      return `/${name}`;
    },
    output: (name) => ({ vmmPath: `/${name}`, hostPath: path.join(chrootRoot, name) }),
    release,
  };
}
