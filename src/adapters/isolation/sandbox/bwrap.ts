/**
 * bubblewrap driver: each instance is `bwrap` with every namespace unshared (network: loopback only),
 * running as its own unprivileged uid with no new privileges, inside its cgroups. The filesystem is
 * the read-only skeleton of rootfs.ts.
 */
import type { InstanceHandle, InstanceSpec, IsolationDriver } from '../../../core/ports.js';
import { agentNodeArgs } from '../../../guest/agent-files.js';
import { GUEST_PATHS } from '../../../guest/agent/protocol.mjs';
import { launchSandboxed, type Sandbox, type SandboxCommand, type SandboxHost } from './host.js';

const MB = 1024 * 1024;

/**
 * Runs as root: enters the cgroups (each `cgroup.procs` path given before `--`), lowers the open
 * files limit (soft and hard: the instance cannot raise it again) to $1, then execs the rest. The
 * pid stays the same through every exec, so nothing runs outside the cgroups, ever.
 */
const ENTER_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; ulimit -n "$1" || exit 1; shift; exec "$@"';

export class BwrapDriver implements IsolationDriver {
  readonly name = 'bwrap';

  constructor(private readonly host: SandboxHost) {}

  /** The per-Aether cgroup parent would otherwise stay behind, empty, in every controller. */
  close(): Promise<void> {
    return this.host.cgroups.removeParent();
  }

  start(spec: InstanceSpec): Promise<InstanceHandle> {
    return launchSandboxed(this.host, spec, async (sandbox) => this.command(spec, sandbox));
  }

  private command(spec: InstanceSpec, { uid, cgroup, channel }: Sandbox): SandboxCommand {
    const { root, agentDir, nodePath, tmpMb } = this.host;
    const id = String(uid);
    const bwrap = [
      ...['--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent', '--new-session'],
      ...['--uid', id, '--gid', id, '--hostname', 'fn', '--clearenv'],
      ...['--ro-bind', root.dir, '/'],
      ...root.runtimeBinds.flatMap((dir) => ['--ro-bind', dir, dir]),
      ...['--ro-bind', spec.codeDir, GUEST_PATHS.code],
      ...['--ro-bind', agentDir, GUEST_PATHS.agent],
      ...['--ro-bind', channel.dir, GUEST_PATHS.run],
      ...['--proc', '/proc', '--dev', '/dev'],
      ...['--size', String(tmpMb * MB), '--tmpfs', '/tmp'],
      '--',
      nodePath,
      ...agentNodeArgs(spec.memoryMb, GUEST_PATHS.agent),
    ];
    const setpriv = ['setpriv', '--reuid', id, '--regid', id, '--clear-groups', '--no-new-privs'];
    return {
      command: '/bin/sh',
      args: [
        '-c',
        ENTER_CGROUPS,
        'aether-sandbox',
        ...cgroup.procsFiles,
        '--',
        String(this.host.openFilesLimit),
        ...setpriv,
        'bwrap',
        ...bwrap,
      ],
      env: { PATH: this.host.hostPath },
    };
  }
}
