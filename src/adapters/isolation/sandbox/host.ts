/**
 * What the sandbox drivers share: an instance is a host process running the agent (its stdout and
 * stderr are the function's, its token goes in on stdin), and for bwrap and gVisor also a uid of its
 * own, cgroups with its limits and its channel, all undone once the sandbox is gone (or failed to start).
 */
import { chmod, cp, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';
import path from 'node:path';
import type { InstanceHandle, InstanceSpec, PrestartedInstance, PrestartShape, StartPrep } from '../../../core/ports.js';
import type { StartMode } from '../../../core/types.js';
import { agentDir } from '../../../guest/agent-files.js';
import { agentConfig, openChannel, type InstanceChannel } from '../channel.js';
import { FastStarts } from '../fast-start.js';
import { type Instance, launchInstance, type InstancePlan } from '../instance/instance.js';
import type { InstanceOutput } from '../instance/output.js';
import { type CgroupTree, IDLE_CPU_SHARES, type InstanceCgroup } from '../cgroup.js';
import { type CodeSlot, CodeSlots } from './code-slot.js';
import { prepareSandboxRoot, type SandboxRoot } from './rootfs.js';
import type { UidPool } from '../uid-pool.js';

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
  /** PATH for the host-side commands (sh, setpriv, bwrap, runsc, mount); the sandbox never sees it. */
  hostPath: string;
  /** The roots of pre-started instances, which their code is mounted into later. */
  slots: CodeSlots;
  fastStarts?: FastStarts;
}

export async function prepareSandboxHost(opts: SandboxOptions): Promise<SandboxHost> {
  const root = await prepareSandboxRoot(opts.stateDir);
  const nodePath = await realpath(process.execPath);
  if (!root.runtimeBinds.some((dir) => nodePath.startsWith(`${dir}/`))) {
    throw new Error(`node (${nodePath}) is outside the directories mounted into sandboxes (${root.runtimeBinds.join(', ')})`);
  }
  const agent = await copyAgent(opts.stateDir);
  const hostPath = process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin';
  const fastStarts = opts.fastStart ? new FastStarts(path.join(opts.stateDir, START_DIR), agent, nodePath) : undefined;
  return { ...opts, root, agentDir: agent, nodePath, hostPath, slots: new CodeSlots(opts.stateDir, root.dir, hostPath), fastStarts };
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
  /** Host path of the instance's `/` (read-only): the root skeleton, or a pre-started instance's slot. */
  root: string;
  /** The function's prepared start (fast-start.ts), to mount read-only at GUEST_PATHS.start, if it has one ready. */
  startDir?: string;
}

/** What a sandbox is started for: a function's instance, or a pre-started one that only knows its memory size. */
export interface SandboxShape {
  id: string;
  memoryMb: number;
  vcpu: number;
  /**
   * The function's code, mounted at /code; absent for a pre-started instance: its code arrives in its
   * root's /code later, and its agent is told (AGENT_ENV.prewarm) to say when it is up.
   */
  codeDir?: string;
}

export const shapeOf = (spec: InstanceSpec): SandboxShape => ({
  id: spec.instanceId,
  memoryMb: spec.memoryMb,
  vcpu: spec.vcpu,
  codeDir: spec.codeDir,
});

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

/** An instance that is a host process running the agent: the plan every sandbox driver launches. */
export function agentProcess(spec: InstanceSpec, channel: InstanceChannel, command: SandboxCommand): InstancePlan {
  return {
    ...processPlan(spec.instanceId, spec.startTimeoutMs, spec.onLog, channel, command),
    start: async (child, output) => {
      startProcess(child, output, command);
      // The agent blocks on stdin until this, and fetches its config with the token.
      child.stdin!.end(`${channel.token}\n`);
      await channel.ready;
    },
  };
}

function processPlan(
  id: string,
  startTimeoutMs: number,
  onLog: InstanceSpec['onLog'],
  channel: InstanceChannel,
  command: SandboxCommand,
): Omit<InstancePlan, 'start'> {
  return {
    id,
    startTimeoutMs,
    onLog,
    command: command.command,
    args: command.args,
    env: command.env,
    stdio: command.input3 === undefined ? undefined : ['pipe', 'pipe', 'pipe', 'pipe'],
    cwd: '/', // a sandbox's host processes may be visible inside it (bwrap's PID 1): nothing of Aether's paths
    channel,
    cleanup: command.cleanup,
  };
}

function startProcess(child: ChildProcess, output: InstanceOutput, command: SandboxCommand): void {
  output.function('stdout', child.stdout!);
  output.function('stderr', child.stderr!);
  if (command.input3 !== undefined) {
    const fd3 = child.stdio[3] as Writable;
    fd3.on('error', () => {}); // EPIPE when it dies early: the exit path reports that
    fd3.end(command.input3);
  }
}

/** What a sandbox holds on the host besides its process; released in reverse, each step only if the last succeeded. */
interface Held {
  uid: number;
  cgroup?: InstanceCgroup;
  channel?: InstanceChannel;
  slot?: CodeSlot;
}

async function release(host: SandboxHost, held: Held): Promise<void> {
  await held.channel?.close();
  await held.slot?.remove();
  await held.cgroup?.remove();
  // Only now: if removing the group failed, something may still run as this uid.
  host.uids.release(held.uid);
}

