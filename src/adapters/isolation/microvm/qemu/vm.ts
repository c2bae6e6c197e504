/**
 * One QEMU microVM on the instance lifecycle: the control port (token, time and RNG seed in, then
 * `stop`; `ready` and the agent's exit status out), the function's stdout and stderr ports, the
 * console (init's events, the guest kernel's OOM kills), and the request channel through hostfwd.
 * It boots, or resumes a snapshot's state (`-incoming`). Its timings come from init's console lines.
 */
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { InstanceSpec } from '../../../../core/ports.js';
import { CONTROL, helloLine, INIT_EVENTS, timeLine } from '../../../../guest/agent/protocol.mjs';
import type { InstanceChannel } from '../../channel.js';
import { launchInstance, type Instance } from '../../instance/instance.js';
import { readLines } from '../../instance/output.js';
import { type BootTimings, GuestConsole } from '../guest.js';
import { PORT_FDS } from './args.js';
import type { ConfinedVm } from './confine.js';
import { Qmp, qmpArgs } from './qmp.js';

/** Host fds of a restore: its QMP monitor, and the snapshot's state (read-only: one state serves every restore). */
export const RESTORE_FDS = { qmp: 6, state: 7 } as const;

/** Where the time to ready went after a snapshot, in ms (host clock). */
export interface RestoreTimings {
  /** QEMU start and loading the snapshot's state, until the guest runs. */
  restore: number;
  /** Clock and RNG set, the code disk attached and mounted (init). */
  code: number;
  /** The agent: config, loading the function, until it takes connections. */
  agent: number;
  total: number;
}

export type VmInstance = Instance & { readonly boot?: BootTimings; readonly restore?: RestoreTimings };

export interface VmLaunch {
  spec: InstanceSpec;
  /** Owned by the instance from here on: closed when the VM ends. */
  channel: InstanceChannel;
  qemu: string;
  args: string[];
  /** The host end of the request channel (127.0.0.1). */
  hostPort: number;
  /** A snapshot's migration state to resume (the args must be the snapshot's machine), instead of a boot. */
  state?: string;
  /** Confinement (confine.ts): how to run QEMU, and what to release once it is gone. */
  confined?: Pick<ConfinedVm, 'exec' | 'release'>;
}

const EXIT_LINE = new RegExp(`^${CONTROL.exit} (\\d+)$`);

/** Boots the VM and resolves once its agent is ready; otherwise kills it, cleans up and rejects. */
export async function launchVm({ spec, channel, qemu, args, hostPort, state, confined }: VmLaunch): Promise<VmInstance> {
  const spawnedAt = Date.now();
  let readyAt = 0;
  let resumedAt = 0;
  const guest = new GuestConsole(spec);
  let ctl: Duplex | undefined;
  const stateFile =
    state === undefined
      ? undefined
      : await open(state, 'r').catch(async (err) => {
          await channel.close();
          await confined?.release();
          throw err;
        });
  const full = stateFile ? [...args, ...qmpArgs(RESTORE_FDS.qmp), '-incoming', `fd:${RESTORE_FDS.state}`] : args;
  try {
    const instance = await launchInstance({
      id: spec.instanceId,
      startTimeoutMs: spec.startTimeoutMs,
      onLog: spec.onLog,
      ...(confined ? confined.exec(qemu, full) : { command: qemu, args: full }),
      cleanup: confined?.release,
      stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', ...(stateFile ? ['pipe' as const, stateFile.fd] : [])],
      channel,
      start: (child, output, agentExited) =>
        new Promise((ready, fail) => {
          guest.onAgentExit = agentExited;
          const ports = child.stdio as unknown as Duplex[]; // fds 3-6 are socketpairs: readable and writable
          output.function('stdout', ports[PORT_FDS.stdout]!);
          output.function('stderr', ports[PORT_FDS.stderr]!);
          output.diagnostics(child.stdout!, (line) => guest.line(line));
          output.diagnostics(child.stderr!, undefined, 'qemu: ');
          ctl = ports[PORT_FDS.ctl]!;
          ctl.on('error', () => {}); // EPIPE once QEMU is gone: the exit path reports that
          let greeted = false;
          // Sent when the guest takes it: asked for, or as a snapshot resumes.
          const hello = () => {
            if (greeted) return;
            greeted = true;
            ctl!.write(helloLine(channel.token, randomBytes(32).toString('hex')));
          };
          readLines(ctl, (bytes) => {
            const line = bytes.toString();
            if (line === CONTROL.waiting) hello();
            if (line === CONTROL.time) ctl!.write(timeLine(Date.now()));
            if (line === CONTROL.ready) {
              readyAt ||= Date.now();
              ready();
            }
            const exit = EXIT_LINE.exec(line);
            if (exit) guest.agentExit(Number(exit[1]));
          });
          if (!stateFile) return;
          Qmp.open(ports[RESTORE_FDS.qmp]!)
            .then((qmp) => qmp.running())
            .then(() => {
              resumedAt = Date.now();
              hello();
            }, fail);
        }),
      // The guest's init SIGTERMs the agent, and powers off once it is gone.
      askToStop: () => void ctl?.write(`${CONTROL.stop}\n`),
      explainExit: (exit) => guest.explain('qemu', exit),
      connect: () => connectHostfwd(hostPort),
    });
    return Object.assign(instance, {
      boot: stateFile ? undefined : guest.bootTimings(spawnedAt, readyAt),
      restore: stateFile ? restoreTimings(guest, spawnedAt, resumedAt, readyAt) : undefined,
    });
  } finally {
    await stateFile?.close();
  }
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

function restoreTimings(guest: GuestConsole, spawnedAt: number, resumedAt: number, readyAt: number): RestoreTimings | undefined {
  const code = guest.events.get(INIT_EVENTS.codeMounted);
  if (!code || !resumedAt || !readyAt) return undefined;
  return { restore: resumedAt - spawnedAt, code: code.at - resumedAt, agent: readyAt - code.at, total: readyAt - spawnedAt };
}
