/**
 * The isolation drivers, one list: the values of AETHER_ISOLATION (config.ts), the CLI's help, what
 * driver selection (select.ts) tries and what it tells to install all come from here. Strongest
 * isolation first, the order `auto` tries them in. Imports nothing: config.ts reads it.
 */

export interface DriverInfo {
  /** What an instance is under this driver. */
  what: string;
  /** How to get what it needs on Debian (empty: nothing to install). */
  install: string;
}

export const ISOLATION_DRIVERS = {
  firecracker: {
    what: 'Firecracker microVMs: a guest kernel per instance; needs KVM (auto uses it only when a probe VM boots)',
    install: 'the firecracker binary on PATH (a release binary: Debian has no package), and FIRECRACKER_JAILER for its jailer',
  },
  qemu: {
    what: 'QEMU -M microvm guests: a guest kernel per instance; KVM when a probe VM boots, else TCG (seconds per cold start: only when asked for by name)',
    install: 'apt-get install qemu-system-x86 busybox-static e2fsprogs socat',
  },
  gvisor: {
    what: "gVisor (runsc, ptrace platform): the function's system calls go to a user-space kernel",
    install: 'apt-get install runsc',
  },
  bwrap: {
    what: 'bubblewrap: every namespace unshared, an unprivileged uid per instance, cgroup limits',
    install: 'apt-get install bubblewrap util-linux',
  },
  none: {
    what: "no isolation: plain host processes with Aether's own user, files and network; development with trusted code only, never chosen by auto",
    install: '',
  },
} as const satisfies Record<string, DriverInfo>;

export type DriverName = keyof typeof ISOLATION_DRIVERS;
export type IsolationMode = 'auto' | DriverName;

/** Every value AETHER_ISOLATION takes: `auto`, then the drivers, strongest first. */
export const ISOLATION_MODES = ['auto', ...Object.keys(ISOLATION_DRIVERS)] as [IsolationMode, ...IsolationMode[]];
