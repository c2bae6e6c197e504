/**
 * What the QEMU and Firecracker drivers share about their guests: how a function's limits size the
 * VM, and what the guest's console tells the host (init's events with their uptimes, the agent's
 * exit status, the guest kernel's OOM kills), which explains how a VM ended.
 */
import { INIT_EVENTS, INIT_LOG_PREFIX } from '../../../guest/agent/protocol.mjs';
import type { InstanceSpec } from '../../../core/ports.js';
import { describeExit, fromShellStatus, type ProcessExit } from '../instance/exit.js';
import type { ExitExplanation } from '../instance/instance.js';

/** Guest RAM on top of the function's memory: the kernel and the page cache of node's code live there too. */
export const GUEST_OVERHEAD_MB = 64;
export const guestMemoryMb = (memoryMb: number) => memoryMb + GUEST_OVERHEAD_MB;
/** Whole vCPUs (1..32, what Firecracker allows); fractional CPU shares are a cgroup matter. */
export const guestVcpus = (vcpu: number) => Math.min(32, Math.max(1, Math.ceil(vcpu)));

/** Where a booted VM's time to ready went, in ms (kernel from the guest's clock, the rest from the host's). */
export interface BootTimings {
  /** VMM start-up, firmware and loading the kernel: until the guest kernel's clock started. */
  vmm: number;
  /** Kernel boot until /init runs. */
  kernel: number;
  /** /init: modules, devices, network, mounts, until node is started. */
  init: number;
  /** node start-up, config, loading the function, until the agent takes connections. */
  agent: number;
  total: number;
}

/** The guest kernel's OOM killer announces itself on the console (at a level `quiet` still shows). */
const OOM_LINE = /Out of memory: Killed process|oom-kill:/;
const INIT_LINE = new RegExp(`^${INIT_LOG_PREFIX.replace(/[[\]]/g, '\\$&')} (.*) up=([\\d.]+)$`);

/** One of init's console lines: what it says (after the prefix) and the guest's uptime then. */
function initLine(line: string): { text: string; uptimeMs: number } | undefined {
  const match = INIT_LINE.exec(line);
  return match ? { text: match[1]!, uptimeMs: Number(match[2]) * 1000 } : undefined;
}

/** Reads a guest's console lines: when init's events happened, the agent's exit status, OOM kills. */
export class GuestConsole {
  /** The agent's exit status as init reported it (a shell's: 128+n for signal n). */
  private agentStatus?: number;
  /** Called once the guest reports the agent's exit, with how it ended. */
  onAgentExit: (reason: string) => void = () => {};
  private oom = false;
  /** First sighting of each init event (its first word): host time and guest uptime. */
  readonly events = new Map<string, { at: number; uptimeMs: number }>();

  /** `onEvent` sees each of init's events (what it says after the prefix). */
  constructor(
    private readonly vm: { memoryMb: number; onLog?: InstanceSpec['onLog'] },
    private readonly onEvent: (text: string) => void = () => {},
  ) {}

  /** Only what concerns the function reaches its log: the OOM killer, init failing. */
  line(line: string): void {
    const init = initLine(line);
    if (init) {
      const event = init.text.split(' ')[0]!;
      if (!this.events.has(event)) this.events.set(event, { at: Date.now(), uptimeMs: init.uptimeMs });
      if (init.text.startsWith(INIT_EVENTS.agentExited)) this.agentExit(Number(init.text.slice(INIT_EVENTS.agentExited.length)));
      this.onEvent(init.text);
    }
    if (OOM_LINE.test(line)) this.oom = true;
    if (OOM_LINE.test(line) || init?.text.startsWith(INIT_EVENTS.fatal)) this.vm.onLog?.('stderr', `[aether-vm] ${line}`);
  }

  /**
   * The boot's phases, from init's events on the console and the host's times of the VMM's spawn
   * and of the instance being ready. None for a VM restored from a snapshot: it did not boot.
   */
  bootTimings(spawnedAt: number, readyAt: number): BootTimings | undefined {
    const start = this.events.get(INIT_EVENTS.start);
    const agent = this.events.get(INIT_EVENTS.agentStarted);
    if (!start || !agent || !readyAt) return undefined;
    const toInit = start.at - spawnedAt;
    return {
      vmm: Math.max(0, toInit - start.uptimeMs),
      kernel: Math.min(toInit, start.uptimeMs),
      init: agent.at - start.at,
      agent: readyAt - agent.at,
      total: readyAt - spawnedAt,
    };
  }

  /** The agent's exit status, from the console or another report of the guest's. */
  agentExit(status: number): void {
    const first = this.agentStatus === undefined;
    this.agentStatus = status;
    if (first) this.onAgentExit(this.oom ? this.oomReason() : describeExit(fromShellStatus(status)));
  }

  /** The agent's status when init reported it; without one the VM itself failed (panic, VMM error). */
  explain(vmm: string, exit: ProcessExit): ExitExplanation {
    const agent = this.agentStatus === undefined ? {} : fromShellStatus(this.agentStatus);
    const oom = this.oom ? { oom: true, reason: this.oomReason() } : {};
    if (this.agentStatus === undefined) return { ...oom, description: `the VM ended before its agent did (${vmm} ${describeExit(exit)})` };
    return { ...agent, ...oom };
  }

  private oomReason(): string {
    return `memory limit of ${this.vm.memoryMb} MB exceeded`;
  }
}
