/**
 * The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`), as AWS SDKs and the aws CLI
 * call it: SigV4-signed, any JSON event, the handler's result (or its error) as the answer, Lambda's
 * headers, status codes and error shapes. The event reaches the instance like an HTTP invocation does
 * (same leases, retries and records), marked so that the agent hands it to the handler unchanged.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import {
  FUNCTION_ARN_PREFIX,
  FUNCTION_ERROR_HEADER,
  INVOKE_HEADER,
  INVOKE_PATH,
  LOG_END_HEADER,
  LOG_END_LINE,
} from '../../../guest/agent/protocol.mjs';
import { z } from 'zod';
import { AetherError } from '../../../core/errors.js';
import type { FunctionService } from '../../../core/functions.js';
import { MAX_ASYNC_PAYLOAD_BYTES } from '../../../core/async-invocations.js';
import { newInvocationId } from '../../../core/invocations.js';
import type { LogLine } from '../../../core/logs.js';
import type { FunctionRecord } from '../../../core/types.js';
import type { Resolved } from '../../../core/versions.js';
import { toAetherError } from '../errors.js';
import { exchange } from '../forward.js';
import { type InvocationIds, type InvokeDeps, runInvocation } from '../invocation.js';
import { requireAuth } from '../openapi.js';
import { invalidParameter, LambdaApiError, sendLambdaError } from './errors.js';
import { type AccessKey, SigV4Verifier } from './sigv4.js';

/** Lambda's limits for a synchronous invocation's request and response payloads. */
export const MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024;

export interface LambdaApiOptions {
  invoke: InvokeDeps;
  keys: AccessKey[];
  /** Function logs, for X-Amz-Log-Type: Tail. */
  logs: Pick<FunctionService, 'followLogs'>;
}

/** Lambda's log tail: the last 4 KB of the invocation's lines. */
const TAIL_BYTES = 4096;
/** How long the answer waits for the invocation's last line to reach the log store. */
const TAIL_WAIT_MS = 2000;

type InvokeRequest = FastifyRequest<{ Params: { name: string }; Querystring: { Qualifier?: string }; Body: Buffer | undefined }>;

export async function lambdaApiRoutes(app: FastifyInstance, opts: LambdaApiOptions): Promise<void> {
  const verifier = new SigV4Verifier(opts.keys, 'lambda');
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => {
    readPayload(payload).then((body) => done(null, body), done);
  });
  app.setErrorHandler((err, req, reply) => {
    const lambdaError = asLambdaError(err);
    if (lambdaError.status >= 500) req.log.error({ err }, 'Lambda API request failed');
    return sendLambdaError(reply, lambdaError);
  });
  requireAuth(
    app,
    'sigv4',
    async (req) => {
      await verifier.verify({ method: req.method, url: req.url, headers: req.headers, body: (req.body as Buffer | undefined) ?? EMPTY });
    },
    'preHandler',
  );

  app.post('/2015-03-31/functions/:name/invocations', { schema: invokeSchema }, async (req: InvokeRequest, reply) => {
    const started = Date.now();
    const id = newInvocationId(started);
    void reply.header('x-amzn-RequestId', id);
    const { fn, executedVersion } = await resolve(opts.invoke, req.params.name, req.query.Qualifier);
    void reply.header('X-Amz-Executed-Version', executedVersion);
    const type = req.headers['x-amz-invocation-type'] ?? 'RequestResponse';
    if (type === 'DryRun') return reply.status(204).send();
    if (type === 'Event') {
      const body = req.body ?? EMPTY;
      if (body.length > MAX_ASYNC_PAYLOAD_BYTES) throw payloadTooLarge(MAX_ASYNC_PAYLOAD_BYTES, 'the Event invocation type');
      if (!opts.invoke.async) throw new LambdaApiError(500, 'ServiceException', 'async invocations are not available here');
      const request = { method: 'POST', path: INVOKE_PATH, headers: EVENT_HEADERS, body: jsonPayload(body).toString('base64') };
      const event = await opts.invoke.async.accept(fn, 'invoke', request, { qualifier: executedVersion });
      // Lambda answers an Event invocation with 202, no payload, and the request id its run will have.
      return reply.header('x-amzn-RequestId', event.id).status(202).send();
    }
    if (type !== 'RequestResponse') {
      throw invalidParameter(`InvocationType must be RequestResponse, Event or DryRun, not ${String(type)}`);
    }
    const logType = req.headers['x-amz-log-type'] ?? 'None';
    if (logType !== 'None' && logType !== 'Tail') throw invalidParameter(`LogType must be None or Tail, not ${String(logType)}`);
    const event = jsonPayload(req.body);
    const ids = { id, requestId: id, started };
    let answer: SyncAnswer;
    if (logType === 'Tail') {
      // The log is followed from before the invocation starts: none of its lines can be missed.
      const abort = new AbortController();
      let timer: NodeJS.Timeout | undefined;
      try {
        const tail = logTail(await opts.logs.followLogs(fn.id, { request_id: id }, { since: started }, abort.signal), id, abort);
        answer = await invokeSync(opts.invoke, fn, event, ids, true);
        timer = setTimeout(() => abort.abort(), TAIL_WAIT_MS);
        void reply.header('X-Amz-Log-Result', Buffer.from(await tail).toString('base64'));
      } finally {
        clearTimeout(timer);
        abort.abort();
      }
    } else {
      answer = await invokeSync(opts.invoke, fn, event, ids, false);
    }
    if (answer.functionError) void reply.header('X-Amz-Function-Error', answer.functionError);
    return reply.status(200).header('content-type', 'application/json').send(answer.body);
  });
}