export async function launchSandboxed(
  host: SandboxHost,
  spec: InstanceSpec,
  build: (sandbox: Sandbox) => Promise<SandboxCommand>,
): Promise<InstanceHandle> {
  const startDir = preparedStart(host, spec);
  const held: Held = { uid: host.uids.acquire() };
  let command: SandboxCommand;
  let sandbox: Sandbox;
  try {
    held.cgroup = await host.cgroups.create(spec.instanceId, { memoryMb: spec.memoryMb, vcpu: spec.vcpu, pids: host.pidsLimit });
    held.channel = await openChannel({
      runDir: host.runDir,
      instanceId: spec.instanceId,
      uid: held.uid,
      config: agentConfig(spec, startDir ? 'bundle' : undefined),
    });
    sandbox = { uid: held.uid, cgroup: held.cgroup, channel: held.channel, root: host.root.dir, startDir };
    command = await build(sandbox);
  } catch (err) {
    await release(host, held);
    throw err;
  }
  return launchInstance({
    ...agentProcess(spec, sandbox.channel, command),
    explainExit: (exit) => sandbox.cgroup.exitCause(exit),
    cleanup: () => cleanupAfter(host, held, command),
  });
}

/** How a sandbox driver prepares a function's start: as fast-start.ts can, unless that is switched off. */
export function prepareStart(host: SandboxHost, spec: StartPrep): Promise<StartMode> {
  if (!host.fastStarts) return Promise.resolve({ mode: 'plain', reason: 'fast starts are off (AETHER_FAST_START=0)' });
  return host.fastStarts.prepare(spec);
}

const preparedStart = (host: SandboxHost, spec: InstanceSpec) =>
  host.fastStarts?.ready({ codeDir: spec.codeDir, entrypoint: spec.entrypoint, memoryMb: spec.memoryMb });

async function cleanupAfter(host: SandboxHost, held: Held, command: SandboxCommand): Promise<void> {
  try {
    await command.cleanup?.();
  } finally {
    await release(host, held);
  }
}

/**
 * A sandbox started up to the point where only the function is missing: cgroups (at the least CPU
 * weight while it waits), uid, channel, and node with the agent running, blocked on the token. Its
 * root is a slot that the function's code is mounted into when `assign` gives it its function.
 */
export async function prestartSandboxed(
  host: SandboxHost,
  shape: PrestartShape & { id: string },
  build: (sandbox: Sandbox) => Promise<SandboxCommand>,
): Promise<PrestartedInstance> {
  const held: Held = { uid: host.uids.acquire() };
  let command: SandboxCommand;
  let sandbox: Sandbox;
  try {
    held.cgroup = await host.cgroups.create(shape.id, {
      memoryMb: shape.memoryMb,
      vcpu: 1,
      pids: host.pidsLimit,
      cpuShares: IDLE_CPU_SHARES,
    });
    held.channel = await openChannel({ runDir: host.runDir, instanceId: shape.id, uid: held.uid });
    held.slot = await host.slots.create(shape.id);
    sandbox = { uid: held.uid, cgroup: held.cgroup, channel: held.channel, root: held.slot.root };
    command = await build(sandbox);
  } catch (err) {
    await release(host, held);
    throw err;
  }
  // Until it has a function, its output (nothing, unless the agent fails) goes nowhere but into failure messages.
  let onLog: InstanceSpec['onLog'] = () => {};
  const instance: Instance = await launchInstance({
    ...processPlan(shape.id, shape.startTimeoutMs, (...line) => onLog(...line), sandbox.channel, command),
    start: async (child, output) => {
      startProcess(child, output, command);
      await sandbox.channel.booted;
    },
    explainExit: (exit) => sandbox.cgroup.exitCause(exit),
    cleanup: () => cleanupAfter(host, held, command),
  });
  const slot = held.slot;
  return {
    memoryMb: shape.memoryMb,
    exited: instance.exited,
    stop: (graceMs) => instance.stop(graceMs),
    usage: () => sandbox.cgroup.usage(),
    async assign(spec) {
      instance.prewarmed = true;
      instance.id = spec.instanceId;
      onLog = spec.onLog;
      await instance.resume(async (child) => {
        const startDir = preparedStart(host, spec);
        await slot.mountCode(spec.codeDir);
        if (startDir) await slot.mountStart(startDir);
        await sandbox.cgroup.setCpu(spec.vcpu);
        sandbox.channel.assign(agentConfig(spec, startDir ? 'bundle' : undefined));
        child.stdin!.end(`${sandbox.channel.token}\n`);
        await sandbox.channel.ready;
      }, spec.startTimeoutMs);
      return instance;
    },
  };
}

/**
 * After a crash of Aether its sandboxes died with it (die-with-parent / pdeathsig), but their
 * cgroups, channel dirs and gVisor state remain: remove them before starting anything new.
 */
export async function cleanLeftovers(host: SandboxHost): Promise<number> {
  const slots = await host.slots.sweep();
  const groups = await host.cgroups.sweep();
  const channels = await readdir(host.runDir).catch(() => []);
  await Promise.all(channels.map((name) => rm(path.join(host.runDir, name), { recursive: true, force: true })));
  for (const dir of ['bundles', 'runsc', START_DIR]) await rm(path.join(host.stateDir, dir), { recursive: true, force: true });
  return Math.max(groups, channels.length, slots);
}
