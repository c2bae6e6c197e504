/**
 * bubblewrap driver: each instance is `bwrap` with every namespace unshared (network: loopback only),
 * running as its own unprivileged uid with no new privileges, inside its cgroups. The filesystem is
 * the read-only skeleton of rootfs.ts.
 *
 * What the instance sees of its host is kept neutral: bwrap is its PID 1, so its options (which name
 * host paths) go in on descriptor 3 rather than on its command line, it runs with an empty environment
 * in `/`, and /dev is read-only with a /dev/shm as small as /tmp. Bind mounts still show their
 * source's path inside its filesystem in /proc/self/mountinfo (the data dir's code and channel dirs,
 * the state dir's root and agent): bwrap has no way around that; gVisor presents its own mount table.
 */
import { randomUUID } from 'node:crypto';
import type { InstanceHandle, InstanceSpec, IsolationDriver, PrestartedInstance, PrestartShape, StartPrep } from '../../../core/ports.js';
import type { StartMode } from '../../../core/types.js';
import { agentNodeArgs } from '../../../guest/agent-files.js';
import { AGENT_ENV, GUEST_PATHS } from '../../../guest/agent/protocol.mjs';
import { enterCgroups } from '../cgroup.js';
import { commandPath } from '../command-path.js';
import {
  launchSandboxed,
  prepareStart,
  prestartSandboxed,
  type Sandbox,
  type SandboxCommand,
  type SandboxHost,
  type SandboxShape,
  shapeOf,
  untraversable,
} from './host.js';

const MB = 1024 * 1024;

export class BwrapDriver implements IsolationDriver {
  readonly name = 'bwrap';
  /** Absolute paths: the sandbox's host processes run without PATH (their environment is visible inside). */
  private readonly commands: Promise<{ setpriv: string; bwrap: string }>;

  constructor(private readonly host: SandboxHost) {
    this.commands = Promise.all([commandPath('setpriv', host.hostPath), commandPath('bwrap', host.hostPath)]).then(([setpriv, bwrap]) => ({
      setpriv,
      bwrap,
    }));
    this.commands.catch(() => {}); // reported by the first start
  }

  /**
   * Sandboxes run as other users: every directory above the data dir must let them through. Says
   * exactly which one does not and what to change, rather than letting bwrap fail to start.
   */
  static async checkReachable(host: SandboxHost): Promise<void> {
    for (const dir of [host.runDir, host.stateDir]) {
      const blocking = await untraversable(dir);
      if (blocking) {
        const mode = blocking.mode.toString(8).padStart(4, '0');
        throw new Error(
          `sandbox uids cannot reach ${dir}: ${blocking.dir} (mode ${mode}) does not let other users through. ` +
            `Run \`chmod o+x ${blocking.dir}\` (they need to pass through it, not to read it), or set AETHER_DATA_DIR to a directory outside it`,
        );
      }
    }
  }

  /** The per-Aether cgroup parent would otherwise stay behind, empty, in every controller; the slots' mount too. */
  async close(): Promise<void> {
    await this.host.slots.close();
    await this.host.cgroups.removeParent();
  }

  start(spec: InstanceSpec): Promise<InstanceHandle> {
    return launchSandboxed(this.host, spec, async (sandbox) => this.command(shapeOf(spec), sandbox));
  }

  prepare(spec: StartPrep): Promise<StartMode> {
    return prepareStart(this.host, spec);
  }

  prestart(shape: PrestartShape): Promise<PrestartedInstance> {
    const id = `warm-${randomUUID()}`;
    return prestartSandboxed(this.host, { ...shape, id }, async (sandbox) =>
      this.command({ id, memoryMb: shape.memoryMb, vcpu: 1 }, sandbox),
    );
  }

  private async command(shape: SandboxShape, { uid, cgroup, channel, root: rootDir, startDir }: Sandbox): Promise<SandboxCommand> {
    const { root, agentDir, nodePath, tmpMb } = this.host;
    const { setpriv, bwrap } = await this.commands;
    const id = String(uid);
    const options = [
      ...['--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent', '--new-session'],
      ...['--uid', id, '--gid', id, '--hostname', 'fn', '--clearenv'],
      ...(shape.codeDir ? [] : ['--setenv', AGENT_ENV.prewarm, '1']),
      ...['--ro-bind', rootDir, '/'],
      ...root.runtimeBinds.flatMap((dir) => ['--ro-bind', dir, dir]),
      ...(shape.codeDir ? ['--ro-bind', shape.codeDir, GUEST_PATHS.code] : []),
      ...['--ro-bind', agentDir, GUEST_PATHS.agent],
      ...['--ro-bind', channel.dir, GUEST_PATHS.run],
      ...(startDir ? ['--ro-bind', startDir, GUEST_PATHS.start] : []),
      ...['--proc', '/proc', '--dev', '/dev'],
      ...['--size', String(tmpMb * MB), '--tmpfs', '/dev/shm', '--remount-ro', '/dev'],
      ...['--size', String(tmpMb * MB), '--tmpfs', '/tmp'],
    ];
    const dropPrivileges = [setpriv, '--reuid', id, '--regid', id, '--clear-groups', '--no-new-privs'];
    return {
      ...enterCgroups(cgroup, this.host.openFilesLimit, [
        ...dropPrivileges,
        bwrap,
        '--args',
        '3',
        '--',
        nodePath,
        ...agentNodeArgs(shape.memoryMb, GUEST_PATHS.agent),
      ]),
      env: {},
      input3: options.map((option) => `${option}\0`).join(''),
    };
  }
}
