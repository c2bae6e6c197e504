/**
 * Forwards one HTTP request to an instance and streams the answer back, both directions without
 * buffering. Each instance gets an undici connection pool whose "connect" opens a stream through
 * the instance's InstanceHandle, so this module knows nothing of how the instance is reached.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { Pool, errors as undiciErrors } from 'undici';
import { AetherError, badGateway, ERRORS, type ErrorCode, errorMessage, involving, timedOut } from '../../core/errors.js';
import { CLUSTER_TOKEN_HEADER } from './auth.js';
import type { Lease } from '../../core/pool.js';
import type { InstanceHandle } from '../../core/ports.js';
import {
  DEADLINE_HEADER,
  ERROR_HEADER,
  ERROR_HEADER_MAX_CHARS,
  INVOKE_HEADER,
  REQUEST_ID_HEADER,
  SOURCE_IP_HEADER,
} from '../../guest/agent/protocol.mjs';
import { type FrameClient, frameClient } from './frame-client.js';
import type { RequestBody } from './request-body.js';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'expect',
  'proxy-authenticate',
  'proxy-authorization',
  CLUSTER_TOKEN_HEADER,
]);

const pools = new WeakMap<InstanceHandle, Pool>();

function poolFor(handle: InstanceHandle, connections: number): Pool {
  let pool = pools.get(handle);
  if (!pool) {
    const p = new Pool('http://instance', {
      connections,
      pipelining: 1,
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: 60_000,
      connect: (_opts, done) => {
        handle.connect().then(
          (socket) => done(null, socket),
          (err: Error) => done(err, null),
        );
      },
    });
    void handle.exited.then(() => p.destroy());
    pools.set(handle, p);
    pool = p;
  }
  return pool;
}

export interface ForwardOptions {
  body: RequestBody; // as read by readRequestBody
  path: string; // path and query as the target should see them
  requestId: string;
  deadline: number; // epoch ms by which response headers must have arrived
  connections: number; // at most this many connections to the target
  clientIp: string;
  extraHeaders?: Record<string, string>;
  /** The instance the lease is on, when it is local (a gateway learns it from the worker's answer). */
  instanceId: string | null;
  /** Set on the answer, whatever the target sent: the request id, and what a worker tells its gateway. */
  responseHeaders: Record<string, string>;
  /** A worker answering a gateway passes Aether's own headers (AETHER_FACTS) on; facing a client they are removed. */
  relay: boolean;
}

/** The request id as clients send and receive it; the function sees it too (REQUEST_ID_HEADER is Aether's own hop). */
export const CLIENT_REQUEST_ID_HEADER = 'x-request-id';
/** Which instance served the request: a worker names it in this header for the gateway's records. */
export const INSTANCE_HEADER = 'x-aether-instance';
/** From a worker: the request waited for a new instance there. */
export const COLD_START_HEADER = 'x-aether-cold-start';
/** From a worker: the answer is its own error (this code), not the function's answer. */
export const ERROR_CODE_HEADER = 'x-aether-error-code';
/** What the party that ran the invocation tells the one that records it (ERROR_HEADER: the agent or a worker); not for clients. */
const AETHER_FACTS = [ERROR_HEADER, COLD_START_HEADER, ERROR_CODE_HEADER];

/** What Aether learnt about an invocation that got an answer. */
export interface Forwarded {
  status: number;
  instanceId: string | null;
  error: string | null;
  /** A worker's own error answer (ERROR_CODE_HEADER), not the function's: its code. */
  errorCode?: ErrorCode;
  coldStart: boolean;
}

/**
 * Resolves with the status sent to the client, the instance that served it, and what the target
 * reported about it; throws an AetherError if nothing was sent yet (code `connection_refused`: the
 * request never left).
 */
