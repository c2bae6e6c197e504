import { connect } from 'node:net';
import { FRAME, FrameReader, FrameWriter, type RequestHead } from './frames.mjs';
import { errorAnswer } from './http-mode.mjs';
import { type Answerer, type AgentRequest, MAX_BODY_BYTES, tooLarge } from './lambda.mjs';
import { errorMessage, log } from './log.mjs';
import { asInvocation } from './output-tagging.mjs';
import { REQUEST_ID_HEADER } from './protocol.mjs';

interface Incoming {
  head: RequestHead;
  parts: Buffer[];
  size: number;
}

/**
 * Handler mode: dials the host's frames socket (frames.mts) and answers the invocations it carries.
 * Optional: where the host offers none (a microVM's relay) or closes it, the HTTP connections carry
 * every invocation, as they always carry the ones the host sends that way.
 */
export function serveFrames(path: string, answer: Answerer): void {
  const socket = connect(path);
  socket.on('error', () => {}); // no frames socket here, or the host gave up on it: HTTP serves
  const writer = new FrameWriter(socket);
  const incoming = new Map<number, Incoming>();
  const reader = new FrameReader((id, type, payload) => {
    if (type === FRAME.head) {
      incoming.set(id, { head: JSON.parse(payload.toString()) as RequestHead, parts: [], size: 0 });
      return;
    }
    const message = incoming.get(id);
    if (!message) return;
    if (type === FRAME.body) {
      message.size += payload.length;
      if (message.size <= MAX_BODY_BYTES) message.parts.push(payload);
      return;
    }
    incoming.delete(id);
    void respond(message).then((a) =>
      writer.message(id, { status: a.status, headers: { ...a.headers, 'content-length': a.body.length } }, a.body),
    );
  });
  socket.on('data', (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch (err) {
      log(`frames channel: ${errorMessage(err)}`);
      socket.destroy();
    }
  });

  function respond({ head, parts, size }: Incoming) {
    const headers: AgentRequest['headers'] = {};
    for (let i = 0; i + 1 < head.headers.length; i += 2) headers[head.headers[i]!.toLowerCase()] ??= head.headers[i + 1];
    const requestId = headers[REQUEST_ID_HEADER] as string | undefined;
    if (size > MAX_BODY_BYTES) return Promise.resolve(tooLarge());
    const body = parts.length === 1 ? parts[0] : Buffer.concat(parts, size);
    // Everything the handler prints, and the agent's report if it fails, is tagged with the request id.
    return asInvocation(requestId, () =>
      answer({ method: head.method, url: head.url, rawHeaders: head.headers, headers, body }).catch((err: unknown) => {
        log(`handler failed (request ${requestId ?? '-'}): ${err instanceof Error ? err.stack : String(err)}`);
        return errorAnswer(502, 'handler_error', errorMessage(err));
      }),
    );
  }
}
