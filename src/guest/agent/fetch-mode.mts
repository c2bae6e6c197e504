import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FetchTarget } from './entry.mjs';
import type { Responder } from './http-mode.mjs';

const BODY_BUFFER_BYTES = 64 * 1024;

/** Web-style `fetch(request) => Response`: both bodies are streamed, never buffered. */
export function fetchResponder(target: FetchTarget): Responder {
  return async (req, res) => {
    const headers: Array<[string, string]> = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) headers.push([req.rawHeaders[i]!, req.rawHeaders[i + 1]!]);
    const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
    const request = new Request(`http://${req.headers.host || 'localhost'}${req.url}`, {
      method: req.method,
      headers,
      body: hasBody ? bodyStream(req, res) : null,
      duplex: 'half',
    } as RequestInit);
    const response = await target.fetch(request);
    if (typeof response?.status !== 'number' || !(response.headers instanceof Headers)) {
      throw new TypeError('fetch() did not return a Response');
    }
    res.statusCode = response.status;
    for (const [name, value] of response.headers) if (name !== 'set-cookie') res.setHeader(name, value);
    const cookies = response.headers.getSetCookie();
    if (cookies.length) res.setHeader('set-cookie', cookies);
    if (response.body) await writeBody(response.body, res);
    else res.end();
  };
}

/**
 * The request body as a web stream, with backpressure. Whatever the handler leaves unread is drained
 * once the response is done, so that the next request on the kept-alive connection gets parsed
 * (node only does that itself for bodies nobody started to read).
 */
function bodyStream(req: IncomingMessage, res: ServerResponse): ReadableStream<Uint8Array> {
  let open = true;
  const detach = () => {
    open = false;
    req.removeAllListeners('data');
    if (!req.complete) req.resume();
  };
  res.once('finish', detach);
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        req.on('data', (chunk: Buffer) => {
          if (!open) return;
          controller.enqueue(chunk);
          if ((controller.desiredSize ?? 0) <= 0) req.pause();
        });
        req.once('end', () => open && controller.close());
        req.once('error', (err) => open && controller.error(err));
      },
      pull() {
        req.resume();
      },
      cancel: detach,
    },
    { highWaterMark: BODY_BUFFER_BYTES, size: (chunk) => chunk.byteLength },
  );
}

/**
 * Copies the response body with backpressure; a client that goes away cancels it (so a generating
 * stream stops). The socket stays corked until the next turn of the event loop: a body that is ready
 * at once (most are) leaves in a single write together with the head.
 */
async function writeBody(body: ReadableStream<Uint8Array>, res: ServerResponse): Promise<void> {
  const socket = res.socket;
  socket?.cork();
  setImmediate(() => socket?.uncork());
  const reader = body.getReader();
  const cancel = () => void reader.cancel().catch(() => {});
  res.once('close', cancel);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done || res.destroyed) break;
      if (!res.write(value)) await drained(res);
    }
    res.end();
  } finally {
    res.off('close', cancel);
  }
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