export async function forward(req: IncomingMessage, res: ServerResponse, lease: Lease, opts: ForwardOptions): Promise<Forwarded> {
  const { body } = opts;
  const headers = forwardedHeaders(req.headers, opts);
  if (Buffer.isBuffer(body)) headers['content-length'] = String(body.length); // a chunked body, read whole, has a length now
  const out: Forwarded = { status: 0, instanceId: opts.instanceId, error: null, coldStart: false };
  // A body read whole goes over the instance's frame connection when it has one (handler mode); one still arriving streams over HTTP.
  const frames = body === undefined || Buffer.isBuffer(body) ? frameClient(lease.handle) : undefined;
  try {
    if (frames) await exchangeFrames(frames, req.method!, headers, body as Buffer | undefined, res, out, opts);
    // stream() writes the body straight into the client's response: no intermediate Readable.
    else
      await poolFor(lease.handle, opts.connections).stream(
        {
          method: req.method as 'GET',
          path: opts.path,
          headers,
          body: Buffer.isBuffer(body) ? body : body?.stream,
          headersTimeout: Math.max(1, opts.deadline - Date.now()),
        },
        ({ statusCode, headers: upstream }) => answerHead(res, statusCode, upstream as IncomingHttpHeaders, out, opts),
      );
  } catch (err) {
    if (!res.headersSent) throw await explain(err, lease, body, opts.requestId);
    res.destroy(); // the client sees a truncated response rather than a silently short one
  }
  return out;
}

/** The answer's status and headers to the client, and what they tell Aether about the invocation into `out`. */
function answerHead(res: ServerResponse, statusCode: number, upstream: IncomingHttpHeaders, out: Forwarded, opts: ForwardOptions) {
  out.status = statusCode;
  out.instanceId = single(upstream[INSTANCE_HEADER]) ?? out.instanceId;
  out.error = decodeError(single(upstream[ERROR_HEADER]));
  out.errorCode = errorCodeOf(single(upstream[ERROR_CODE_HEADER]));
  out.coldStart = upstream[COLD_START_HEADER] === '1';
  const answer = withoutHopByHop(upstream);
  if (!opts.relay) for (const name of AETHER_FACTS) delete answer[name];
  if (out.instanceId) answer[INSTANCE_HEADER] = out.instanceId;
  res.writeHead(statusCode, Object.assign(answer, opts.responseHeaders));
  return res;
}

/** The invocation over the frame connection; settles once the whole answer is written to the client. */
function exchangeFrames(
  client: FrameClient,
  method: string,
  headers: Record<string, string | string[]>,
  body: Buffer | undefined,
  res: ServerResponse,
  out: Forwarded,
  opts: ForwardOptions,
): Promise<void> {
  const flat: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (Array.isArray(value)) for (const v of value) flat.push(name, v);
    else flat.push(name, value);
  }
  return new Promise((resolve, reject) => {
    // As undici's headersTimeout: the head must arrive by the deadline; the body may take its time.
    const timer = setTimeout(
      () => {
        cancel();
        reject(new AnswerTimeout());
      },
      Math.max(1, opts.deadline - Date.now()),
    );
    const cancel = client.send({ method, url: opts.path, headers: flat }, body, {
      head: ({ status, headers: upstream }) => {
        clearTimeout(timer);
        try {
          answerHead(res, status, upstream as IncomingHttpHeaders, out, opts);
        } catch (err) {
          // e.g. a status node refuses: the function's fault, told as the HTTP path tells a bad answer
          cancel();
          reject(err);
        }
      },
      body: (part) => res.write(part),
      end: () => {
        res.end();
        resolve();
      },
      error: (err) => {
        clearTimeout(timer);
        reject(err);
      },
    });
  });
}

/** No answer's head by the deadline over the frame connection (undici's HeadersTimeoutError on HTTP). */
class AnswerTimeout extends Error {}

/** A worker's ERROR_CODE_HEADER as one of Aether's codes (an unknown one, from a newer worker: function_error). */
function errorCodeOf(value: string | undefined): ErrorCode | undefined {
  if (value === undefined) return undefined;
  return Object.hasOwn(ERRORS, value) ? (value as ErrorCode) : 'function_error';
}

/** An error message as ERROR_HEADER carries it (as the agent writes it too): cut, then URI-encoded. */
export function encodeError(message: string): string {
  return encodeURIComponent(message.slice(0, ERROR_HEADER_MAX_CHARS));
}

function decodeError(value: string | undefined): string | null {
  if (value === undefined) return null;
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

async function explain(err: unknown, lease: Lease, body: RequestBody, requestId: string): Promise<AetherError> {
  const clientFault = body && !Buffer.isBuffer(body) ? body.stream.errored : undefined; // e.g. a stalled body
  if (clientFault instanceof AetherError) return clientFault;
  if (err instanceof AetherError) return err;
  if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED') {
    return new AetherError('connection_refused', 'the target refused the connection', { cause: err });
  }
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof AnswerTimeout) {
    lease.recycle(requestId);
    return timedOut('the function did not respond within its timeout', { cause: err });
  }
  const reason = await lease.exitReason();
  if (reason) return badGateway(`the function crashed: ${reason}`, 'function_crashed', { cause: err });
  return badGateway(`the function closed the connection without responding (${errorMessage(err)})`, 'function_error', { cause: err });
}

