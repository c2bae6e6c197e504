/** ANY /functions/{id}/*: routes the request to an instance of the function and records the invocation. */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { AetherError } from '../../core/errors.js';
import type { FunctionService } from '../../core/functions.js';
import type { InvocationLog } from '../../core/ports.js';
import type { Scheduler } from '../../core/scheduler.js';
import { toAetherError } from './errors.js';
import { forward } from './forward.js';

export interface InvokeDeps {
  functions: FunctionService;
  scheduler: Scheduler;
  invocations: InvocationLog;
  startTimeoutMs: number;
}

export async function invokeRoutes(app: FastifyInstance, deps: InvokeDeps): Promise<void> {
  // Bodies are streamed to the instance untouched: no parser may read them here.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));

  const handler = async (req: import('fastify').FastifyRequest<{ Params: { id: string } }>, reply: import('fastify').FastifyReply) => {
    reply.hijack();
    const started = Date.now();
    const requestId = randomUUID();
    const res = reply.raw;
    let fn;
    let lease;
    let status = 0;
    let error: string | null = null;
    try {
      fn = await deps.functions.get(req.params.id);
      // Waiting for an instance may include a cold start; timeout_ms bounds the function's own run.
      lease = await deps.scheduler.acquire(fn, started + deps.startTimeoutMs + fn.timeout_ms);
      status = await forward(req.raw, res, lease, {
        path: functionPath(req.raw.url!),
        requestId,
        deadline: Date.now() + fn.timeout_ms,
        concurrency: fn.concurrency,
        clientIp: req.ip,
      });
    } catch (err) {
      const ae = toAetherError(err);
      status = ae.status;
      error = ae.message;
      if (ae.code === 'internal') req.log.error({ err }, 'invocation failed');
      sendError(res, ae, requestId);
    } finally {
      lease?.release();
    }
    if (fn) {
      deps.invocations.record({
        id: requestId,
        function_id: fn.id,
        started_at: new Date(started).toISOString(),
        status,
        duration_ms: Date.now() - started,
        cold_start: lease?.coldStart ?? false,
        instance_id: lease?.instanceId ?? null,
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
  return rest.startsWith('/') ? rest : '/' + rest;
}

function sendError(res: import('node:http').ServerResponse, err: AetherError, requestId: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code: err.code, message: err.message } });
  res.writeHead(err.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-aether-request-id': requestId });
  res.end(body);
}