const EMPTY = Buffer.alloc(0);
/** How an Invoke API event reaches the instance (see invokeSync), sync or async. */
const EVENT_HEADERS = { 'content-type': 'application/json', [INVOKE_HEADER]: '1' };

const invokeSchema = {
  summary: 'Lambda Invoke API: run a function with a JSON event (AWS SDKs, aws lambda invoke)',
  tags: ['lambda'],
  params: z.object({ name: z.string().min(1).describe("the function's name, id or ARN") }),
  querystring: z.object({ Qualifier: z.string().optional().describe('$LATEST (the default), a version number or an alias') }),
  consumes: { 'application/json': z.unknown().describe('the event: any JSON, up to 6 MB (256 KB for InvocationType Event)') },
  response: {
    200: {
      description:
        "the handler's result; a function error has X-Amz-Function-Error and {errorType, errorMessage}; with X-Amz-Log-Type: Tail, X-Amz-Log-Result has the run's last log lines (base64)",
      content: { 'application/json': { schema: z.unknown() } },
    },
    202: {
      description: 'InvocationType Event: the event (up to 256 KB) is queued durably; x-amzn-RequestId is the request id of its attempts',
    },
    204: { description: 'InvocationType DryRun: the caller may invoke the function' },
    default: {
      description: "Lambda's error shape, its type also in x-amzn-ErrorType",
      content: { 'application/json': { schema: z.object({ Type: z.enum(['User', 'Service']), message: z.string() }) } },
    },
  },
};

/** The payload (the result, or the error report) and whether the function failed. */
interface SyncAnswer {
  body: Buffer;
  functionError?: string;
}

async function invokeSync(deps: InvokeDeps, fn: FunctionRecord, event: Buffer, ids: InvocationIds, logEnd: boolean): Promise<SyncAnswer> {
  const { result, failure } = await runInvocation(deps, fn, ids, {
    prepare: async () => event,
    send: async (lease, _prepared, sofar) => {
      const out = await exchange(lease, {
        path: (lease.remote?.pathPrefix ?? '') + INVOKE_PATH,
        requestId: ids.requestId,
        deadline: Date.now() + fn.timeout_ms + (lease.remote ? deps.startTimeoutMs : 0),
        connections: lease.remote?.maxConnections ?? fn.concurrency,
        extraHeaders: lease.remote?.headers,
        instanceId: sofar.instanceId,
        headers: { ...EVENT_HEADERS, ...(logEnd ? { [LOG_END_HEADER]: '1' } : {}) },
        body: event,
        maxResponseBytes: MAX_SYNC_PAYLOAD_BYTES,
      });
      // The agent marks a handler's failure; a server-mode function's answer fails when it is no success.
      const marked = out.headers[FUNCTION_ERROR_HEADER];
      const functionError = typeof marked === 'string' ? marked : out.status >= 300 ? 'Unhandled' : undefined;
      return { ...out, status: 200, functionError, error: functionError ? describeFunctionError(out.body, out.status) : out.error };
    },
  });
  return result ?? platformFailure(failure.error, ids.requestId, fn);
}

/**
 * The invocation's last TAIL_BYTES of log lines: collected until the agent's end line arrives (or
 * TAIL_WAIT_MS after the answer is ready: a server-mode function writes none, a crashed one may not).
 */
async function logTail(batches: AsyncIterable<LogLine[]>, requestId: string, abort: AbortController): Promise<string> {
  const end = `${LOG_END_LINE}${requestId}`;
  const ended = new Set<string>();
  let text = '';
  try {
    for await (const batch of batches) {
      for (const line of batch) {
        if (line.message === end) ended.add(line.stream);
        else text = `${text}${line.message}\n`.slice(-TAIL_BYTES * 2);
      }
      if (ended.size === 2) break;
    }
  } catch (err) {
    if (!abort.signal.aborted) throw err;
  }
  if (ended.size > 0) text += `${end}\n`; // once, last, as Lambda's END line
  const bytes = Buffer.from(text);
  return bytes.length <= TAIL_BYTES ? text : bytes.subarray(bytes.length - TAIL_BYTES).toString();
}

/**
 * Failures of the function's run are Lambda function errors (200 with X-Amz-Function-Error, as Lambda
 * reports a timeout or a crashed runtime); the others are API errors in Lambda's shape.
 */
