/**
 * An instance that is a host process (node itself, bwrap, runsc...) running the guest agent, plus its
 * channel. Sandbox drivers supply the command line and hooks; everything about the lifecycle is here.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { EXIT_CONFIG } from '../../agent/protocol.mjs';
import { AetherError, errorMessage } from '../../core/errors.js';
import type { ExitInfo, InstanceHandle, InstanceSpec } from '../../core/ports.js';
import type { InstanceChannel } from './channel.js';

export interface ProcessExit {
  code: number | null;
  signal: string | null;
  /** Set when the process could not be spawned at all. */
  spawnError?: string;
}

export interface ProcessHooks {
  /**
   * Runs after spawn and before the agent gets its token, so before any function code can run:
   * e.g. move the pid into a cgroup. Throwing fails the start.
   */
  afterSpawn?(pid: number): Promise<void>;
  /** Why the process ended, when the driver can tell (e.g. the cgroup's OOM counter). Runs before cleanup. */
  explainExit?(exit: ProcessExit): Promise<Partial<ExitInfo>>;
  /** Releases what the driver set up (cgroups, rootfs...). Runs once, after the process and channel are gone. */
  cleanup?(): Promise<void>;
}

export interface ProcessLaunch {
  spec: InstanceSpec;
  /** Owned by the instance from here on: closed when the process ends, whatever happens. */
  channel: InstanceChannel;
  command: string;
  args: string[];
  /** The whole environment of the process (nothing is inherited from the host). */
  env: Record<string, string>;
  hooks?: ProcessHooks;
}

export const DEFAULT_STOP_GRACE_MS = 5000;
/** How long to wait for the last output after the process exited (a grandchild may hold the pipes). */
const OUTPUT_DRAIN_MS = 200;
const STDERR_TAIL_LINES = 20;
const MAX_LINE_CHARS = 16 * 1024;

/** Spawns the process and resolves once its agent is ready; otherwise kills it, cleans up and rejects. */
export async function launchProcessInstance(launch: ProcessLaunch): Promise<InstanceHandle> {
  let instance: ProcessInstance;
  try {
    instance = new ProcessInstance(launch);
  } catch (err) {
    await launch.channel.close();
    await launch.hooks?.cleanup?.();
    throw err;
  }
  await instance.start();
  return instance;
}

class ProcessInstance implements InstanceHandle {
  readonly id: string;
  readonly exited: Promise<ExitInfo>;
  readonly condemned: Promise<string>;
  private condemn!: (reason: string) => void;
  private readonly child: ChildProcess;
  private readonly ended: Promise<ProcessExit>;
  private readonly stderrTail: string[] = [];
  private hasEnded = false;
  /** Why the host ended the instance, when it did. */
  private cause?: string;
  private stopping?: Promise<void>;

  constructor(private readonly launch: ProcessLaunch) {
    const { spec } = launch;
    this.id = spec.instanceId;
    this.condemned = new Promise((resolve) => (this.condemn = resolve));
    // detached: its own process group, so that signals reach everything it started.
    this.child = spawn(launch.command, launch.args, { env: launch.env, stdio: 'pipe', detached: true });
    this.child.stdin!.on('error', () => {}); // EPIPE when it dies early: the exit path reports that
    forwardLines(this.child.stdout!, (line) => spec.onLog('stdout', line));
    forwardLines(this.child.stderr!, (line) => {
      this.stderrTail.push(line);
      if (this.stderrTail.length > STDERR_TAIL_LINES) this.stderrTail.shift();
      spec.onLog('stderr', line);
    });
    this.ended = processExit(this.child).then((exit) => {
      this.hasEnded = true;
      this.condemn(this.cause ?? describeExit(exit));
      return exit;
    });
    this.exited = this.ended.then((exit) => this.teardown(exit));
  }

  async start(): Promise<void> {
    const failure = await this.untilReady();
    if (!failure) {
      this.killOnAuthFailure();
      return;
    }
    this.cause ??= failure.message;
    this.signal('SIGKILL');
    const { reason } = await this.exited;
    const explained = reason && reason !== failure.message ? ` (${reason})` : ''; // e.g. the driver saw an OOM kill
    throw new AetherError(
      failure.status,
      failure.code,
      `instance ${this.id} failed to start: ${failure.message}${explained}${this.stderrSummary()}`,
    );
  }

