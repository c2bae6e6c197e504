/** What the microVM drivers share about their VMM child process (QEMU, Firecracker). */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';

export interface VmmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Calls onLine for each line of a stream; streams end or reset with the process, and its exit path reports that. */
export function lines(stream: Readable, onLine: (line: string) => void): void {
  createInterface({ input: stream, crlfDelay: Infinity })
    .on('line', onLine)
    .on('error', () => {});
}

/** Settles once the process is gone (or never started: then onError has said why). */
export function vmmEnded(child: ChildProcess, onError: (message: string) => void): Promise<VmmExit> {
  return new Promise((resolve) => {
    child.once('error', (err) => {
      onError(err.message);
      if (child.pid === undefined) resolve({ code: null, signal: null });
    });
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
}