function platformFailure(err: AetherError, requestId: string, fn: FunctionRecord): SyncAnswer {
  const functionError = (errorType: string, message: string) => ({
    functionError: 'Unhandled',
    body: Buffer.from(JSON.stringify({ errorType, errorMessage: `RequestId: ${requestId} Error: ${message}` })),
  });
  if (err.code === 'response_too_large') {
    return functionError(
      'Function.ResponseSizeTooLarge',
      `Response payload size exceeded maximum allowed payload size (${MAX_SYNC_PAYLOAD_BYTES} bytes).`,
    );
  }
  if (err.code === 'timeout') return functionError('Sandbox.Timedout', `Task timed out after ${(fn.timeout_ms / 1000).toFixed(2)} seconds`);
  if (err.status === 502 || err.status === 504) return functionError('Runtime.ExitError', err.message);
  throw asLambdaError(err);
}

/** Past this much an oversized payload is no longer drained: the connection is cut instead. */
const MAX_DRAIN_BYTES = 64 * 1024 * 1024;

/**
 * The payload, up to Lambda's limit. An oversized one is read to its end and dropped before the 413:
 * answering while the client still sends would cut the connection under it, and AWS SDKs would
 * report a network error instead of RequestEntityTooLargeException.
 */
async function readPayload(payload: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of payload as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= MAX_SYNC_PAYLOAD_BYTES) chunks.push(chunk);
    else if (size > MAX_DRAIN_BYTES) throw payloadTooLarge(); // leaving the loop destroys the stream
  }
  if (size > MAX_SYNC_PAYLOAD_BYTES) throw payloadTooLarge();
  return Buffer.concat(chunks, size);
}

const payloadTooLarge = (limit = MAX_SYNC_PAYLOAD_BYTES, what = 'the InvokeFunction operation') =>
  new LambdaApiError(413, 'RequestEntityTooLargeException', `Request must be smaller than ${limit} bytes for ${what}`);

/** Aether's errors as the Lambda API names them. */
function asLambdaError(err: unknown): LambdaApiError {
  if (err instanceof LambdaApiError) return err;
  const ae = toAetherError(err);
  switch (ae.status) {
    case 400:
      return new LambdaApiError(400, 'InvalidRequestContentException', ae.message);
    case 404:
      return new LambdaApiError(404, 'ResourceNotFoundException', ae.message);
    case 409:
      return new LambdaApiError(409, 'ResourceConflictException', ae.message);
    case 503:
      if (ae.code === 'queue_full' || ae.code === 'no_capacity') {
        return new LambdaApiError(429, 'TooManyRequestsException', `Rate Exceeded. ${ae.message}`, {
          Reason: 'ReservedFunctionConcurrentInvocationLimitExceeded',
        });
      }
      return new LambdaApiError(503, 'ServiceException', ae.message);
    default:
      return new LambdaApiError(500, 'ServiceException', ae.status === 500 ? 'internal error' : ae.message);
  }
}

/**
 * The function a FunctionName names: `name`, `name:qualifier`, `123456789012:function:name[:qualifier]`
 * or a whole ARN (any partition, region and account: Aether has one namespace of functions).
 */
async function resolve(deps: InvokeDeps, functionName: string, queryQualifier: string | undefined): Promise<Resolved> {
  const parts = functionName.split(':');
  let rest = parts;
  if (parts[0] === 'arn') {
    if (parts[2] !== 'lambda' || parts[5] !== 'function') throw invalidParameter(`${functionName} is not a Lambda function ARN`);
    rest = parts.slice(6);
  } else if (parts[1] === 'function') {
    rest = parts.slice(2);
  }
  const [name, nameQualifier, ...extra] = rest;
  if (!name || extra.length > 0) throw invalidParameter(`invalid FunctionName ${functionName}`);
  if (nameQualifier && queryQualifier && nameQualifier !== queryQualifier) {
    throw invalidParameter('The derived qualifier from the function name does not match the specified qualifier.');
  }
  const qualifier = nameQualifier ?? queryQualifier;
  const arn = `${FUNCTION_ARN_PREFIX}${name}${qualifier ? `:${qualifier}` : ''}`;
  try {
    return await deps.functions.resolve(name, qualifier);
  } catch (err) {
    if (err instanceof AetherError && err.status === 404) {
      throw new LambdaApiError(404, 'ResourceNotFoundException', `Function not found: ${arn} (${err.message})`);
    }
    throw err;
  }
}

/** The event as the handler will get it: any JSON value; no payload is `{}`, as on Lambda. */
function jsonPayload(body: Buffer | undefined): Buffer {
  if (!body || body.length === 0) return Buffer.from('{}');
  try {
    JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new LambdaApiError(400, 'InvalidRequestContentException', `Could not parse request body into json: ${(err as Error).message}`);
  }
  return body;
}

/** For the invocation record: what the handler's error payload says, briefly. */
export function describeFunctionError(body: Buffer, status: number): string {
  try {
    const { errorType, errorMessage } = JSON.parse(body.toString('utf8')) as { errorType?: unknown; errorMessage?: unknown };
    if (typeof errorMessage === 'string') return `${typeof errorType === 'string' ? errorType : 'Error'}: ${errorMessage}`.slice(0, 1000);
  } catch {
    // not Lambda's error shape: a server-mode function's answer
  }
  return `the function answered the event with HTTP ${status}`;
}
