/**
 * QEMU is an ordinary host process, so it is confined like a sandbox's: its own cgroups (memory: the
 * guest's RAM, TCG's translation cache and QEMU's own; CPU: the function's vCPUs; pids) and its own
 * unprivileged uid from the pool, with no supplementary groups and no new privileges. Under TCG it
 * opens no device; under KVM it gets /dev/kvm's group and nothing else. Everything else it uses is
 * readable by anyone (kernel, image, code disks), passed as a descriptor (control ports, a snapshot's
 * state) or owned by that uid (the instance's channel directory and metadata socket).
 */
import { stat } from 'node:fs/promises';
import { enterCgroups, type CgroupTree } from '../../cgroup.js';
import { commandPath } from '../../command-path.js';
import type { UidPool } from '../../uid-pool.js';
import { TCG_CACHE_MB, type Accel } from './args.js';

/** QEMU's own memory besides guest RAM and the translation cache (measured: RSS ~60-90 MB over the two). */
const QEMU_OWN_MB = 128;

export interface QemuConfinement {
  cgroups: CgroupTree;
  uids: UidPool;
  pidsLimit: number;
  openFilesLimit: number;
}

export interface ConfinedVm {
  uid: number;
  /** The command line that runs `command args` as this uid inside the cgroups. */
  exec(command: string, args: string[]): { command: string; args: string[] };
  /** Removes the cgroups (killing what is left) and returns the uid. Once. */
  release(): Promise<void>;
}

export async function confineVm(c: QemuConfinement, id: string, vm: { accel: Accel; memoryMb: number; vcpu: number }): Promise<ConfinedVm> {
  const setpriv = await commandPath('setpriv');
  const groups = vm.accel === 'kvm' ? ['--groups', String((await stat('/dev/kvm')).gid)] : ['--clear-groups'];
  const uid = c.uids.acquire();
  try {
    const cgroup = await c.cgroups.create(id, { memoryMb: vm.memoryMb + TCG_CACHE_MB + QEMU_OWN_MB, vcpu: vm.vcpu, pids: c.pidsLimit });
    let released: Promise<void> | undefined;
    return {
      uid,
      exec: (command, args) =>
        enterCgroups(cgroup, c.openFilesLimit, [
          setpriv,
          '--reuid',
          String(uid),
          '--regid',
          String(uid),
          ...groups,
          '--no-new-privs',
          command,
          ...args,
        ]),
      release: () => (released ??= cgroup.remove().finally(() => c.uids.release(uid))),
    };
  } catch (err) {
    c.uids.release(uid);
    throw err;
  }
}
