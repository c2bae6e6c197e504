/**
 * The instance lifecycle, one for every driver. An instance is a host process (a sandbox runner such
 * as bwrap or runsc, node itself for `none`, or a VMM: QEMU, Firecracker) in its own process group:
 * - start: the driver's steps (hand over the token, configure the VMM...) raced against the start
 *   timeout and the process's end; whichever comes first decides, and a failed start kills the
 *   process, cleans up and says why, quoting the instance's last words;
 * - output: the function's lines to its log, diagnostics kept for failure messages (output.ts);
 * - connect: the channel's connections, or the driver's own way in;
 * - stop: the driver's polite request (default SIGTERM), then SIGKILL to the group after the grace;
 * - condemned: settles the moment the instance is known to be ending (killed, stopping, the agent's
 *   exit reported by a VM's guest, the process gone), so that nothing more is routed to it;
 * - teardown, once the process is gone: its group killed, the end explained, the channel closed,
 *   the driver's resources released; then `exited` settles with the reason.
 * Drivers describe only what differs: an InstancePlan.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import type { Socket } from 'node:net';
import { AetherError, errorMessage, unavailable } from '../../../core/errors.js';
import type { ExitInfo, InstanceHandle, InstanceSpec } from '../../../core/ports.js';
import type { InstanceChannel } from '../channel.js';
import { describeExit, type ProcessExit } from './exit.js';
import { InstanceOutput } from './output.js';

export const DEFAULT_STOP_GRACE_MS = 5000;
/** How long to wait for the last output after the process exited (a grandchild may hold the pipes). */
const OUTPUT_DRAIN_MS = 200;
/** After a VM's guest reported the agent's exit, all that is left is powering off: the last output gets this long. */
const AGENT_EXIT_FLUSH_MS = 250;

export interface InstancePlan {
  /** The instance's id (or a probe's name), in every failure message. */
  id: string;
  startTimeoutMs: number;
  onLog: InstanceSpec['onLog'];
  /** The host process that is the instance. */
  command: string;
  args: string[];
  /** Its whole environment (default: the host's). */
  env?: Record<string, string>;
  /** Default: stdin, stdout and stderr as pipes. */
  stdio?: StdioOptions;
  /** Its working directory (default: Aether's). */
  cwd?: string;
  /** Owned by the instance from here on, closed when it ends: connections, and a kill on an auth failure. */
  channel?: InstanceChannel;
  /**
   * The start, called right after spawn and raced against the start timeout and the process's end:
   * attach the process's streams to `output` at once, then hand over the token, configure the VMM...
   * and resolve once the instance takes connections. A rejection fails the start with its message.
   * A guest that reports the agent's exit (a VM's init) calls `agentExited` then, with how it ended.
   */
  start(child: ChildProcess, output: InstanceOutput, agentExited: (reason: string) => void): Promise<void>;
  /** Asks the instance to end (default: SIGTERM to its process group). A rejection kills it at once. */
  askToStop?(child: ChildProcess): Promise<void> | void;
  /** Why it ended, when the driver can tell. Runs once the process is gone, before the channel closes. */
  explainExit?(exit: ProcessExit): Promise<ExitExplanation> | ExitExplanation;
  /** Releases what the driver set up. Runs once, last. */
  cleanup?(): Promise<void>;
  /** Default: the channel's connections. */
  connect?(): Promise<Socket>;
}

export interface ExitExplanation {
  /** The agent's own exit (a VM's init reports it), rather than the host process's. */
  code?: number | null;
  signal?: string | null;
  /** A cause that outranks the host's own, e.g. a limit the instance hit. */
  reason?: string;
  oom?: boolean;
  /** The end as the driver sees it when no cause is known; the instance's last words follow it. */
  description?: string;
}

/** Spawns the instance and resolves once it is ready; otherwise kills it, cleans up and rejects. */
export async function launchInstance(plan: InstancePlan): Promise<Instance> {
  let instance: Instance;
  try {
    instance = new Instance(plan);
  } catch (err) {
    await plan.channel?.close();
    await plan.cleanup?.();
    throw err;
  }
  await instance.start();
  return instance;
}

export class Instance implements InstanceHandle {
  /** A pre-started instance takes its function's instance id when it gets the function. */
  id: string;
  /** It was pre-started, before its function was known (a warm pool's). */
  prewarmed = false;
  readonly exited: Promise<ExitInfo>;
  readonly condemned: Promise<string>;
  readonly output: InstanceOutput;
  private condemn!: (reason: string) => void;
  private readonly child: ChildProcess;
  private readonly ended: Promise<ProcessExit>;
  private hasEnded = false;
  /** The guest said the agent is gone: the instance takes no more connections. */
  private agentGone = false;
  /** Why the host ended the instance, when it did. */
  private cause?: string;
  private stopping?: Promise<void>;

  constructor(private readonly plan: InstancePlan) {
    this.id = plan.id;
    this.output = new InstanceOutput(plan.onLog);
    this.condemned = new Promise((resolve) => (this.condemn = resolve));
    // detached: its own process group, so that signals reach everything it started, and none meant for the host reach it.
    this.child = spawn(plan.command, plan.args, { env: plan.env, cwd: plan.cwd, stdio: plan.stdio ?? 'pipe', detached: true });
    this.child.stdin?.on('error', () => {}); // EPIPE when it dies early: the exit path reports that
    this.ended = processExit(this.child).then((exit) => {
      this.hasEnded = true;
      this.condemn(this.cause ?? describeExit(exit));
      return exit;
    });
    this.exited = this.ended.then((exit) => this.teardown(exit));
  }

