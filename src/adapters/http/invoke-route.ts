/** ANY /functions/{id}/*: routes the request to an instance of the function and records the invocation. */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AetherError } from '../../core/errors.js';
import type { FunctionService } from '../../core/functions.js';
import type { Lease } from '../../core/pool.js';
import type { InvocationLog } from '../../core/ports.js';
import type { Router } from '../../core/scheduler.js';
import type { FunctionRecord } from '../../core/types.js';
import { clusterAuth } from './auth.js';
import { toAetherError } from './errors.js';
import { forward } from './forward.js';
import { type BodyLimits, readRequestBody } from './request-body.js';

export interface InvokeDeps {
  functions: Pick<FunctionService, 'get'>;
  router: Router;
  /** Where invocations are recorded; a cluster worker leaves that to the gateway. */
  invocations?: InvocationLog;
  startTimeoutMs: number;
  body: BodyLimits;
  /** Cluster workers only take invocations from gateways, which present this token. */
  requireToken?: string;
}

/** A retry is safe only when the request provably never reached the instance. */
const MAX_REFUSED_RETRIES = 2;

export async function invokeRoutes(app: FastifyInstance, deps: InvokeDeps): Promise<void> {
  // Bodies are streamed to the instance untouched: no parser may read them here.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));
  if (deps.requireToken) app.addHook('onRequest', clusterAuth(deps.requireToken));

  const handler = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
    reply.hijack();
    const started = Date.now();
    const requestId = (deps.requireToken && (req.headers['x-aether-request-id'] as string)) || randomUUID();
    const res = reply.raw;
    let fn: FunctionRecord | undefined;
    let lease: Lease | undefined;
    let status = 0;
    let error: string | null = null;
    let instanceId: string | null = null;
    try {
      fn = await deps.functions.get(req.params.id);
      // No slot for a client that has not sent its request yet: it could hold it for as long as it likes.
      const body = await readRequestBody(req.raw, deps.body, Date.now() + deps.startTimeoutMs + fn.timeout_ms);
      const sent = Date.now();
      for (let attempt = 0; ; attempt++) {
        // Waiting for an instance may include a cold start; timeout_ms bounds the function's own run.
        lease = await deps.router.acquire(fn, sent + deps.startTimeoutMs + fn.timeout_ms);
        try {
          const out = await forward(req.raw, res, lease, {
            body,
            path: (lease.remote?.pathPrefix ?? '') + functionPath(req.raw.url!),
            requestId,
            deadline: Date.now() + fn.timeout_ms + (lease.remote ? deps.startTimeoutMs : 0),
            connections: lease.remote?.maxConnections ?? fn.concurrency,
            clientIp: req.ip,
            extraHeaders: lease.remote?.headers,
            instanceId: lease.instanceId,
          });
          status = out.status;
          instanceId = out.instanceId;
          break;
        } catch (err) {
          lease.release();
          const refused = err instanceof AetherError && err.code === 'connection_refused';
          if (!refused || attempt >= MAX_REFUSED_RETRIES) {
            lease = undefined;
            throw err;
          }
          lease.recycle(); // that target is gone: route around it
          lease = undefined;
        }
      }
    } catch (err) {
      const ae = toAetherError(err);
      status = ae.status;
      error = ae.message;
      if (ae.code === 'internal') req.log.error({ err }, 'invocation failed');
      sendError(req.raw, res, ae, requestId);
    } finally {
      lease?.release();
    }
    if (fn && deps.invocations) {
      deps.invocations.record({
        id: requestId,
        function_id: fn.id,
        started_at: new Date(started).toISOString(),
        status,
        duration_ms: Date.now() - started,
        cold_start: lease?.coldStart ?? false,
        instance_id: instanceId,
        error,
      });
    }
  };
  app.all('/functions/:id', handler);
  app.all('/functions/:id/*', handler);
}

/** The request path as the function sees it: everything after /functions/{id}, query included. */
export function functionPath(url: string): string {
  const start = '/functions/'.length;
  let end = start;
  while (end < url.length && url[end] !== '/' && url[end] !== '?') end++;
  const rest = url.slice(end);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

function sendError(req: IncomingMessage, res: ServerResponse, err: AetherError, requestId: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code: err.code, message: err.message } });
  res.writeHead(err.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-aether-request-id': requestId,
    // The rest of an unread request body is not worth waiting for (it may never come): close after the answer.
    ...(req.complete ? {} : { connection: 'close' }),
  });
  res.end(body);
}
