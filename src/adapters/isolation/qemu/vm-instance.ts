/**
 * One running microVM: the QEMU process, its control port (token in; ready and exit status out;
 * stop in), the function's stdout/stderr ports, and the request channel through hostfwd.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { constants } from 'node:os';
import type { Duplex, Writable } from 'node:stream';
import { EXIT_CONFIG } from '../../../agent/protocol.mjs';
import { INIT_LOG_PREFIX } from '../../../image/init-script.js';
import { AetherError, errorMessage, unavailable } from '../../../core/errors.js';
import type { ExitInfo, InstanceHandle, InstanceSpec } from '../../../core/ports.js';
import type { InstanceChannel } from '../channel.js';
import { lines, vmmEnded } from '../vmm-process.js';
import { PORT_FDS } from './qemu-args.js';

const DEFAULT_STOP_GRACE_MS = 5000;
const TAIL_LINES = 20;
/** The guest kernel's OOM killer announces itself on the console (at a level `quiet` still shows). */
const OOM_LINE = /Out of memory: Killed process|oom-kill:/;
const INIT_LINE = new RegExp(`^${INIT_LOG_PREFIX.replace(/[[\]]/g, '\\$&')} (\\S+).* up=([\\d.]+)$`);

/** Where the time to ready went, in ms (kernel from the guest's clock, the rest from the host's). */
export interface BootTimings {
  /** QEMU start-up, firmware and loading the kernel: until the guest kernel's clock started. */
  vmm: number;
  /** Kernel boot until /init runs. */
  kernel: number;
  /** /init: modules, devices, network, mounts, until node is started. */
  init: number;
  /** node start-up, config, loading the function, until the agent takes connections. */
  agent: number;
  total: number;
}

export interface VmLaunch {
  spec: InstanceSpec;
  /** Owned by the instance from here on: closed when the VM ends. */
  channel: InstanceChannel;
  qemu: string;
  args: string[];
  /** The host end of the request channel (127.0.0.1). */
  hostPort: number;
}

/** Boots the VM and resolves once its agent is ready; otherwise kills it, cleans up and rejects. */
export async function launchVm(launch: VmLaunch): Promise<VmInstance> {
  const vm = new VmInstance(launch);
  await vm.start();
  return vm;
}

export class VmInstance implements InstanceHandle {
  readonly id: string;
  readonly exited: Promise<ExitInfo>;
  readonly condemned: Promise<string>;
  private condemn!: (reason: string) => void;
  /** Set once the VM is ready. */
  boot?: BootTimings;
  private readonly child: ChildProcess;
  private readonly ctl: Writable;
  private readonly spawnedAt = Date.now();
  private readonly marks = new Map<string, { at: number; uptimeMs: number }>();
  private readonly tail: string[] = [];
  private readonly ready: Promise<void>;
  private readonly ended: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private guestStatus?: number;
  private oom = false;
  private hasEnded = false;
  private cause?: string;
  private stopping?: Promise<void>;

