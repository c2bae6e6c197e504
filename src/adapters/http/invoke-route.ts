/**
 * ANY /functions/{id}/*: routes the request to an instance of the function and records the invocation.
 * Every answer carries the request id (X-Request-Id: the client's if valid, else the record's id).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AetherError } from '../../core/errors.js';
import type { FunctionService } from '../../core/functions.js';
import { newInvocationId, validRequestId } from '../../core/invocations.js';
import type { Lease } from '../../core/pool.js';
import type { InvocationLog } from '../../core/ports.js';
import type { Router } from '../../core/scheduler.js';
import type { FunctionRecord } from '../../core/types.js';
import { clusterAuth } from './auth.js';
import { toAetherError } from './errors.js';
import { ERROR_HEADER, REQUEST_ID_HEADER } from '../../guest/agent/protocol.mjs';
import { CLIENT_REQUEST_ID_HEADER, COLD_START_HEADER, encodeError, forward, type Forwarded, INSTANCE_HEADER } from './forward.js';
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
  // A cluster worker answers a gateway, which records the invocation from what the worker tells it.
  const relay = deps.requireToken !== undefined;

  const handler = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
    reply.hijack();
    const started = Date.now();
    const id = newInvocationId(started);
    // A worker keeps the id its gateway chose; the edge takes the client's when it is valid.
    const requestId = validRequestId(req.headers[deps.requireToken ? REQUEST_ID_HEADER : CLIENT_REQUEST_ID_HEADER]) ?? id;
    const res = reply.raw;
    let fn: FunctionRecord | undefined;
    let lease: Lease | undefined;
    let outcome: Forwarded = { status: 0, instanceId: null, error: null, coldStart: false };
    try {
      fn = await deps.functions.get(req.params.id);
      // No slot for a client that has not sent its request yet: it could hold it for as long as it likes.
      const body = await readRequestBody(req.raw, deps.body, Date.now() + deps.startTimeoutMs + fn.timeout_ms);
      const sent = Date.now();
      for (let attempt = 0; ; attempt++) {
        // Waiting for an instance may include a cold start; timeout_ms bounds the function's own run.
        lease = await deps.router.acquire(fn, sent + deps.startTimeoutMs + fn.timeout_ms);
        const instanceId = lease.remote ? null : lease.instanceId;
        outcome = { ...outcome, instanceId, coldStart: outcome.coldStart || lease.coldStart };
        try {
          const out = await forward(req.raw, res, lease, {
            body,
            path: (lease.remote?.pathPrefix ?? '') + functionPath(req.raw.url!),
            requestId,
            deadline: Date.now() + fn.timeout_ms + (lease.remote ? deps.startTimeoutMs : 0),
            connections: lease.remote?.maxConnections ?? fn.concurrency,
            clientIp: req.ip,
            extraHeaders: lease.remote?.headers,
            instanceId,
            responseHeaders: answerHeaders(requestId, outcome.coldStart, relay),
            relay,
          });
          outcome = { ...out, coldStart: outcome.coldStart || out.coldStart };
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
      outcome = {
        status: ae.status,
        error: ae.message,
        instanceId: ae.context.instanceId ?? outcome.instanceId,
        coldStart: outcome.coldStart || ae.context.coldStart === true,
      };
      if (ae.code === 'internal') req.log.error({ err }, 'invocation failed');
      sendError(req.raw, res, ae, { ...answerHeaders(requestId, outcome.coldStart, relay), ...errorHeaders(outcome, relay) });
    } finally {
      lease?.release();
    }
    if (fn && deps.invocations) {
      deps.invocations.record({
        id,
        request_id: requestId,
        function_id: fn.id,
        started_at: new Date(started).toISOString(),
        status: outcome.status,
        duration_ms: Date.now() - started,
        cold_start: outcome.coldStart,
        instance_id: outcome.instanceId,
        error: outcome.error,
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

/** On every answer: the request id; from a worker also whether the request waited for a new instance. */
function answerHeaders(requestId: string, coldStart: boolean, relay: boolean): Record<string, string> {
  const headers: Record<string, string> = { [CLIENT_REQUEST_ID_HEADER]: requestId };
  if (relay && coldStart) headers[COLD_START_HEADER] = '1';
  return headers;
}

/** A worker's error answer tells the gateway, which records the invocation, why and where it failed. */
function errorHeaders(outcome: Forwarded, relay: boolean): Record<string, string> {
  if (!relay) return {};
  const headers: Record<string, string> = { [ERROR_HEADER]: encodeError(outcome.error ?? '') };
  if (outcome.instanceId) headers[INSTANCE_HEADER] = outcome.instanceId;
  return headers;
}

function sendError(req: IncomingMessage, res: ServerResponse, err: AetherError, headers: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code: err.code, message: err.message } });
  res.writeHead(err.status, {
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    // The rest of an unread request body is not worth waiting for (it may never come): close after the answer.
    ...(req.complete ? {} : { connection: 'close' }),
  });
  res.end(body);
}
