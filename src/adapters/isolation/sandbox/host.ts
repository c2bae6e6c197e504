/**
 * What the sandbox drivers share: an instance is a host process running the agent (its stdout and
 * stderr are the function's, its token goes in on stdin), and for bwrap and gVisor also a uid of its
 * own, cgroups with its limits and its channel, all undone once the sandbox is gone (or failed to start).
 */
import { chmod, cp, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import path from 'node:path';
import type { InstanceHandle, InstanceSpec, StartPrep } from '../../../core/ports.js';
import type { StartMode } from '../../../core/types.js';
import { agentDir } from '../../../guest/agent-files.js';
import { agentConfig, openChannel, type InstanceChannel } from '../channel.js';
import { FastStarts } from '../fast-start.js';
import { launchInstance, type InstancePlan } from '../instance/instance.js';
import type { CgroupTree, InstanceCgroup } from './cgroup.js';
import { prepareSandboxRoot, type SandboxRoot } from './rootfs.js';
import type { UidPool } from './uid-pool.js';

/** Prepared starts, in the state dir: cleared at start-up (cleanLeftovers) and prepared again on demand. */
const START_DIR = 'start';

export interface SandboxOptions {
  /** Where the per-instance channel directories are created. */
  runDir: string;
  /** The drivers' own files: the root skeleton, gVisor's state and bundles. */
  stateDir: string;
  pidsLimit: number;
  /** RLIMIT_NOFILE (soft and hard) of the instance's processes. */
  openFilesLimit: number;
  /** Size of each instance's writable /tmp. */
  tmpMb: number;
  /** Prepare functions' code for faster starts (fast-start.ts); off: every instance starts plainly. */
  fastStart: boolean;
  cgroups: CgroupTree;
  uids: UidPool;
}

/** Everything a sandbox driver needs, checked once when the driver is created. */
export interface SandboxHost extends SandboxOptions {
  root: SandboxRoot;
  /** Host path of the built agent, mounted read-only in every instance. */
  agentDir: string;
  /** The node binary, found inside through the read-only runtime mounts. */
  nodePath: string;
  /** PATH for the host-side commands (sh, setpriv, bwrap, runsc); the sandbox never sees it. */
  hostPath: string;
  fastStarts?: FastStarts;
}

export async function prepareSandboxHost(opts: SandboxOptions): Promise<SandboxHost> {
  const root = await prepareSandboxRoot(opts.stateDir);
  const nodePath = await realpath(process.execPath);
  if (!root.runtimeBinds.some((dir) => nodePath.startsWith(`${dir}/`))) {
    throw new Error(`node (${nodePath}) is outside the directories mounted into sandboxes (${root.runtimeBinds.join(', ')})`);
  }
  const agent = await copyAgent(opts.stateDir);
  const fastStarts = opts.fastStart ? new FastStarts(path.join(opts.stateDir, START_DIR), agent, nodePath) : undefined;
  return { ...opts, root, agentDir: agent, nodePath, hostPath: process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin', fastStarts };
}

/**
 * The agent as instances mount it: a copy in the state dir, readable by every uid, so that sandboxes
 * neither see the path of Aether's own installation (in their mount table) nor need to get through
 * it (a checkout in a private home directory).
 */
async function copyAgent(stateDir: string): Promise<string> {
  const dir = path.join(stateDir, 'agent');
  const fresh = `${dir}.new`; // a fixed name: what a crash mid-copy leaves is replaced next time
  await rm(fresh, { recursive: true, force: true });
  await cp(agentDir(), fresh, { recursive: true });
  for (const entry of ['', ...(await readdir(fresh, { recursive: true }))]) {
    const file = path.join(fresh, entry);
    await chmod(file, (await stat(file)).isDirectory() ? 0o755 : 0o644);
  }
  // Running instances keep the copy they mounted; new ones get this one.
  await rm(dir, { recursive: true, force: true });
  await rename(fresh, dir);
  return dir;
}

/** The first directory on the way to `dir` (itself included) that other users, and so sandboxes, cannot pass through. */
export async function untraversable(dir: string): Promise<{ dir: string; mode: number } | undefined> {
  let current = '/';
  for (const part of ['', ...path.resolve(dir).split('/').filter(Boolean)]) {
    current = path.join(current, part);
    const mode = await stat(current).then(
      (s) => s.mode,
      () => undefined,
    );
    if (mode === undefined) return undefined; // created later, traversable
    if ((mode & 0o001) === 0) return { dir: current, mode: mode & 0o7777 };
  }
  return undefined;
}

export interface Sandbox {
  uid: number;
  cgroup: InstanceCgroup;
  channel: InstanceChannel;
  /** The function's prepared start (fast-start.ts), to mount read-only at GUEST_PATHS.start, if it has one ready. */
  startDir?: string;
}

export interface SandboxCommand {
  command: string;
  args: string[];
  /** The whole environment of the process (nothing is inherited from the host). */
  env: Record<string, string>;
  /** Written to the process's descriptor 3, then closed (bwrap reads its options there: `--args 3`). */
  input3?: string;
  /** Driver-specific teardown (e.g. runsc state), run after the process is gone, before the cgroup goes. */
  cleanup?(): Promise<void>;
}

/** How a sandbox driver prepares a function's start: as fast-start.ts can, unless that is switched off. */
export function prepareStart(host: SandboxHost, spec: StartPrep): Promise<StartMode> {
  if (!host.fastStarts) return Promise.resolve({ mode: 'plain', reason: 'fast starts are off (AETHER_FAST_START=0)' });
  return host.fastStarts.prepare(spec);
}

/** An instance that is a host process running the agent: the plan every sandbox driver launches. */
export function agentProcess(spec: InstanceSpec, channel: InstanceChannel, command: SandboxCommand): InstancePlan {
  return {
    id: spec.instanceId,
    startTimeoutMs: spec.startTimeoutMs,
    onLog: spec.onLog,
    command: command.command,
    args: command.args,
    env: command.env,
    stdio: command.input3 === undefined ? undefined : ['pipe', 'pipe', 'pipe', 'pipe'],
    cwd: '/', // a sandbox's host processes may be visible inside it (bwrap's PID 1): nothing of Aether's paths
    channel,
    start: async (child, output) => {
      output.function('stdout', child.stdout!);
      output.function('stderr', child.stderr!);
      if (command.input3 !== undefined) {
        const fd3 = child.stdio[3] as Writable;
        fd3.on('error', () => {}); // EPIPE when it dies early: the exit path reports that
        fd3.end(command.input3);
      }
      // The agent blocks on stdin until this, and fetches its config with the token.
      child.stdin!.end(`${channel.token}\n`);
      await channel.ready;
    },
    cleanup: command.cleanup,
  };
}

export async function launchSandboxed(
  host: SandboxHost,
  spec: InstanceSpec,
  build: (sandbox: Sandbox) => Promise<SandboxCommand>,
): Promise<InstanceHandle> {
  const startDir = host.fastStarts?.ready({ codeDir: spec.codeDir, entrypoint: spec.entrypoint, memoryMb: spec.memoryMb });
  const uid = host.uids.acquire();
  let cgroup: InstanceCgroup | undefined;
  let channel: InstanceChannel | undefined;
  let command: SandboxCommand;
  try {
    cgroup = await host.cgroups.create(spec.instanceId, { memoryMb: spec.memoryMb, vcpu: spec.vcpu, pids: host.pidsLimit });
    channel = await openChannel({
      runDir: host.runDir,
      instanceId: spec.instanceId,
      uid,
      config: agentConfig(spec, startDir ? 'bundle' : undefined),
    });
    command = await build({ uid, cgroup, channel, startDir });
  } catch (err) {
    await channel?.close();
    await cgroup?.remove();
    host.uids.release(uid);
    throw err;
  }
  const group = cgroup;
  return launchInstance({
    ...agentProcess(spec, channel, command),
    explainExit: (exit) => group.exitCause(exit),
    cleanup: async () => {
      try {
        await command.cleanup?.();
      } finally {
        await group.remove();
        // Only now: if removing the group failed, something may still run as this uid.
        host.uids.release(uid);
      }
    },
  });
}

/**
 * After a crash of Aether its sandboxes died with it (die-with-parent / pdeathsig), but their
 * cgroups, channel dirs and gVisor state remain: remove them before starting anything new.
 */
export async function cleanLeftovers(host: SandboxHost): Promise<number> {
  const groups = await host.cgroups.sweep();
  const channels = await readdir(host.runDir).catch(() => []);
  await Promise.all(channels.map((name) => rm(path.join(host.runDir, name), { recursive: true, force: true })));
  for (const dir of ['bundles', 'runsc', START_DIR]) await rm(path.join(host.stateDir, dir), { recursive: true, force: true });
  return Math.max(groups, channels.length);
}
