/**
 * gVisor driver: each instance is `runsc run` of an OCI bundle. The function's system calls go to
 * gVisor's user-space kernel (ptrace platform: the only one that works on this kind of host), with no
 * network but loopback. The agent reaches the host's channel sockets through `--host-uds=open`
 * (connect only). runsc joins the cgroups we pre-created (so it leaves them to us: we read the OOM
 * counter after the sandbox died) before the sandbox starts.
 */
import { execFile } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { randomUUID } from 'node:crypto';
import type { InstanceHandle, InstanceSpec, IsolationDriver, PrestartedInstance, PrestartShape, StartPrep } from '../../../core/ports.js';
import type { StartMode } from '../../../core/types.js';
import { agentNodeArgs } from '../../../guest/agent-files.js';
import { AGENT_ENV, GUEST_PATHS } from '../../../guest/agent/protocol.mjs';
import { CFS_PERIOD_US, cpuQuotaUs } from '../cgroup.js';
import {
  launchSandboxed,
  prepareStart,
  prestartSandboxed,
  type Sandbox,
  type SandboxCommand,
  type SandboxHost,
  type SandboxShape,
  shapeOf,
} from './host.js';

const run = promisify(execFile);
const MB = 1024 * 1024;
/** The only platform that works on hosts without usable KVM (nested or PVM guests). */
export const RUNSC_PLATFORM = 'ptrace';
const RUNSC_FLAGS = [`--platform=${RUNSC_PLATFORM}`, '--network=none', '--host-uds=open', '--cpu-num-from-quota'];

export class GvisorDriver implements IsolationDriver {
  readonly name = 'gvisor';
  /** runsc's own state (`--root`): one per Aether, so container ids never collide with another's. */
  private readonly runscRoot: string;

  constructor(private readonly host: SandboxHost) {
    this.runscRoot = path.join(host.stateDir, 'runsc');
  }

  /** The per-Aether cgroup parent would otherwise stay behind, empty, in every controller; the slots' mount too. */
  async close(): Promise<void> {
    await this.host.slots.close();
    await this.host.cgroups.removeParent();
  }

  start(spec: InstanceSpec): Promise<InstanceHandle> {
    return launchSandboxed(this.host, spec, (sandbox) => this.command(shapeOf(spec), sandbox));
  }

  prepare(spec: StartPrep): Promise<StartMode> {
    return prepareStart(this.host, spec);
  }

  prestart(shape: PrestartShape): Promise<PrestartedInstance> {
    const id = `warm-${randomUUID()}`;
    return prestartSandboxed(this.host, { ...shape, id }, (sandbox) => this.command({ id, memoryMb: shape.memoryMb, vcpu: 1 }, sandbox));
  }

  private async command(spec: SandboxShape, sandbox: Sandbox): Promise<SandboxCommand> {
    const bundle = path.join(this.host.stateDir, 'bundles', spec.id);
    await mkdir(bundle, { recursive: true, mode: 0o700 });
    await writeFile(path.join(bundle, 'config.json'), JSON.stringify(this.ociSpec(spec, sandbox))).catch(async (err) => {
      await rm(bundle, { recursive: true, force: true });
      throw err;
    });
    const flags = [`--root=${this.runscRoot}`, ...RUNSC_FLAGS];
    return {
      // The sandbox dies with `runsc run` (started "attached"), and this makes `runsc run` die with
      // Aether: no instance outlives the process that accounts for it.
      command: 'setpriv',
      args: ['--pdeathsig=KILL', 'runsc', ...flags, 'run', `--bundle=${bundle}`, spec.id],
      env: { PATH: this.host.hostPath },
      cleanup: async () => {
        // `runsc run` is gone and its sandbox with it; delete drops runsc's state.
        await run('runsc', [...flags, 'delete', '--force', spec.id], { env: { PATH: this.host.hostPath } }).catch(() => {});
        await rm(bundle, { recursive: true, force: true });
      },
    };
  }

  private ociSpec(spec: SandboxShape, { uid, cgroup, channel, root: rootDir, startDir }: Sandbox): object {
    const { root, agentDir, nodePath, tmpMb, pidsLimit, openFilesLimit } = this.host;
    const readOnly = (source: string, destination: string) => ({
      destination,
      type: 'bind',
      source,
      options: ['rbind', 'ro', 'nosuid', 'nodev'],
    });
    return {
      ociVersion: '1.0.2',
      process: {
        user: { uid, gid: uid },
        args: [nodePath, ...agentNodeArgs(spec.memoryMb, GUEST_PATHS.agent)],
        env: spec.codeDir ? [] : [`${AGENT_ENV.prewarm}=1`],
        cwd: '/',
        noNewPrivileges: true,
        rlimits: [{ type: 'RLIMIT_NOFILE', hard: openFilesLimit, soft: openFilesLimit }],
        capabilities: { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] },
      },
      root: { path: rootDir, readonly: true },
      hostname: 'fn',
      mounts: [
        { destination: '/proc', type: 'proc', source: 'proc' },
        ...root.runtimeBinds.map((dir) => readOnly(dir, dir)),
        ...(spec.codeDir ? [readOnly(spec.codeDir, GUEST_PATHS.code)] : []),
        readOnly(agentDir, GUEST_PATHS.agent),
        readOnly(channel.dir, GUEST_PATHS.run),
        ...(startDir ? [readOnly(startDir, GUEST_PATHS.start)] : []),
        { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', `size=${tmpMb * MB}`] },
      ],
      linux: {
        namespaces: ['pid', 'network', 'ipc', 'uts', 'mount'].map((type) => ({ type })),
        // runsc applies these only to cgroups it creates; ours already carry them. They still
        // describe the instance to anything reading the bundle.
        resources: {
          memory: { limit: spec.memoryMb * MB },
          pids: { limit: pidsLimit },
          cpu: { quota: cpuQuotaUs(spec.vcpu), period: CFS_PERIOD_US },
        },
        cgroupsPath: cgroup.relativePath,
      },
    };
  }
}
