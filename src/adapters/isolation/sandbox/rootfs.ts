/**
 * The filesystem an instance sees, shared by the bwrap and gVisor drivers: a read-only skeleton root
 * (mount points, the host's /bin-style symlinks, a minimal /etc with only `hosts`) on which the
 * drivers mount the read-only runtime, the code, the agent, the channel dir and a small /tmp.
 * Nothing else of the host (its /etc, home dirs, Aether's data dir) exists inside.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { GUEST_PATHS } from '../../../guest/agent/protocol.mjs';

/** Host directories the runtime (node and its libraries) needs, read-only. */
const RUNTIME = ['/usr', '/bin', '/lib', '/lib64'];
/** The skeleton's directories: mount points, and /etc for `hosts`. */
const DIRS = [GUEST_PATHS.code, GUEST_PATHS.agent, GUEST_PATHS.run, GUEST_PATHS.start, '/tmp', '/proc', '/dev', '/sys', '/etc'];
// Without it, "localhost" does not resolve inside (no DNS there); nothing secret in it.
const HOSTS = '127.0.0.1\tlocalhost\n::1\tlocalhost\n';

export interface SandboxRoot {
  /** Host path of the read-only skeleton to use as the instance's `/`. */
  dir: string;
  /** Runtime directories to bind read-only (those that are real directories on this host). */
  runtimeBinds: string[];
}

/**
 * Creates the skeleton under `stateDir` (idempotent). On merged-/usr hosts /bin, /lib and /lib64
 * are symlinks into /usr: the skeleton mirrors them instead of binding the same tree twice.
 */
export async function prepareSandboxRoot(stateDir: string): Promise<SandboxRoot> {
  const dir = path.join(stateDir, 'rootfs');
  await mkdirTraversable(stateDir);
  await mkdirTraversable(dir);
  for (const inRoot of DIRS) {
    let sub = dir;
    for (const part of inRoot.split('/').filter(Boolean)) await mkdirTraversable((sub = path.join(sub, part)));
  }
  const runtimeBinds: string[] = [];
  for (const host of RUNTIME) {
    const stat = await fs.lstat(host).catch(() => undefined);
    if (stat?.isSymbolicLink()) {
      await fs.symlink(await fs.readlink(host), path.join(dir, host)).catch(ignoreExisting);
    } else if (stat?.isDirectory()) {
      await mkdirTraversable(path.join(dir, host));
      runtimeBinds.push(host);
    }
  }
  await fs.writeFile(path.join(dir, 'etc/hosts'), HOSTS);
  await fs.chmod(path.join(dir, 'etc/hosts'), 0o644);
  return { dir, runtimeBinds };
}

/** Creates `dir` 0755 (whatever the umask): sandboxes run as unprivileged uids and must traverse it. */
export async function mkdirTraversable(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await fs.chmod(dir, 0o755);
}

function ignoreExisting(err: NodeJS.ErrnoException): void {
  if (err.code !== 'EEXIST') throw err;
}