  /** Called once, right after construction (the plan's start must see the process's output from the beginning). */
  async start(): Promise<void> {
    await this.step(() => this.plan.start(this.child, this.output, (reason) => this.agentExited(reason)), this.plan.startTimeoutMs);
    // Before ready the agent fails closed by itself; after ready a refused token means probing.
    void this.plan.channel?.authFailure.then((reason) => this.kill(reason));
  }

  /**
   * A later start step of a running instance (a pre-started one getting its function), raced against
   * the timeout and the process's end like the start: a failure kills the instance and rejects with
   * what went wrong first, quoting its last words.
   */
  async resume(step: (child: ChildProcess) => Promise<void>, timeoutMs: number): Promise<void> {
    await this.step(() => step(this.child), timeoutMs);
  }

  private async step(run: () => Promise<void>, timeoutMs: number): Promise<void> {
    const failure = await this.untilDone(run, timeoutMs);
    if (!failure) return;
    this.kill(failure.message);
    const { reason } = await this.exited;
    const explained = reason && reason !== failure.message ? ` (${reason})` : ''; // e.g. the driver saw an OOM kill
    const message = `${failure.message}${explained}`;
    const lastWords = this.output.lastWords();
    throw new AetherError(failure.code, `instance ${this.id} failed to start: ${message}${message.endsWith(lastWords) ? '' : lastWords}`, {
      cause: failure.cause,
    });
  }

  connect(): Promise<Socket> {
    if (this.hasEnded || this.agentGone) return Promise.reject(unavailable('the instance is gone', 'instance_stopped'));
    if (this.plan.connect) return this.plan.connect();
    if (this.plan.channel) return this.plan.channel.connect();
    return Promise.reject(new Error(`instance ${this.id} takes no connections`));
  }

  frames(): Socket | undefined {
    return this.hasEnded || this.agentGone ? undefined : this.plan.channel?.frames();
  }

  /** Asks the instance to end, and kills it after graceMs (at once with 0). Idempotent. */
  stop(graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    this.stopping ??= (async () => {
      if (!this.hasEnded) {
        this.cause ??= 'stopped';
        this.condemn(this.cause);
        const timer = setTimeout(() => this.kill(), graceMs);
        if (graceMs > 0) {
          const ask = async () => (this.plan.askToStop ? this.plan.askToStop(this.child) : this.signal('SIGTERM'));
          ask().catch(() => this.kill());
        }
        await this.ended;
        clearTimeout(timer);
      }
      await this.exited;
    })();
    return this.stopping;
  }

  /** Undefined once `run` resolved; otherwise what went wrong first. */
  private async untilDone(run: () => Promise<void>, timeoutMs: number): Promise<AetherError | undefined> {
    const exitFailure = async () => new AetherError('start_failed', (await this.exited).reason ?? 'ended');
    if (this.child.pid === undefined || this.hasEnded) return exitFailure();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, timeoutMs, 'timeout')));
    const ready = run().then(() => 'ready' as const);
    ready.catch(() => {}); // may settle after the race is decided
    try {
      const outcome = await Promise.race([ready, timedOut, this.ended.then(() => 'exit' as const)]);
      if (outcome === 'ready') return undefined;
      if (outcome === 'timeout') return new AetherError('start_timeout', `did not become ready within ${timeoutMs} ms`);
      return await exitFailure();
    } catch (err) {
      return err instanceof AetherError ? err : new AetherError('start_failed', errorMessage(err), { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Nothing is left to serve: end the process soon, rather than when the guest has powered off. */
  private agentExited(reason: string): void {
    if (this.agentGone) return;
    this.agentGone = true;
    this.condemn(this.cause ?? reason);
    setTimeout(() => this.kill(), AGENT_EXIT_FLUSH_MS).unref();
  }

  private kill(reason?: string): void {
    if (this.hasEnded) return;
    if (reason) this.cause ??= reason;
    if (this.cause) this.condemn(this.cause);
    this.signal('SIGKILL');
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
    const { plan } = this;
    this.signal('SIGKILL'); // whatever the process left behind in its group
    const problem = (what: string, err: unknown) => plan.onLog('stderr', `[aether-host] ${what} failed: ${errorMessage(err)}`);
    let explained: ExitExplanation = {};
    try {
      explained = (await plan.explainExit?.(exit)) ?? {};
    } catch (err) {
      problem('explaining the exit', err);
    }
    await plan.channel?.close().catch((err: unknown) => problem('closing the channel', err));
    try {
      await plan.cleanup?.();
    } catch (err) {
      problem('cleanup', err);
    }
    const own = explained.code !== undefined || explained.signal !== undefined;
    const status = own ? { code: explained.code ?? null, signal: explained.signal ?? null } : { code: exit.code, signal: exit.signal };
    const unexplained = explained.description
      ? `${explained.description}${this.output.lastWords()}`
      : describeExit({ ...status, spawnError: exit.spawnError });
    return { ...status, ...(explained.oom ? { oom: true } : {}), reason: explained.reason ?? this.cause ?? unexplained };
  }
}

/** Settles once the process is gone and its output is read (or OUTPUT_DRAIN_MS later). */
function processExit(child: ChildProcess): Promise<ProcessExit> {
  return new Promise((resolve) => {
    child.on('error', (err) => {
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
