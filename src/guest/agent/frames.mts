/**
 * Handler mode's frame channel (docs/agent-protocol.md): one connection between host and agent that
 * carries many invocations at once, each message a head (JSON), body parts and an end, every part
 * a frame tagged with its invocation's id. Cheaper than HTTP on both sides (nothing to parse but a
 * length and a small JSON head), and what is written in one turn of the event loop leaves in one
 * write: fewer system calls, which a gVisor sandbox pays dearly for. Both sides use this module.
 */
import type { Socket } from 'node:net';

/** A frame: payload length (u32), invocation id (u32), type (u8), then the payload. */
export const FRAME_HEADER_BYTES = 9;
/** A longer payload is not a frame of ours: the reader gives up on the connection. Bodies go in parts of at most this. */
export const MAX_FRAME_PAYLOAD = 1024 * 1024;

export const FRAME = { head: 1, body: 2, end: 3 } as const;
export type FrameType = (typeof FRAME)[keyof typeof FRAME];

/** Host to agent: what an HTTP request line and headers would say (headers as name, value pairs, flat). */
export interface RequestHead {
  method: string;
  url: string;
  headers: string[];
}

/** Agent to host: the answer's status and headers (as node's writeHead takes them). */
export interface ResponseHead {
  status: number;
  headers: Record<string, string | string[] | number>;
}

export type FrameHandler = (id: number, type: FrameType, payload: Buffer) => void;

/**
 * Reads frames off a connection; throws (from push) on one that cannot be ours. The bytes of an
 * incomplete frame are held as they came and joined once the frame is complete.
 */
export class FrameReader {
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** Bytes needed before anything can be read: a frame header, or the rest of the frame begun. */
  private needed = FRAME_HEADER_BYTES;

  constructor(private readonly onFrame: FrameHandler) {}

  push(chunk: Buffer): void {
    this.held.push(chunk);
    this.heldBytes += chunk.length;
    if (this.heldBytes < this.needed) return;
    const data = this.held.length === 1 ? chunk : Buffer.concat(this.held, this.heldBytes);
    let at = 0;
    this.needed = FRAME_HEADER_BYTES;
    while (data.length - at >= FRAME_HEADER_BYTES) {
      const length = data.readUInt32BE(at);
      const type = data[at + 8]!;
      if (length > MAX_FRAME_PAYLOAD || type < FRAME.head || type > FRAME.end)
        throw new Error(`not a frame (type ${type}, ${length} bytes)`);
      const end = at + FRAME_HEADER_BYTES + length;
      if (end > data.length) {
        this.needed = end - at;
        break;
      }
      this.onFrame(data.readUInt32BE(at + 4), type as FrameType, data.subarray(at + FRAME_HEADER_BYTES, end));
      at = end;
    }
    this.held = at < data.length ? [data.subarray(at)] : [];
    this.heldBytes = data.length - at;
  }
}

/**
 * Writes frames to a connection, all those of one turn of the event loop in one write. Messages are
 * whole (head, body, end) when they are queued: nothing here waits for anything.
 */
export class FrameWriter {
  private queued: Buffer[] = [];
  private scheduled = false;

  constructor(private readonly socket: Socket) {}

  /** Queues a message: its head, its body in parts, its end. */
  message(id: number, head: RequestHead | ResponseHead, body?: Buffer): void {
    this.frame(id, FRAME.head, Buffer.from(JSON.stringify(head)));
    for (let at = 0; body && at < body.length; at += MAX_FRAME_PAYLOAD) {
      this.frame(id, FRAME.body, body.subarray(at, at + MAX_FRAME_PAYLOAD));
    }
    this.frame(id, FRAME.end);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private frame(id: number, type: FrameType, payload?: Buffer): void {
    const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
    header.writeUInt32BE(payload?.length ?? 0, 0);
    header.writeUInt32BE(id, 4);
    header[8] = type;
    this.queued.push(header);
    if (payload?.length) this.queued.push(payload);
  }

  private flush(): void {
    this.scheduled = false;
    const out = this.queued;
    this.queued = [];
    if (!this.socket.destroyed) this.socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
  }
}
