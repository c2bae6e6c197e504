/**
 * QMP, QEMU's JSON control protocol, on a socketpair the host passes to QEMU (`-chardev socket,fd=N
 * -mon mode=control`): no socket file to wait for and connect to. Only what snapshots need: run a
 * command and get its return, and learn when the guest runs (a restore resumes on its own once
 * the migration state is in).
 */
import type { Duplex } from 'node:stream';
import { readLines } from '../../instance/output.js';

/** The QEMU options for a QMP monitor on host fd `fd`. */
export function qmpArgs(fd: number): string[] {
  return ['-chardev', `socket,id=qmp,fd=${fd}`, '-mon', 'chardev=qmp,mode=control'];
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

export class Qmp {
  private readonly pending: Pending[] = [];
  private readonly eventWaiters = new Map<string, Array<() => void>>();
  private greeted!: () => void;
  private readonly greeting = new Promise<void>((resolve) => {
    this.greeted = resolve;
  });

  private constructor(private readonly stream: Duplex) {
    stream.on('error', () => {}); // QEMU gone: 'close' follows
    stream.once('close', () => {
      for (const p of this.pending.splice(0)) p.reject(new Error('QEMU closed its QMP monitor'));
    });
    readLines(stream, (bytes) => this.onMessage(bytes.toString()));
  }

  /** Waits for QEMU's greeting and leaves capabilities negotiation: commands and events from here. */
  static async open(stream: Duplex): Promise<Qmp> {
    const qmp = new Qmp(stream);
    await qmp.greeting;
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  /** Runs a command; its `return`, or a rejection with QEMU's error description. */
  execute(command: string, args?: object): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.stream.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** Resolves once the guest runs: at once if it does, else at QEMU's RESUME event. */
  async running(): Promise<void> {
    const resumed = new Promise<void>((resolve) => this.onEvent('RESUME', resolve));
    const status = (await this.execute('query-status')) as { running?: boolean };
    if (!status.running) await resumed;
  }

  private onEvent(name: string, callback: () => void): void {
    this.eventWaiters.set(name, [...(this.eventWaiters.get(name) ?? []), callback]);
  }

  private onMessage(line: string): void {
    let message: { QMP?: unknown; return?: unknown; error?: { desc?: string }; event?: string };
    try {
      message = JSON.parse(line);
    } catch {
      return;
    }
    if (message.QMP) this.greeted();
    else if (message.event) {
      for (const callback of this.eventWaiters.get(message.event) ?? []) callback();
      this.eventWaiters.delete(message.event);
    } else if ('return' in message || message.error) {
      const pending = this.pending.shift();
      if (message.error) pending?.reject(new Error(`QMP: ${message.error.desc ?? 'error'}`));
      else pending?.resolve(message.return);
    }
  }
}
