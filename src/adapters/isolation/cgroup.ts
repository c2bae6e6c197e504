/**
 * cgroup v1 groups for instances (sandboxes, QEMU microVMs): `<mountRoot>/<controller>/<parent>/<instanceId>`
 * for the memory, pids and cpu controllers. The driver puts the instance's first process into them before
 * any user code runs (enterCgroups); this module creates them with limits, reads why an instance died and
 * removes them.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** The controllers we set limits in. gVisor may add others under the same path; `remove` sweeps all. */
const LIMITED = ['memory', 'pids', 'cpu'] as const;
const MB = 1024 * 1024;
export const CFS_PERIOD_US = 100_000;
/** The kernel's default weight: every instance running a function competes at it. */
const CPU_SHARES = 1024;
/** The kernel's least weight: a pre-started instance booting for the pool yields to every running one. */
export const IDLE_CPU_SHARES = 2;
/** USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux architecture Node runs on. */
const MS_PER_TICK = 10;
const SAFE_NAME = /^(?!\.\.?$)[A-Za-z0-9_.-]+$/;

export interface CgroupLimits {
  memoryMb: number;
  vcpu: number;
  pids: number;
  /** CPU weight against the other instances (default: the kernel's, 1024). */
  cpuShares?: number;
}

export interface CgroupOptions {
  /** Where the v1 controllers are mounted. */
  mountRoot?: string;
  /** Path below each controller's root that holds the instance groups (unique per test run). */
  parent?: string;
}

export class CgroupTree {
  readonly mountRoot: string;
  readonly parent: string;

  constructor(opts: CgroupOptions = {}) {
    this.mountRoot = opts.mountRoot ?? '/sys/fs/cgroup';
    this.parent = opts.parent ?? 'aether';
    if (!this.parent.split('/').every((part) => SAFE_NAME.test(part))) {
      throw new Error(`invalid cgroup parent ${JSON.stringify(this.parent)}`);
    }
  }

  /** The group's path relative to each hierarchy's root (what an OCI `cgroupsPath` wants). */
  relativePath(instanceId: string): string {
    return `/${this.parent}/${instanceId}`;
  }

  /** Creates the instance's groups with their limits; on failure nothing is left behind. */
  async create(instanceId: string, limits: CgroupLimits): Promise<InstanceCgroup> {
    if (!SAFE_NAME.test(instanceId)) throw new Error(`invalid instance id ${JSON.stringify(instanceId)}`);
    const group = new InstanceCgroup(this, instanceId, limits);
    try {
      for (const ctrl of LIMITED) await fs.mkdir(group.dir(ctrl), { recursive: true });
      const memory = String(limits.memoryMb * MB);
      await write(group.dir('memory'), 'memory.limit_in_bytes', memory);
      // With swap accounting, also cap memory+swap so the limit cannot be dodged by swapping.
      await write(group.dir('memory'), 'memory.memsw.limit_in_bytes', memory).catch(ignoreMissing);
      await write(group.dir('pids'), 'pids.max', String(limits.pids));
      await write(group.dir('cpu'), 'cpu.cfs_period_us', String(CFS_PERIOD_US));
      await group.setCpu(limits.vcpu, limits.cpuShares);
    } catch (err) {
      await group.remove().catch(() => {});
      throw err;
    }
    return group;
  }

  /**
   * Removes the groups a previous life of this Aether left behind (after a kill -9), killing anything
   * still inside. Only this tree's parent is swept, so other Aethers on the host are untouched.
   */
  async sweep(): Promise<number> {
    const ids = new Set<string>();
    for (const ctrl of LIMITED) {
      const entries = await fs.readdir(path.join(this.mountRoot, ctrl, this.parent), { withFileTypes: true }).catch(() => []);
      for (const e of entries) if (e.isDirectory() && SAFE_NAME.test(e.name)) ids.add(e.name);
    }
    for (const id of ids) await new InstanceCgroup(this, id, { memoryMb: 0, vcpu: 0, pids: 0 }).remove();
    return ids.size;
  }

  /** Removes the (empty) parent groups, e.g. at the end of a test run. Best effort. */
  async removeParent(): Promise<void> {
    for (const ctrl of await fs.readdir(this.mountRoot).catch(() => [])) {
      const parts = this.parent.split('/');
      for (let n = parts.length; n > 0; n--) {
        const dir = path.join(this.mountRoot, ctrl, ...parts.slice(0, n));
        if (
          !(await fs.rmdir(dir).then(
            () => true,
            () => false,
          ))
        )
          break;
      }
    }
  }

  controllerDir(ctrl: string, instanceId: string): string {
    return path.join(this.mountRoot, ctrl, this.parent, instanceId);
  }
}

