/**
 * The jailer's command line (Firecracker's production launcher): it creates a chroot at
 * `<chrootBase>/<exec name>/<id>/root`, a cgroup per VM, a new mount (and optionally network and
 * PID) namespace, drops to uid/gid and execs Firecracker inside. Everything Firecracker opens must
 * then be inside that root (hard links of the kernel, images and code disk; the API socket and vsock
 * sockets are created there), so host paths are the chroot's. Set FIRECRACKER_JAILER to the jailer
 * binary to use it (docs/microvm.md); cgroup values come from the function's limits.
 */
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
  /** Firecracker's own arguments (after `--`), e.g. the API socket inside the chroot. */
  firecrackerArgs: string[];
}

export function jailerCommand(opts: JailerOptions): { file: string; args: string[]; chrootRoot: string } {
  if (!/^[A-Za-z0-9-]{1,64}$/.test(opts.id)) throw new Error(`jailer id ${JSON.stringify(opts.id)} must be [A-Za-z0-9-]{1,64}`);
  const args = [
    '--id', opts.id,
    '--exec-file', opts.firecracker,
    '--uid', String(opts.uid),
    '--gid', String(opts.gid),
    '--chroot-base-dir', opts.chrootBase,
    '--cgroup-version', String(opts.cgroupVersion),
    ...Object.entries(opts.cgroups).flatMap(([key, value]) => ['--cgroup', `${key}=${value}`]),
    ...(opts.netns ? ['--netns', opts.netns] : []),
    '--new-pid-ns',
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
