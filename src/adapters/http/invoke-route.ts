/**
 * ANY /functions/{id}/*: routes the request to an instance of the function and records the invocation.
 * Every answer carries the request id (X-Request-Id: the client's if valid, else the record's id).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { type AsyncInvocations, MAX_ASYNC_PAYLOAD_BYTES } from '../../core/async-invocations.js';
import type { AsyncEvent } from '../../core/types.js';
import { type AetherError, badRequest, tooLarge } from '../../core/errors.js';
import { newInvocationId, validRequestId } from '../../core/invocations.js';
import type { FunctionRecord } from '../../core/types.js';
import { z } from 'zod';
import { clusterAuth } from './auth.js';
import { toAetherError } from './errors.js';
import { ERROR_HEADER, REQUEST_ID_HEADER } from '../../guest/agent/protocol.mjs';
import {
  CLIENT_REQUEST_ID_HEADER,
  clientRequestHeaders,
  COLD_START_HEADER,
  encodeError,
  ERROR_CODE_HEADER,
  forward,
  type Forwarded,
  INSTANCE_HEADER,
} from './forward.js';
import { type InvokeDeps, runInvocation } from './invocation.js';
import { requireAuth } from './openapi.js';
import { type BodyLimits, readRequestBody } from './request-body.js';
import { splitQualified } from '../../core/versions.js';

export async function invokeRoutes(app: FastifyInstance, deps: InvokeDeps): Promise<void> {
  // Bodies are streamed to the instance untouched: no parser may read them here.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));
  if (deps.requireToken) requireAuth(app, 'cluster', clusterAuth(deps.requireToken));
  // A cluster worker answers a gateway, which records the invocation from what the worker tells it.
  const relay = deps.requireToken !== undefined;

  const handler = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
    reply.hijack();
    const started = Date.now();
    const id = newInvocationId(started);
    // A worker keeps the id its gateway chose; the edge takes the client's when it is valid.
    const requestId = validRequestId(req.headers[deps.requireToken ? REQUEST_ID_HEADER : CLIENT_REQUEST_ID_HEADER]) ?? id;
    const res = reply.raw;
    const fail = (err: unknown, error: AetherError, outcome: Forwarded) => {
      if (error.code === 'internal') req.log.error({ err }, 'invocation failed');
      sendError(req.raw, res, error, { ...answerHeaders(requestId, outcome.coldStart, relay), ...errorHeaders(error, outcome, relay) });
    };
    let fn: FunctionRecord;
    let executedVersion: string;
    try {
      const { name, qualifier } = splitQualified(req.params.id);
      ({ fn, executedVersion } = await deps.functions.resolve(name, qualifier));
    } catch (err) {
      fail(err, toAetherError(err), { status: 0, instanceId: null, error: null, coldStart: false });
      return;
    }
    const type = deps.async && req.headers[INVOCATION_TYPE_HEADER];
    if (deps.async && type !== undefined && type !== 'RequestResponse') {
      try {
        if (type !== 'Event') throw badRequest(`${INVOCATION_TYPE_HEADER} must be Event or RequestResponse, not ${String(type)}`);
        const accepted = await acceptEvent(req, deps.async, fn, deps.body, { requestId, qualifier: executedVersion });
        const body = JSON.stringify({ id: accepted.id, request_id: accepted.request_id });
        res.writeHead(202, { [CLIENT_REQUEST_ID_HEADER]: requestId, 'content-type': 'application/json; charset=utf-8' });
        res.end(body);
      } catch (err) {
        fail(err, toAetherError(err), { status: 0, instanceId: null, error: null, coldStart: false });
      }
      return;
    }
    const { failure } = await runInvocation(
      deps,
      fn,
      { id, requestId, started },
      {
        // No slot for a client that has not sent its request yet: it could hold it for as long as it likes.
        prepare: () => readRequestBody(req.raw, deps.body, Date.now() + deps.startTimeoutMs + fn.timeout_ms),
        send: (lease, body, sofar) =>
          forward(req.raw, res, lease, {
            body,
            path: (lease.remote?.pathPrefix ?? '') + functionPath(req.raw.url!),
            requestId,
            deadline: Date.now() + fn.timeout_ms + (lease.remote ? deps.startTimeoutMs : 0),
            connections: lease.remote?.maxConnections ?? fn.concurrency,
            clientIp: req.ip,
            extraHeaders: lease.remote?.headers,
            instanceId: sofar.instanceId,
            responseHeaders: answerHeaders(requestId, sofar.coldStart, relay),
            relay,
          }),
      },
    );
    if (failure) fail(failure.cause, failure.error, failure.outcome);
  };
  const description =
    'Method, path, query, headers and body reach the function; its response streams back. Every answer carries X-Request-Id. ' +
    'Errors Aether answers itself are JSON: 408 body too slow, 502 crashed, 503 no capacity, 504 timeout. ' +
    `With ${INVOCATION_TYPE_HEADER}: Event the request (body up to 256 KB) is queued durably and answered 202 at once; it runs later, retried on failure.`;
  const response = {
    200: { description: "the function's response", content: { '*/*': { schema: z.unknown() } } },
    202: {
      description: `${INVOCATION_TYPE_HEADER}: Event: queued; its attempts are invocation records with this request_id`,
      content: { 'application/json': { schema: z.strictObject({ id: z.string(), request_id: z.string() }) } },
    },
  };
  app.all(
    '/functions/:id',
    { schema: { summary: 'Invoke a function', description, tags: ['invoke'], params: QualifiedParams, response } },
    handler,
  );
  app.all(
    '/functions/:id/*',
    {
      schema: {
        summary: 'Invoke a function at a path',
        description,
        tags: ['invoke'],
        params: QualifiedParams.extend({ '*': z.string().describe('the rest of the path, as the function sees it (may contain "/")') }),
        response,
      },
    },
    handler,
  );
}

const QualifiedParams = z.strictObject({
  id: z
    .string()
    .min(1)
    .max(200)
    .describe('the function id or name; `name:7` runs version 7, `name:prod` what the alias prod runs, plain `name` the latest ($LATEST)'),
});

/** `Event`: the request is queued and answered 202 at once; it runs later (async invocation). */
export const INVOCATION_TYPE_HEADER = 'x-aether-invocation-type';

/** The whole request, as the function would have got it now, becomes a durably queued event. */
async function acceptEvent(
  req: FastifyRequest,
  async: AsyncInvocations,
  fn: FunctionRecord,
  limits: BodyLimits,
  opts: { requestId: string; qualifier: string },
): Promise<AsyncEvent> {
  const body = await readRequestBody(req.raw, { ...limits, bufferBytes: MAX_ASYNC_PAYLOAD_BYTES }, Date.now() + limits.timeoutMs);
  if (body && !Buffer.isBuffer(body)) {
    body.stream.destroy();
    throw tooLarge(
      `an async request's body may be at most ${MAX_ASYNC_PAYLOAD_BYTES} bytes; send it without ${INVOCATION_TYPE_HEADER}: Event`,
    );
  }
  const request = {
    method: req.method,
    path: functionPath(req.raw.url!),
    headers: clientRequestHeaders(req.headers, req.ip),
    body: (body ?? Buffer.alloc(0)).toString('base64'),
  };
  return async.accept(fn, 'http', request, opts);
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
function errorHeaders(error: AetherError, outcome: Forwarded, relay: boolean): Record<string, string> {
  if (!relay) return {};
  const headers: Record<string, string> = { [ERROR_HEADER]: encodeError(outcome.error ?? ''), [ERROR_CODE_HEADER]: error.code };
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