export class InstanceCgroup {
  constructor(
    private readonly tree: CgroupTree,
    readonly instanceId: string,
    private readonly limits: CgroupLimits,
  ) {}

  dir(ctrl: string): string {
    return this.tree.controllerDir(ctrl, this.instanceId);
  }

  /** The CPU quota (`vcpu` CPUs) and weight: a pre-started instance gets its function's when it gets the function. */
  async setCpu(vcpu: number, shares = CPU_SHARES): Promise<void> {
    await write(this.dir('cpu'), 'cpu.cfs_quota_us', String(cpuQuotaUs(vcpu)));
    await write(this.dir('cpu'), 'cpu.shares', String(shares));
  }

  /** The `cgroup.procs` files a process writes its pid to, to enter every limited group. */
  get procsFiles(): string[] {
    return LIMITED.map((ctrl) => path.join(this.dir(ctrl), 'cgroup.procs'));
  }

  get relativePath(): string {
    return this.tree.relativePath(this.instanceId);
  }

  /**
   * Which limit ended the instance, if one did: the kernel's OOM killer in this group, or the pids
   * limit (gVisor's sentry does not survive hitting it). Only for a sandbox that failed from inside:
   * when its host process died of a signal, the host stopped it. Read before `remove`.
   */
  async exitCause(exit: { code: number | null; signal: string | null }): Promise<{ oom?: boolean; reason?: string }> {
    if (exit.signal !== null || exit.code === 0) return {};
    const oomKills = /^oom_kill (\d+)$/m.exec(await this.read('memory', 'memory.oom_control'))?.[1];
    if (Number(oomKills ?? 0) > 0) return { oom: true, reason: `memory limit of ${this.limits.memoryMb} MB exceeded` };
    const pidsDenied = /^max (\d+)$/m.exec(await this.read('pids', 'pids.events'))?.[1];
    if (Number(pidsDenied ?? 0) > 0) return { reason: `process limit of ${this.limits.pids} reached (exit code ${exit.code})` };
    return {};
  }

  /** What its processes use now: memory charged to the group, and CPU time so far (of the processes still in it). */
  async usage(): Promise<{ memoryBytes: number; cpuMs: number }> {
    const memoryBytes = Number(await this.read('memory', 'memory.usage_in_bytes')) || 0;
    const pids = (await this.read('memory', 'cgroup.procs')).split('\n').filter(Boolean);
    let ticks = 0;
    for (const pid of pids) {
      // utime and stime, fields 14 and 15, counted after the command's closing parenthesis.
      const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11] ?? 0) + Number(fields[12] ?? 0);
    }
    return { memoryBytes, cpuMs: ticks * MS_PER_TICK };
  }

  private read(ctrl: string, file: string): Promise<string> {
    return fs.readFile(path.join(this.dir(ctrl), file), 'utf8').catch(() => '');
  }

  /** Kills whatever still runs in the groups, then removes every controller's group (EBUSY: retried). */
  async remove(timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const controllers = await fs.readdir(this.tree.mountRoot).catch(() => [...LIMITED]);
    for (const ctrl of controllers) {
      const dir = this.dir(ctrl);
      for (;;) {
        try {
          await fs.rmdir(dir);
          break;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'ENOENT' || code === 'ENOTDIR') break;
          if (code !== 'EBUSY' || Date.now() > deadline) throw err;
          await killAll(dir);
          await sleep(20);
        }
      }
    }
  }
}

/**
 * Runs as root: enters the cgroups (each `cgroup.procs` path given before `--`), lowers the open files
 * limit (soft and hard: the instance cannot raise it again) to the next argument, then execs the rest.
 * The pid stays the same through every exec, so nothing runs outside the cgroups, ever.
 */
const ENTER_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; ulimit -n "$1" || exit 1; shift; exec "$@"';

/** The command that runs `command` (argv) inside `group`, with at most `openFiles` open files. */
export function enterCgroups(group: InstanceCgroup, openFiles: number, command: string[]): { command: string; args: string[] } {
  return { command: '/bin/sh', args: ['-c', ENTER_CGROUPS, 'aether-instance', ...group.procsFiles, '--', String(openFiles), ...command] };
}

/** CPU time per CFS period for `vcpu` CPUs (fractions allowed; the kernel's minimum is 1 ms). */
export function cpuQuotaUs(vcpu: number): number {
  return Math.max(1000, Math.round(vcpu * CFS_PERIOD_US));
}

async function killAll(dir: string): Promise<void> {
  const procs = await fs.readFile(path.join(dir, 'cgroup.procs'), 'utf8').catch(() => '');
  for (const pid of procs.split('\n').filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function write(dir: string, file: string, value: string): Promise<void> {
  return fs.writeFile(path.join(dir, file), value);
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
}
