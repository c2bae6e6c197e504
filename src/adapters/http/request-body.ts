/**
 * Reads an invocation's request body before the request takes a slot on an instance, so that a
 * client that is slow to send its request holds no slot while it sends (slowloris on a function).
 * The host cannot tell a handler-mode instance (which needs the whole body) from a server-mode one
 * (which may stream it), so the rule is the same for both: a body of up to `bufferBytes` is read
 * whole, within `timeoutMs`; of a longer one that much must arrive within `timeoutMs`, and the rest
 * streams through while the slot is held, cut off when it pauses for `idleTimeoutMs` or is still
 * arriving at the request's deadline.
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough, type Readable } from 'node:stream';
import { AetherError } from '../../core/errors.js';

export interface BodyLimits {
  bufferBytes: number;
  timeoutMs: number;
  idleTimeoutMs: number;
}

/** Nothing, the whole body, or its first part followed by the rest as it arrives. */
export type RequestBody = undefined | Buffer | { stream: Readable };

const bodyTimeout = (message: string) => new AetherError('body_timeout', message);
const bodyIncomplete = () => new AetherError('body_incomplete', 'the client closed the connection before sending its whole request body');

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return length !== undefined ? length !== '0' : req.headers['transfer-encoding'] !== undefined;
}

/**
 * Resolves once the body is read (or enough of it to stream the rest); rejects with 408 `body_timeout`
 * if it is not there within the body timeout, 400 `body_incomplete` if the client goes away.
 * `deadline` (epoch ms) bounds a streamed remainder as a whole.
 */
export function readRequestBody(req: IncomingMessage, limits: BodyLimits, deadline: number): Promise<RequestBody> {
  if (!hasBody(req)) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      clearTimeout(timer);
      req.off('data', onData).off('end', onEnd).off('close', onClose);
    };
    const timer = setTimeout(() => {
      done();
      reject(bodyTimeout(`the request body did not arrive within ${limits.timeoutMs} ms`));
    }, limits.timeoutMs);
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (size <= limits.bufferBytes) return;
      done();
      req.pause();
      resolve(streamRest(req, chunks, limits.idleTimeoutMs, deadline));
    };
    const onEnd = () => {
      done();
      resolve(Buffer.concat(chunks, size));
    };
    const onClose = () => {
      done();
      reject(bodyIncomplete());
    };
    req.on('data', onData).on('end', onEnd).on('close', onClose);
  });
}

/** The part already read, then the rest as the client sends it, with the idle and deadline watchdogs. */
function streamRest(req: IncomingMessage, head: Buffer[], idleTimeoutMs: number, deadline: number): { stream: Readable } {
  const out = new PassThrough();
  for (const chunk of head) out.write(chunk);
  // The client's connection stays: the error answer goes out on it, and closes it (see sendError).
  const fail = (err: AetherError) => {
    stop();
    out.destroy(err);
  };
  // Idle time counts only while Aether wants more: a pause because the instance reads slowly is not the client's.
  let idle: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => fail(bodyTimeout(`the request body paused for more than ${idleTimeoutMs} ms`)), idleTimeoutMs);
  };
  const late = setTimeout(
    () => fail(bodyTimeout("the request body was still arriving at the function's timeout")),
    Math.max(0, deadline - Date.now()),
  );
  const stop = () => {
    clearTimeout(idle);
    clearTimeout(late);
    req.off('data', onData).off('end', onEnd).off('close', onClose);
    out.off('drain', onDrain);
  };
  const onData = (chunk: Buffer) => {
    if (out.write(chunk)) return arm();
    clearTimeout(idle);
    req.pause();
  };
  const onDrain = () => {
    arm();
    req.resume();
  };
  const onEnd = () => {
    stop();
    out.end();
  };
  const onClose = () => fail(bodyIncomplete());
  req.on('data', onData).on('end', onEnd).on('close', onClose);
  out.on('drain', onDrain);
  arm();
  req.resume();
  return { stream: out };
}