  constructor(private readonly launch: VmLaunch) {
    const { spec } = launch;
    this.id = spec.instanceId;
    this.condemned = new Promise((resolve) => (this.condemn = resolve));
    // detached: QEMU gets its own process group, so no terminal signal meant for the host reaches it.
    this.child = spawn(launch.qemu, launch.args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'], detached: true });
    const stdio = this.child.stdio as unknown as Duplex[]; // fds 3-5 are socketpairs: readable and writable
    this.ctl = stdio[PORT_FDS.ctl]!;
    this.ctl.on('error', () => {}); // EPIPE once QEMU is gone: the exit path reports that
    this.ctl.write(`${launch.channel.token}\n`);
    let markReady!: () => void;
    this.ready = new Promise((resolve) => (markReady = resolve));
    lines(stdio[PORT_FDS.ctl]!, (line) => this.onControl(line, markReady));
    lines(stdio[PORT_FDS.stdout]!, (line) => spec.onLog('stdout', line));
    lines(stdio[PORT_FDS.stderr]!, (line) => {
      this.keep(line);
      spec.onLog('stderr', line);
    });
    lines(this.child.stdout!, (line) => this.onConsole(line));
    lines(this.child.stderr!, (line) => this.onConsole(`qemu: ${line}`));
    this.ended = vmmEnded(this.child, (message) => this.keep(`qemu: ${message}`));
    void this.ended.then((exit) => {
      this.hasEnded = true;
      this.condemn(this.cause ?? this.describe(this.status(exit)));
    });
    this.exited = this.ended.then((exit) => this.teardown(exit));
  }

  async start(): Promise<void> {
    const { spec, channel } = this.launch;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, spec.startTimeoutMs, 'timeout')));
    const outcome = await Promise.race([this.ready.then(() => 'ready' as const), timedOut, this.ended.then(() => 'exit' as const)]);
    clearTimeout(timer);
    if (outcome === 'ready') {
      this.boot = this.timings();
      void channel.authFailure.then((reason) => this.kill(reason));
      return;
    }
    const failure =
      outcome === 'timeout'
        ? new AetherError(504, 'start_timeout', `did not become ready within ${spec.startTimeoutMs} ms`)
        : new AetherError(502, 'start_failed', this.describe(this.status(await this.ended)));
    this.kill(failure.message);
    await this.exited;
    throw new AetherError(failure.status, failure.code, `instance ${this.id} failed to start: ${failure.message}${this.summary()}`);
  }

  /** A new TCP connection through hostfwd: QEMU accepts at once and connects to the guest behind it. */
  connect(): Promise<Socket> {
    if (this.hasEnded) return Promise.reject(unavailable('the instance is gone', 'instance_stopped'));
    return new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port: this.launch.hostPort, noDelay: true });
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(socket);
      });
      socket.once('error', reject);
    });
  }

  /** Asks the guest's init to SIGTERM the agent (it powers off when the agent is gone); kills QEMU after graceMs. */
  stop(graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    this.stopping ??= (async () => {
      if (!this.hasEnded) {
        this.cause ??= 'stopped';
        this.condemn(this.cause);
        this.ctl.write('stop\n');
        const timer = setTimeout(() => this.kill('stopped'), graceMs);
        await this.ended;
        clearTimeout(timer);
      }
      await this.exited;
    })();
    return this.stopping;
  }

  private kill(reason: string): void {
    if (this.hasEnded) return;
    this.cause ??= reason;
    this.condemn(this.cause);
    this.child.kill('SIGKILL');
  }

  private onControl(line: string, markReady: () => void): void {
    const exit = /^exit (\d+)$/.exec(line);
    if (line === 'ready') {
      this.mark('ready');
      markReady();
    } else if (exit) this.guestStatus = Number(exit[1]);
  }

  /**
   * The console carries init's progress (kept for the timings) and kernel messages (warnings and
   * errors only, `quiet`): they stay in the tail for failure messages, and only what concerns the
   * function reaches its log (the OOM killer, init failing).
   */
  private onConsole(line: string): void {
    this.keep(line);
    const init = INIT_LINE.exec(line);
    if (init) this.mark(init[1]!, Number(init[2]) * 1000);
    if (OOM_LINE.test(line)) this.oom = true;
    if (OOM_LINE.test(line) || init?.[1] === 'fatal:') this.launch.spec.onLog('stderr', `[aether-vm] ${line}`);
  }

  private mark(event: string, uptimeMs = 0): void {
    if (!this.marks.has(event)) this.marks.set(event, { at: Date.now(), uptimeMs });
  }

  private timings(): BootTimings | undefined {
    const start = this.marks.get('start');
    const agent = this.marks.get('agent-started');
    const ready = this.marks.get('ready');
    if (!start || !agent || !ready) return undefined;
    const toInit = start.at - this.spawnedAt;
    return {
      vmm: Math.max(0, toInit - start.uptimeMs),
      kernel: Math.min(toInit, start.uptimeMs),
      init: agent.at - start.at,
      agent: ready.at - agent.at,
      total: ready.at - this.spawnedAt,
    };
  }

  private keep(line: string): void {
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
  }

  private async teardown(exit: { code: number | null; signal: NodeJS.Signals | null }): Promise<ExitInfo> {
    const { channel, spec } = this.launch;
    await channel.close().catch((err: unknown) => {
      spec.onLog('stderr', `[aether-host] closing the channel failed: ${errorMessage(err)}`);
    });
    const info = this.status(exit);
    if (this.oom) return { ...info, oom: true, reason: `memory limit of ${this.launch.spec.memoryMb} MB exceeded` };
    // Without the agent's status the VM itself failed (kernel panic, QEMU error): its last words say why.
    return { ...info, reason: this.cause ?? `${this.describe(info)}${this.guestStatus === undefined ? this.summary() : ''}` };
  }

  /** The agent's exit status as init reported it (a shell's 128+n for signals), else QEMU's own. */
  private status(qemu: { code: number | null; signal: NodeJS.Signals | null }): ExitInfo {
    const status = this.guestStatus;
    if (status === undefined) return { code: qemu.code, signal: qemu.signal };
    return status > 128 ? { code: null, signal: signalName(status - 128) } : { code: status, signal: null };
  }

  private describe(info: { code: number | null; signal: string | null }): string {
    if (this.guestStatus === undefined) {
      return `the VM ended before its agent did (qemu ${info.signal ? `killed by ${info.signal}` : `exit code ${info.code}`})`;
    }
    if (info.signal) return `killed by ${info.signal}`;
    if (info.code === EXIT_CONFIG) return `agent refused to start (exit code ${EXIT_CONFIG})`;
    return `exited with code ${info.code}`;
  }

  /** For a failed start: the agent's own lines say best what went wrong, else the last of any (console, QEMU, stderr). */
  private summary(): string {
    const agentLines = this.tail.filter((line) => line.startsWith('[aether-agent]'));
    const lines = (agentLines.length ? agentLines : this.tail.filter((line) => line.trim())).slice(-3);
    return lines.length ? `: ${lines.join(' | ')}` : '';
  }
}

function signalName(n: number): NodeJS.Signals | null {
  const found = Object.entries(constants.signals).find(([, value]) => value === n);
  return (found?.[0] as NodeJS.Signals | undefined) ?? null;
}
