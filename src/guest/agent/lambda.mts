import type { IncomingMessage, ServerResponse } from 'node:http';
import type { LambdaHandler } from './entry.mjs';
import { errorAnswer, errorHeader, type Responder, sendError } from './http-mode.mjs';
import { errorPayload, type Invocation, invokeHandler } from './lambda-context.mjs';
import { type EventFormat, failureAnswer, type HttpAnswer, MalformedResult, toAnswer, toEvent } from './lambda-events.mjs';
import { errorMessage, log } from './log.mjs';
import {
  type AgentConfig,
  DEADLINE_HEADER,
  FUNCTION_ERROR_HEADER,
  INVOKE_HEADER,
  LOG_END_HEADER,
  LOG_END_LINE,
  REQUEST_ID_HEADER,
  SOURCE_IP_HEADER,
} from './protocol.mjs';

export const MAX_BODY_BYTES = 6 * 1024 * 1024;
/** When the host sends no deadline: Lambda's maximum run time. */
const DEFAULT_DEADLINE_MS = 15 * 60 * 1000;

/** A request as the handler's answerer sees it, whichever channel (HTTP, frames) it came by. */
export interface AgentRequest {
  method: string;
  url: string;
  /** [name, value, name, value, ...] as sent. */
  rawHeaders: string[];
  /** Lower-case names. */
  headers: Record<string, string | string[] | undefined>;
  /** Undefined when it is over MAX_BODY_BYTES (the caller answers tooLarge()). */
  body: Buffer | undefined;
}

export type Answerer = (req: AgentRequest) => Promise<HttpAnswer>;

/**
 * Lambda-style `handler(event, context)`. An HTTP request is buffered into an event of the function's
 * event format and the result mapped back to HTTP; a Lambda Invoke API call (INVOKE_HEADER) hands its
 * JSON event over unchanged and answers with the result as JSON.
 */
export function lambdaAnswerer(handler: LambdaHandler, config: AgentConfig): Answerer {
  const format = config.event_format as EventFormat; // parseConfig admits only these
  let counter = 0;
  return async (req) => {
    const time = Date.now();
    const body = req.body ?? Buffer.alloc(0);
    const inv: Invocation = {
      requestId: header(req, REQUEST_ID_HEADER) ?? `${config.instance_id}-${++counter}`,
      deadline: Number(header(req, DEADLINE_HEADER)) || time + DEFAULT_DEADLINE_MS,
    };
    if (req.headers[INVOKE_HEADER]) return answerInvoke(handler, body, config, inv, req.headers[LOG_END_HEADER] !== undefined);
    const event = toEvent(format, {
      method: req.method,
      url: req.url,
      rawHeaders: req.rawHeaders,
      body,
      sourceIp: header(req, SOURCE_IP_HEADER) ?? '127.0.0.1',
      requestId: inv.requestId,
      time,
    });
    try {
      return toAnswer(format, await invokeHandler(handler, event, config, inv));
    } catch (err) {
      const malformed = err instanceof MalformedResult;
      const why = malformed ? `returned a result API Gateway would reject: ${err.message}` : errorMessage(err);
      log(
        malformed
          ? `handler ${why} (request ${inv.requestId})`
          : `handler failed (request ${inv.requestId}): ${err instanceof Error ? err.stack : why}`,
      );
      const answer = failureAnswer(format, errorMessage(err));
      Object.assign(answer.headers, errorHeader(malformed ? `the handler ${why}` : why));
      return answer;
    }
  };
}

/** The answerer behind the HTTP channel. */
export function lambdaResponder(answer: Answerer): Responder {
  return async (req, res) => {
    const body = await readBody(req);
    if (!body) {
      sendError(res, 413, 'payload_too_large', tooLargeMessage, true);
      return;
    }
    const { method = 'GET', url = '/', rawHeaders, headers } = req;
    write(res, await answer({ method, url, rawHeaders, headers, body }));
  };
}

const tooLargeMessage = `request body over ${MAX_BODY_BYTES} bytes`;

/** The answer to a body over MAX_BODY_BYTES. */
export function tooLarge(): HttpAnswer {
  return errorAnswer(413, 'payload_too_large', tooLargeMessage);
}

/** An Invoke API call: the event as sent, the result (or the handler's error, marked) as JSON. */
async function answerInvoke(
  handler: LambdaHandler,
  body: Buffer,
  config: AgentConfig,
  inv: Invocation,
  logEnd: boolean,
): Promise<HttpAnswer> {
  let payload: string;
  let failed = false;
  try {
    const result = await invokeHandler(handler, JSON.parse(body.toString('utf8')), config, inv);
    payload = JSON.stringify(result) ?? 'null';
  } catch (err) {
    log(`handler failed (request ${inv.requestId}): ${err instanceof Error ? err.stack : errorMessage(err)}`);
    payload = JSON.stringify(errorPayload(err));
    failed = true;
  }
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (failed) headers[FUNCTION_ERROR_HEADER] = 'Unhandled';
  // On both streams (tagged, like all its lines): the host has every line once it has both.
  if (logEnd) for (const stream of [process.stdout, process.stderr]) stream.write(`${LOG_END_LINE}${inv.requestId}\n`);
  return { status: 200, headers, body: Buffer.from(payload) };
}

function write(res: ServerResponse, answer: HttpAnswer): void {
  res.writeHead(answer.status, { ...answer.headers, 'content-length': answer.body.length });
  res.end(answer.body);
}

function header(req: AgentRequest, name: string): string | undefined {
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
