/**
 * An instance's output on its way to the function's log, the same for every driver: streams split
 * into lines of at most MAX_LINE_BYTES (longer ones arrive in pieces), the request id the agent
 * framed a line with split off, and the last lines of stderr and of the VMM's diagnostics kept for
 * failure messages.
 */
import type { Readable } from 'node:stream';
import { AGENT_LOG_PREFIX, LOG_FRAME_END, LOG_FRAME_START } from '../../../guest/agent/protocol.mjs';

export type OutputStream = 'stdout' | 'stderr';

export const MAX_LINE_BYTES = 16 * 1024;
const TAIL_LINES = 20;

export class InstanceOutput {
  private readonly tail: string[] = [];

  constructor(private readonly onLog: (stream: OutputStream, line: string, requestId?: string) => void) {}

  /** The function's own output. */
  function(stream: OutputStream, from: Readable): void {
    readLines(from, (bytes) => {
      const { requestId, text } = unframe(bytes.toString());
      if (stream === 'stderr') this.keep(text);
      this.onLog(stream, text, requestId);
    });
  }

  /** What the VMM or the guest's console says: kept for failure messages, never the function's log. */
  diagnostics(from: Readable, onLine?: (line: string) => void, prefix = ''): void {
    readLines(from, (bytes) => {
      const line = prefix + bytes.toString();
      this.keep(line);
      onLine?.(line);
    });
  }

  /** For a failure message: the agent's own lines say best what went wrong, else the last lines of any. */
  lastWords(): string {
    const agentLines = this.tail.filter((line) => line.startsWith(AGENT_LOG_PREFIX));
    const lines = (agentLines.length ? agentLines : this.tail.filter((line) => line.trim())).slice(-3);
    return lines.length ? `: ${lines.join(' | ')}` : '';
  }

  private keep(line: string): void {
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
  }
}

/** A frame longer than this is not one: the line is taken as plain output. */
const MAX_FRAME_ID = 200;
const FRAME_START_CODE = LOG_FRAME_START.charCodeAt(0);

/** Splits the agent's request-id frame off a line; plain lines come back unchanged. */
export function unframe(line: string): { requestId?: string; text: string } {
  if (line.charCodeAt(0) !== FRAME_START_CODE) return { text: line };
  const end = line.indexOf(LOG_FRAME_END, 1);
  if (end < 2 || end > MAX_FRAME_ID) return { text: line };
  return { requestId: line.slice(1, end), text: line.slice(end + 1) };
}

/**
 * Calls onLine with each line of a stream (without its line break), as bytes: decoding is left to
 * whoever keeps the line. A line longer than maxBytes arrives in pieces, cut at UTF-8 character
 * boundaries, so nothing here grows beyond maxBytes whatever the stream carries.
 */
export function readLines(from: Readable, onLine: (line: Buffer) => void, maxBytes = MAX_LINE_BYTES): void {
  let held: Buffer | undefined; // the start of a line whose end has not arrived yet
  from.on('data', (chunk: Buffer) => {
    let at = 0;
    while (at < chunk.length) {
      const newline = chunk.indexOf(0x0a, at);
      const end = newline === -1 ? chunk.length : newline;
      let piece = held ? Buffer.concat([held, chunk.subarray(at, end)]) : chunk.subarray(at, end);
      held = undefined;
      while (piece.length > maxBytes) {
        const cut = utf8Boundary(piece, maxBytes);
        onLine(piece.subarray(0, cut));
        piece = piece.subarray(cut);
      }
      if (newline === -1) {
        held = Buffer.from(piece); // a copy: the chunk it came from can go
        break;
      }
      onLine(piece.at(-1) === 0x0d ? piece.subarray(0, -1) : piece);
      at = newline + 1;
    }
  });
  from.on('end', () => {
    if (held?.length) onLine(held);
    held = undefined;
  });
  from.on('error', () => {}); // streams end or reset with the process; its exit says what happened
}

/** The largest cut at or below `max` that does not split a UTF-8 character. */
function utf8Boundary(bytes: Buffer, max: number): number {
  let cut = max;
  while (cut > 0 && ((bytes[cut] ?? 0) & 0xc0) === 0x80) cut--;
  return cut || max;
}