  /** Undefined once the agent dialed in; otherwise what went wrong first. */
  private async untilReady(): Promise<AetherError | undefined> {
    const { spec, channel } = this.launch;
    const failed = (message: string) => new AetherError(502, 'start_failed', message);
    if (this.child.pid === undefined) return failed(describeExit(await this.ended));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, spec.startTimeoutMs, 'timeout')));
    const ready = this.handOverToken().then(() => channel.ready.then(() => 'ready' as const));
    ready.catch(() => {}); // may settle after the race is decided
    try {
      const outcome = await Promise.race([ready, timedOut, this.ended.then(() => 'exit' as const)]);
      if (outcome === 'ready') return undefined;
      if (outcome === 'timeout') {
        return new AetherError(504, 'start_timeout', `did not become ready within ${spec.startTimeoutMs} ms`);
      }
      return failed(describeExit(await this.ended));
    } catch (err) {
      return failed(errorMessage(err));
    } finally {
      clearTimeout(timer);
    }
  }

  connect() {
    return this.launch.channel.connect();
  }

  stop(graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    this.stopping ??= (async () => {
      if (!this.hasEnded) {
        this.cause ??= 'stopped';
        this.condemn(this.cause);
        this.signal('SIGTERM');
        if (!(await settlesWithin(this.ended, graceMs))) this.signal('SIGKILL');
      }
      await this.exited;
    })();
    return this.stopping;
  }

  /** The agent blocks on stdin until this: afterSpawn runs before any function code. */
  private async handOverToken(): Promise<void> {
    await this.launch.hooks?.afterSpawn?.(this.child.pid!);
    this.child.stdin!.end(`${this.launch.channel.token}\n`);
  }

  /** Before ready the agent fails closed on its own (exit 78); afterwards a refusal means probing. */
  private killOnAuthFailure(): void {
    void this.launch.channel.authFailure.then((reason) => {
      if (this.hasEnded) return;
      this.cause ??= reason;
      this.condemn(this.cause);
      this.signal('SIGKILL');
    });
  }

  private signal(sig: NodeJS.Signals): void {
    if (this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, sig);
    } catch {
      // ESRCH: the whole group is gone already
    }
  }

  private async teardown(exit: ProcessExit): Promise<ExitInfo> {
    const { channel, hooks, spec } = this.launch;
    this.signal('SIGKILL'); // whatever the process left behind in its group
    const problem = (what: string, err: unknown) => spec.onLog('stderr', `[aether-host] ${what} failed: ${errorMessage(err)}`);
    let explained: Partial<ExitInfo> = {};
    try {
      explained = (await hooks?.explainExit?.(exit)) ?? {};
    } catch (err) {
      problem('explaining the exit', err);
    }
    await channel.close().catch((err: unknown) => problem('closing the channel', err));
    try {
      await hooks?.cleanup?.();
    } catch (err) {
      problem('cleanup', err);
    }
    return {
      code: exit.code,
      signal: exit.signal,
      ...explained,
      reason: explained.reason ?? this.cause ?? describeExit(exit),
    };
  }

  /** The agent's own lines say best what went wrong; otherwise the last lines of any output. */
  private stderrSummary(): string {
    const agentLines = this.stderrTail.filter((line) => line.startsWith('[aether-agent]'));
    const lines = (agentLines.length ? agentLines : this.stderrTail.filter((line) => line.trim())).slice(-3);
    return lines.length ? `: ${lines.join(' | ')}` : '';
  }
}

function describeExit(exit: ProcessExit): string {
  if (exit.spawnError) return `could not be spawned: ${exit.spawnError}`;
  if (exit.signal) return `killed by ${exit.signal}`;
  if (exit.code === EXIT_CONFIG) return `agent refused to start (exit code ${EXIT_CONFIG})`;
  return `exited with code ${exit.code}`;
}

/** Settles once the process is gone and its output is read (or OUTPUT_DRAIN_MS later). */
function processExit(child: ChildProcess): Promise<ProcessExit> {
  return new Promise((resolve) => {
    child.once('error', (err) => {
      if (child.pid === undefined) resolve({ code: null, signal: null, spawnError: err.message });
    });
    child.once('exit', (code, signal) => {
      const done = () => resolve({ code, signal });
      const timer = setTimeout(done, OUTPUT_DRAIN_MS);
      child.once('close', () => {
        clearTimeout(timer);
        done();
      });
    });
  });
}

function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms, false);
    void promise.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Calls onLine for each line; very long lines arrive in pieces rather than growing without bound. */
function forwardLines(stream: Readable, onLine: (line: string) => void): void {
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const line of lines) onLine(line.endsWith('\r') ? line.slice(0, -1) : line);
    while (partial.length > MAX_LINE_CHARS) {
      onLine(partial.slice(0, MAX_LINE_CHARS));
      partial = partial.slice(MAX_LINE_CHARS);
    }
  });
  stream.on('end', () => {
    if (partial) onLine(partial);
  });
}
