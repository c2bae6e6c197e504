import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { errorMessage, log } from './log.mjs';
import type { HttpAnswer } from './lambda-events.mjs';
import { asInvocation } from './output-tagging.mjs';
import { ERROR_HEADER, ERROR_HEADER_MAX_CHARS, REQUEST_ID_HEADER } from './protocol.mjs';

export type Responder = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/**
 * Handler mode: an http.Server that never listens; the host's connections are handed to it. Not
 * listening also means no server-side timeouts: the host owns deadlines and closes idle connections.
 */
export function serveConnections(respond: Responder, onFirstUse: (socket: Socket) => void): (socket: Socket) => void {
  const server = createServer({ requireHostHeader: false }, (req, res) => {
    onFirstUse(req.socket);
    const requestId = req.headers[REQUEST_ID_HEADER];
    // Everything the handler prints, and the agent's report if it fails, is tagged with the request id.
    asInvocation(typeof requestId === 'string' ? requestId : undefined, () =>
      respond(req, res).catch((err: unknown) => handlerFailed(req, res, err)),
    );
  });
  server.keepAliveTimeout = 0;
  return (socket) => server.emit('connection', socket);
}

function handlerFailed(req: IncomingMessage, res: ServerResponse, err: unknown): void {
  const requestId = req.headers[REQUEST_ID_HEADER] ?? '-';
  log(`handler failed (request ${requestId}): ${err instanceof Error ? err.stack : String(err)}`);
  if (res.headersSent) {
    res.destroy(); // the status is gone already: only an aborted response tells the client
    return;
  }
  sendError(res, 502, 'handler_error', errorMessage(err));
}

/** What tells the host why an answer is a failure: it records the message as the invocation's error. */
export function errorHeader(message: string): Record<string, string> {
  return { [ERROR_HEADER]: encodeURIComponent(message.slice(0, ERROR_HEADER_MAX_CHARS)) };
}

/** An answer of the agent's own; the host records its message as the invocation's error. */
export function errorAnswer(status: number, code: string, message: string): HttpAnswer {
  return {
    status,
    headers: { 'content-type': 'application/json', ...errorHeader(message) },
    body: Buffer.from(JSON.stringify({ error: { code, message } })),
  };
}

/** errorAnswer, sent; `close` ends the connection after it. */
export function sendError(res: ServerResponse, status: number, code: string, message: string, close = false): void {
  const { headers, body } = errorAnswer(status, code, message);
  res.writeHead(status, { ...headers, 'content-length': body.length, ...(close ? { connection: 'close' } : {}) });
  res.end(body);
}
