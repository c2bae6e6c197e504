/**
 * One Firecracker process and the guest protocol around it. Firecracker has no virtio-serial, so the
 * guest reaches the host over vsock: a guest connection to CID 2, port P arrives at the host's Unix
 * socket `<uds_path>_P`. The driver points those names at the instance channel's sockets
 * (channel.ts), so the agent's request channel and metadata service are the ones every sandbox uses.
 * The serial console (Firecracker's stdout) carries init's progress and the agent's exit status.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { INIT_LOG_PREFIX } from '../../../image/init-script.js';
import { lines, vmmEnded } from '../vmm-process.js';
import { FirecrackerApi } from './api.js';

/** The guest's vsock ports, dialed by the guest towards the host (CID 2). */
export const VSOCK_PORTS = { agent: 1024, mmds: 1025, stdout: 1026, stderr: 1027 } as const;
/** Every guest has its own vsock device, so one CID for all is fine (3 is the first guest CID). */
export const GUEST_CID = 3;
/** The name of the vsock device's Unix socket in the instance directory. */
export const VSOCK_NAME = 'vsock';
export const API_SOCKET = 'firecracker.sock';

/** Console lines of the guest's init (src/image/init-script.ts's `log`). */
export const CONSOLE = {
  probeOk: `${INIT_LOG_PREFIX} probe-ok`,
  /** Booted and polling MMDS for its instance: the moment to snapshot a generic VM. */
  awaitingConfig: `${INIT_LOG_PREFIX} awaiting-config`,
  exited: new RegExp(`^${INIT_LOG_PREFIX.replace(/[[\]]/g, '\\$&')} agent exited status=(\\d+)`),
} as const;

const TAIL_LINES = 20;
const API_UP_TIMEOUT_MS = 2000;

export class Vmm {
  readonly api: FirecrackerApi;
  readonly ended: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasEnded = false;
  private readonly child: ChildProcess;
  private readonly tail: string[] = [];

  /** `command` starts Firecracker (directly or through the jailer) with its API socket at `apiSocket` on the host. */
  constructor(command: { file: string; args: string[]; apiSocket: string }, onConsole: (line: string) => void = () => {}) {
    this.api = new FirecrackerApi(command.apiSocket);
    // detached: its own process group, so no terminal signal meant for the host reaches it.
    this.child = spawn(command.file, command.args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    lines(this.child.stdout!, (line) => {
      this.keep(line);
      onConsole(line);
    });
    lines(this.child.stderr!, (line) => this.keep(`firecracker: ${line}`));
    this.ended = vmmEnded(this.child, (message) => this.keep(`firecracker: ${message}`));
    void this.ended.then(() => (this.hasEnded = true));
  }

  waitUntilUp(): Promise<void> {
    return this.api.waitUntilUp(API_UP_TIMEOUT_MS, () => this.hasEnded);
  }

  /** SIGKILL to the process group: Firecracker and whatever it started (the jailer's exec, a double's guest). */
  kill(): void {
    if (this.hasEnded || this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      this.child.kill('SIGKILL'); // the group is gone already
    }
  }

  /** The last console and Firecracker lines, for failure messages. */
  summary(): string {
    const last = this.tail.filter((line) => line.trim()).slice(-3);
    return last.length ? `: ${last.join(' | ')}` : '';
  }

  private keep(line: string): void {
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
  }
}
