/**
 * Forwards one HTTP request to an instance and streams the answer back, both directions without
 * buffering. Each instance gets an undici connection pool whose "connect" opens a stream through
 * the instance's InstanceHandle, so this module knows nothing of how the instance is reached.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { Pool, errors as undiciErrors } from 'undici';
import { AetherError, badGateway, timedOut } from '../../core/errors.js';
import { CLUSTER_TOKEN_HEADER } from './auth.js';
import type { Lease } from '../../core/pool.js';
import type { InstanceHandle } from '../../core/ports.js';
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
  instanceId: string;
}

/** Which instance served the request: a worker names it in this header for the gateway's records. */
export const INSTANCE_HEADER = 'x-aether-instance';

/**
 * Resolves with the status sent to the client and the instance that served it; throws an
 * AetherError if nothing was sent yet (code `connection_refused`: the request never left).
 */
export async function forward(
  req: IncomingMessage,
  res: ServerResponse,
  lease: Lease,
  opts: ForwardOptions,
): Promise<{ status: number; instanceId: string }> {
  const { body } = opts;
  const headers = forwardedHeaders(req.headers, opts);
  if (Buffer.isBuffer(body)) headers['content-length'] = String(body.length); // a chunked body, read whole, has a length now
  let status = 0;
  let instanceId = opts.instanceId;
  try {
    // stream() writes the body straight into the client's response: no intermediate Readable.
    await poolFor(lease.handle, opts.connections).stream(
      {
        method: req.method as 'GET',
        path: opts.path,
        headers,
        body: Buffer.isBuffer(body) ? body : body?.stream,
        headersTimeout: Math.max(1, opts.deadline - Date.now()),
      },
      ({ statusCode, headers: upstreamHeaders }) => {
        status = statusCode;
        instanceId = (upstreamHeaders[INSTANCE_HEADER] as string | undefined) ?? instanceId;
        res.writeHead(statusCode, { ...withoutHopByHop(upstreamHeaders as IncomingHttpHeaders), [INSTANCE_HEADER]: instanceId });
        return res;
      },
    );
  } catch (err) {
    if (!res.headersSent) throw await explain(err, lease, body);
    res.destroy(); // the client sees a truncated response rather than a silently short one
  }
  return { status, instanceId };
}

async function explain(err: unknown, lease: Lease, body: RequestBody): Promise<AetherError> {
  const clientFault = body && !Buffer.isBuffer(body) ? body.stream.errored : undefined; // e.g. a stalled body
  if (clientFault instanceof AetherError) return clientFault;
  if (err instanceof AetherError) return err;
  if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED') {
    return new AetherError(502, 'connection_refused', 'the target refused the connection');
  }
  if (err instanceof undiciErrors.HeadersTimeoutError) {
    lease.recycle();
    return timedOut('the function did not respond within its timeout');
  }
  const reason = await lease.exitReason();
  if (reason) return badGateway(`the function crashed: ${reason}`, 'function_crashed');
  return badGateway(`the function closed the connection without responding (${(err as Error).message})`, 'function_error');
}

function forwardedHeaders(incoming: IncomingHttpHeaders, opts: ForwardOptions): Record<string, string | string[]> {
  const out = withoutHopByHop(incoming);
  const prior = incoming['x-forwarded-for'];
  out['x-forwarded-for'] = prior ? `${prior}, ${opts.clientIp}` : opts.clientIp;
  out['x-aether-request-id'] = opts.requestId;
  out['x-aether-deadline'] = String(opts.deadline);
  return Object.assign(out, opts.extraHeaders);
}

/** The headers that belong to the message, not to one connection (or to Aether's cluster hop). */
function withoutHopByHop(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}
