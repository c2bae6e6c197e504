/**
 * The host end of an instance's frame connection (src/guest/agent/frames.mts): sends invocations,
 * routes the answer's frames back to their senders by id. What comes from the instance is not
 * trusted: a frame or head that is not ours ends the connection, which fails what was in flight
 * (the instance's HTTP connections carry the invocations after that).
 */
import type { Socket } from 'node:net';
import type { InstanceHandle } from '../../core/ports.js';
import { FRAME, FrameReader, FrameWriter, type RequestHead, type ResponseHead } from '../../guest/agent/frames.mjs';

/** What the sender of one invocation hears back, in order: the head, body parts, the end; or an error instead. */
export interface AnswerHandlers {
  head(head: ResponseHead): void;
  body(part: Buffer): void;
  end(): void;
  error(err: Error): void;
}

/** The connection ended (the instance crashed or stopped, or sent what is not a frame) before the answer did. */
export class FrameConnectionLost extends Error {}

const MAX_ID = 0xffffffff;

export class FrameClient {
  private nextId = 0;
  private readonly pending = new Map<number, AnswerHandlers>();
  private readonly writer: FrameWriter;

  constructor(socket: Socket) {
    this.writer = new FrameWriter(socket);
    const reader = new FrameReader((id, type, payload) => {
      const handlers = this.pending.get(id);
      if (!handlers) return; // given up on (timed out)
      if (type === FRAME.head) handlers.head(responseHead(payload));
      else if (type === FRAME.body) handlers.body(payload);
      else {
        this.pending.delete(id);
        handlers.end();
      }
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch {
        socket.destroy();
      }
    });
    socket.once('close', () => {
      const lost = new FrameConnectionLost('the instance closed its frame connection');
      for (const handlers of this.pending.values()) handlers.error(lost);
      this.pending.clear();
    });
  }

  /** Sends one invocation; the returned function gives up on its answer. */
  send(head: RequestHead, body: Buffer | undefined, handlers: AnswerHandlers): () => void {
    this.nextId = this.nextId === MAX_ID ? 1 : this.nextId + 1;
    const id = this.nextId;
    this.pending.set(id, handlers);
    this.writer.message(id, head, body);
    return () => this.pending.delete(id);
  }
}

/** A head from the instance, checked to be one: a status and headers. */
function responseHead(payload: Buffer): ResponseHead {
  const head = JSON.parse(payload.toString()) as ResponseHead;
  if (!Number.isInteger(head?.status) || typeof head.headers !== 'object' || head.headers === null) {
    throw new Error('not a response head');
  }
  return head;
}

const clients = new WeakMap<Socket, FrameClient>();

/** The instance's frame client, when it has a frame connection open. */
export function frameClient(handle: InstanceHandle): FrameClient | undefined {
  const socket = handle.frames?.();
  if (!socket) return undefined;
  let client = clients.get(socket);
  if (!client) {
    client = new FrameClient(socket);
    clients.set(socket, client);
  }
  return client;
}
