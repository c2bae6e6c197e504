/**
 * One QEMU microVM on the instance lifecycle: the control port (token in, then `stop`; `ready` and
 * the agent's exit status out), the function's stdout and stderr ports, the console (init's events,
 * the guest kernel's OOM kills), and the request channel through hostfwd. Its boot timings come
 * from init's console lines.
 */
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { InstanceSpec } from '../../../../core/ports.js';
import { CONTROL } from '../../../../guest/agent/protocol.mjs';
import type { InstanceChannel } from '../../channel.js';
import { launchInstance, type Instance } from '../../instance/instance.js';
import { readLines } from '../../instance/output.js';
import { GuestConsole } from '../guest.js';
import { PORT_FDS } from './args.js';

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

export type VmInstance = Instance & { readonly boot?: BootTimings };

export interface VmLaunch {
  spec: InstanceSpec;
  /** Owned by the instance from here on: closed when the VM ends. */
  channel: InstanceChannel;
  qemu: string;
  args: string[];
  /** The host end of the request channel (127.0.0.1). */
  hostPort: number;
}

const EXIT_LINE = new RegExp(`^${CONTROL.exit} (\\d+)$`);

/** Boots the VM and resolves once its agent is ready; otherwise kills it, cleans up and rejects. */
export async function launchVm({ spec, channel, qemu, args, hostPort }: VmLaunch): Promise<VmInstance> {
  const spawnedAt = Date.now();
  let readyAt = 0;
  const guest = new GuestConsole(spec);
  let ctl: Duplex | undefined;
  const instance = await launchInstance({
    id: spec.instanceId,
    startTimeoutMs: spec.startTimeoutMs,
    onLog: spec.onLog,
    command: qemu,
    args,
    stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
    channel,
    start: (child, output, agentExited) =>
      new Promise((ready) => {
        guest.onAgentExit = agentExited;
        const ports = child.stdio as unknown as Duplex[]; // fds 3-5 are socketpairs: readable and writable
        output.function('stdout', ports[PORT_FDS.stdout]!);
        output.function('stderr', ports[PORT_FDS.stderr]!);
        output.diagnostics(child.stdout!, (line) => guest.line(line));
        output.diagnostics(child.stderr!, undefined, 'qemu: ');
        ctl = ports[PORT_FDS.ctl]!;
        ctl.on('error', () => {}); // EPIPE once QEMU is gone: the exit path reports that
        readLines(ctl, (bytes) => {
          const line = bytes.toString();
          if (line === CONTROL.ready) {
            readyAt ||= Date.now();
            ready();
          }
          const exit = EXIT_LINE.exec(line);
          if (exit) guest.agentExit(Number(exit[1]));
        });
        ctl.write(`${channel.token}\n`);
      }),
    // The guest's init SIGTERMs the agent, and powers off once it is gone.
    askToStop: () => void ctl?.write(`${CONTROL.stop}\n`),
    explainExit: (exit) => guest.explain('qemu', exit),
    connect: () => connectHostfwd(hostPort),
  });
  return Object.assign(instance, { boot: bootTimings(guest, spawnedAt, readyAt) });
}

/** A new TCP connection through hostfwd: QEMU accepts at once and connects to the guest behind it. */
function connectHostfwd(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function bootTimings(guest: GuestConsole, spawnedAt: number, readyAt: number): BootTimings | undefined {
  const start = guest.events.get('start');
  const agent = guest.events.get('agent-started');
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