function forwardedHeaders(incoming: IncomingHttpHeaders, opts: ForwardOptions): Record<string, string | string[]> {
  const out = opts.relay ? withoutHopByHop(incoming) : clientRequestHeaders(incoming, opts.clientIp);
  if (opts.relay) {
    const prior = incoming['x-forwarded-for'];
    out['x-forwarded-for'] = prior ? `${prior}, ${opts.clientIp}` : opts.clientIp;
  }
  out[REQUEST_ID_HEADER] = opts.requestId;
  out[CLIENT_REQUEST_ID_HEADER] = opts.requestId; // what the function sees, valid or generated
  out[DEADLINE_HEADER] = String(opts.deadline);
  return Object.assign(out, opts.extraHeaders);
}

/**
 * A client's request headers as the function may see them: no Invoke API call can be made over HTTP,
 * and the client's address is the one it came from.
 */
export function clientRequestHeaders(incoming: IncomingHttpHeaders, clientIp: string): Record<string, string | string[]> {
  const out = withoutHopByHop(incoming);
  delete out[INVOKE_HEADER];
  out[SOURCE_IP_HEADER] = clientIp;
  const prior = incoming['x-forwarded-for'];
  out['x-forwarded-for'] = prior ? `${prior}, ${clientIp}` : clientIp;
  return out;
}

/** The headers that belong to the message, not to one connection (or to Aether's cluster hop). */
function withoutHopByHop(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

export interface ExchangeOptions {
  /** Default POST. */
  method?: string;
  path: string;
  requestId: string;
  deadline: number;
  connections: number;
  extraHeaders?: Record<string, string>;
  instanceId: string | null;
  headers: Record<string, string | string[]>;
  body: Buffer;
  /** A longer answer is cut off and reported as AetherError `response_too_large`. */
  maxResponseBytes: number;
}

export interface Exchanged extends Forwarded {
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/**
 * A buffered request to an instance (or a worker) and its whole answer, for callers that must look at
 * it (the Lambda Invoke API, async invocations). A worker's own error comes back as the AetherError it was there.
 */
export async function exchange(lease: Lease, opts: ExchangeOptions): Promise<Exchanged> {
  let res: Awaited<ReturnType<Pool['request']>>;
  try {
    const bodyless = opts.body.length === 0 && (opts.method === 'GET' || opts.method === 'HEAD');
    res = await poolFor(lease.handle, opts.connections).request({
      method: (opts.method ?? 'POST') as 'POST',
      path: opts.path,
      headers: {
        ...opts.headers,
        ...(bodyless ? {} : { 'content-length': String(opts.body.length) }),
        [REQUEST_ID_HEADER]: opts.requestId,
        [CLIENT_REQUEST_ID_HEADER]: opts.requestId,
        [DEADLINE_HEADER]: String(opts.deadline),
        ...opts.extraHeaders,
      },
      body: bodyless ? undefined : opts.body,
      headersTimeout: Math.max(1, opts.deadline - Date.now()),
    });
  } catch (err) {
    throw await explain(err, lease, undefined, opts.requestId);
  }
  const headers = res.headers as IncomingHttpHeaders;
  const out: Forwarded = {
    status: res.statusCode,
    instanceId: single(headers[INSTANCE_HEADER]) ?? opts.instanceId,
    error: decodeError(single(headers[ERROR_HEADER])),
    coldStart: headers[COLD_START_HEADER] === '1',
  };
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > opts.maxResponseBytes) {
        res.body.destroy();
        throw involving(new AetherError('response_too_large', `the response is larger than ${opts.maxResponseBytes} bytes`), {
          instanceId: out.instanceId ?? undefined,
        });
      }
      chunks.push(chunk);
    }
  } catch (err) {
    throw await explain(err, lease, undefined, opts.requestId);
  }
  const code = errorCodeOf(single(headers[ERROR_CODE_HEADER]));
  if (code) {
    throw involving(new AetherError(code, out.error ?? `the worker answered ${res.statusCode}`), {
      instanceId: out.instanceId ?? undefined,
      coldStart: out.coldStart,
    });
  }
  return { ...out, headers, body: Buffer.concat(chunks, size) };
}
