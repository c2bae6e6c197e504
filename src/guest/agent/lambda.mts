import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { LambdaHandler } from './entry.mjs';
import { sendError, type Responder } from './http-mode.mjs';
import { DEADLINE_HEADER, REQUEST_ID_HEADER, type AgentConfig } from './protocol.mjs';

const MAX_BODY_BYTES = 6 * 1024 * 1024;
/** When the host sends no deadline: Lambda's maximum run time. */
const DEFAULT_DEADLINE_MS = 15 * 60 * 1000;
const TEXT_TYPE = /^(text\/|application\/(json|xml|javascript|x-www-form-urlencoded)|[^;]*\+(json|xml))/i;

/** Lambda-style `handler(event, context)`: the request is buffered into an event, the result mapped back. */
export function lambdaResponder(handler: LambdaHandler, config: AgentConfig): Responder {
  let counter = 0;
  return async (req, res) => {
    const body = await readBody(req);
    if (!body) {
      sendError(res, 413, 'payload_too_large', `request body over ${MAX_BODY_BYTES} bytes`, true);
      return;
    }
    const requestId = header(req, REQUEST_ID_HEADER) ?? `${config.instance_id}-${++counter}`;
    const deadline = Number(header(req, DEADLINE_HEADER)) || Date.now() + DEFAULT_DEADLINE_MS;
    const context = {
      functionId: config.function_id,
      instanceId: config.instance_id,
      requestId,
      awsRequestId: requestId, // Lambda's name for it
      deadline,
      getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    };
    const result = await invoke(handler, toEvent(req, body, requestId), context);
    writeResult(res, result);
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The body, or undefined if it is over the limit (counted while streaming: no length is trusted).
 * An oversized body is still read to its end, discarded: answering while the client is still sending
 * would cut the connection under it and the client would see a broken pipe instead of the 413.
 */
async function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= MAX_BODY_BYTES) chunks.push(chunk);
  }
  if (size > MAX_BODY_BYTES) return undefined;
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
}

function toEvent(req: IncomingMessage, body: Buffer, requestId: string) {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const rawPath = q === -1 ? url : url.slice(0, q);
  const rawQuery = q === -1 ? '' : url.slice(q + 1);
  const query: Record<string, string> = {};
  for (const [key, value] of new URLSearchParams(rawQuery)) query[key] = key in query ? `${query[key]},${value}` : value;
  const headers: Record<string, string> = {};
  for (const [key, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers[key] = Array.isArray(value) ? value.join(', ') : value;
  }
  const isBase64Encoded = body.length > 0 && !TEXT_TYPE.test(headers['content-type'] ?? 'text/plain');
  return {
    method: req.method,
    path: safeDecode(rawPath),
    rawPath,
    query,
    rawQuery,
    headers,
    body: body.toString(isBase64Encoded ? 'base64' : 'utf8'),
    isBase64Encoded,
    requestId,
  };
}

function safeDecode(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

/** Async handlers, plain return values, and the older callback style (a third parameter) alike. */
function invoke(handler: LambdaHandler, event: unknown, context: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const returned = handler(event, context, (err, result) => (err ? reject(err) : resolve(result)));
    if (handler.length < 3 || isThenable(returned)) Promise.resolve(returned).then(resolve, reject);
  });
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | undefined)?.then === 'function';
}

interface LambdaResult {
  statusCode: number;
  headers?: Record<string, string | number | string[]>;
  cookies?: string[];
  body?: unknown;
  isBase64Encoded?: boolean;
}

/** `{statusCode,...}` as given; a string as text/plain; undefined as an empty 200; anything else as JSON. */
function writeResult(res: ServerResponse, result: unknown): void {
  let status = 200;
  const headers: OutgoingHttpHeaders = {};
  let body: unknown = result;
  let isBase64 = false;
  if (typeof result === 'object' && result !== null && 'statusCode' in result) {
    const r = result as LambdaResult;
    status = r.statusCode;
    for (const [name, value] of Object.entries(r.headers ?? {})) headers[name.toLowerCase()] = value;
    if (r.cookies?.length) headers['set-cookie'] = r.cookies;
    body = r.body;
    isBase64 = r.isBase64Encoded === true;
  }
  let payload: Buffer;
  if (body === undefined || body === null) {
    payload = Buffer.alloc(0);
  } else if (typeof body === 'string') {
    payload = Buffer.from(body, isBase64 ? 'base64' : 'utf8');
    if (body === result) headers['content-type'] = 'text/plain; charset=utf-8';
  } else if (body instanceof Uint8Array) {
    payload = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  } else {
    payload = Buffer.from(JSON.stringify(body));
    headers['content-type'] ??= 'application/json';
  }
  headers['content-length'] = payload.length;
  res.writeHead(status, headers);
  res.end(payload);
}
