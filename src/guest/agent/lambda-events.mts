/**
 * HTTP requests as Lambda events and handler results as HTTP responses, in each event format:
 * `apigw-v2` (API Gateway HTTP API payload 2.0, with Aether's convenience fields), `apigw-v1` (REST API
 * payload 1.0) and `aether` (Aether's first event shape). Results are read as API Gateway reads them
 * for that format. Pure functions over plain data: no sockets here.
 */
import { validateHeaderName, validateHeaderValue } from 'node:http';

/** The formats implemented here (the host's list of valid `event_format`s must match: a test checks it). */
export const EVENT_FORMATS = ['apigw-v2', 'apigw-v1', 'aether'] as const;
export type EventFormat = (typeof EVENT_FORMATS)[number];

/** What the agent knows of an HTTP request, already read. */
export interface HttpFacts {
  method: string;
  /** Path and query as received (percent-encoded). */
  url: string;
  /** Header names as sent, values in order: [name, value, name, value, ...] (node's rawHeaders). */
  rawHeaders: string[];
  body: Buffer;
  sourceIp: string;
  requestId: string;
  /** Epoch ms the request arrived. */
  time: number;
}

export interface HttpAnswer {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
}

/** Bodies of these types reach the handler as text, all others base64-encoded (as API Gateway decides). */
const TEXT_TYPE = /^(text\/|application\/(json|xml|javascript|x-www-form-urlencoded|graphql)|[^;]*\+(json|xml))/i;
/** Connection-level headers (and the host's own x-aether-*) are not part of the request a handler sees. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-connection']);
const STAGE = '$default';
const ACCOUNT_ID = '000000000000';
const API_ID = 'aether';

export function toEvent(format: EventFormat, req: HttpFacts): Record<string, unknown> {
  const parts = requestParts(req);
  switch (format) {
    case 'apigw-v2':
      return { ...apigwV2Event(req, parts), ...convenienceFields(req, parts) };
    case 'apigw-v1':
      return apigwV1Event(req, parts);
    case 'aether':
      return aetherEvent(req, parts);
  }
}

export function toAnswer(format: EventFormat, result: unknown): HttpAnswer {
  switch (format) {
    case 'apigw-v2':
      return apigwV2Answer(result);
    case 'apigw-v1':
      return apigwV1Answer(result);
    case 'aether':
      return aetherAnswer(result);
  }
}

/** What the client gets when the handler failed, as API Gateway answers for that format. */
export function failureAnswer(format: EventFormat, message: string): HttpAnswer {
  switch (format) {
    case 'apigw-v2':
      return json(500, { message: 'Internal Server Error' });
    case 'apigw-v1':
      return json(502, { message: 'Internal server error' });
    case 'aether':
      return json(502, { error: { code: 'handler_error', message } });
  }
}

/** A result API Gateway would reject (e.g. no valid statusCode): the answer says nothing more, the log does. */
export class MalformedResult extends Error {}

interface Parts {
  rawPath: string;
  rawQuery: string;
  /** Lower-case names; hop-by-hop headers and the host's x-aether-* left out. */
  headers: Array<[string, string]>;
  /** Names as sent. */
  casedHeaders: Array<[string, string]>;
  query: Array<[string, string]>;
  contentType: string;
  base64: boolean;
  userAgent: string;
  host: string;
}

function requestParts(req: HttpFacts): Parts {
  const q = req.url.indexOf('?');
  const rawPath = q === -1 ? req.url : req.url.slice(0, q);
  const rawQuery = q === -1 ? '' : req.url.slice(q + 1);
  const headers: Array<[string, string]> = [];
  const casedHeaders: Array<[string, string]> = [];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (lower.startsWith('x-aether-') || HOP_BY_HOP.has(lower)) continue;
    headers.push([lower, req.rawHeaders[i + 1]!]);
    casedHeaders.push([name, req.rawHeaders[i + 1]!]);
  }
  const first = (name: string) => headers.find(([n]) => n === name)?.[1] ?? '';
  const contentType = first('content-type');
  return {
    rawPath,
    rawQuery,
    headers,
    casedHeaders,
    query: [...new URLSearchParams(rawQuery)],
    contentType,
    base64: req.body.length > 0 && !TEXT_TYPE.test(contentType || 'text/plain'),
    userAgent: first('user-agent'),
    host: first('host'),
  };
}

function bodyText(req: HttpFacts, parts: Parts): string {
  return req.body.toString(parts.base64 ? 'base64' : 'utf8');
}

/** Repeated names joined, as payload 2.0 and Aether's own event do. */
function joined(pairs: Array<[string, string]>, separator: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of pairs) out[key] = key in out ? `${out[key]}${separator}${value}` : value;
  return out;
}

function multi(pairs: Array<[string, string]>): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [key, value] of pairs) (out[key] ??= []).push(value);
  return out;
}

function apigwV2Event(req: HttpFacts, parts: Parts): Record<string, unknown> {
  const cookies = parts.headers
    .filter(([name]) => name === 'cookie')
    .flatMap(([, value]) => value.split(';'))
    .map((c) => c.trim())
    .filter(Boolean);
  const event: Record<string, unknown> = {
    version: '2.0',
    routeKey: '$default',
    rawPath: parts.rawPath,
    rawQueryString: parts.rawQuery,
    ...(cookies.length > 0 ? { cookies } : {}),
    headers: joined(
      parts.headers.filter(([name]) => name !== 'cookie'),
      ',',
    ),
    ...(parts.query.length > 0 ? { queryStringParameters: joined(parts.query, ',') } : {}),
    requestContext: {
      accountId: ACCOUNT_ID,
      apiId: API_ID,
      domainName: parts.host,
      domainPrefix: parts.host.split('.')[0],
      http: { method: req.method, path: parts.rawPath, protocol: 'HTTP/1.1', sourceIp: req.sourceIp, userAgent: parts.userAgent },
      requestId: req.requestId,
      routeKey: '$default',
      stage: STAGE,
      time: clfTime(req.time),
      timeEpoch: req.time,
    },
    isBase64Encoded: parts.base64,
  };
  if (req.body.length > 0) event.body = bodyText(req, parts);
  return event;
}

function apigwV1Event(req: HttpFacts, parts: Parts): Record<string, unknown> {
  const proxy = parts.rawPath.replace(/^\/+/, '');
  const resource = proxy ? '/{proxy+}' : '/';
  const headers: Record<string, string> = {};
  for (const [name, value] of parts.casedHeaders) headers[name] = value; // the last of repeated ones, as REST APIs do
  const query: Record<string, string> = {};
  for (const [name, value] of parts.query) query[name] = value;
  return {
    resource,
    path: parts.rawPath,
    httpMethod: req.method,
    headers,
    multiValueHeaders: multi(parts.casedHeaders),
    queryStringParameters: parts.query.length > 0 ? query : null,
    multiValueQueryStringParameters: parts.query.length > 0 ? multi(parts.query) : null,
    pathParameters: proxy ? { proxy: safeDecode(proxy) } : null,
    stageVariables: null,
    requestContext: {
      accountId: ACCOUNT_ID,
      apiId: API_ID,
      domainName: parts.host,
      domainPrefix: parts.host.split('.')[0],
      extendedRequestId: req.requestId,
      httpMethod: req.method,
      identity: { sourceIp: req.sourceIp, userAgent: parts.userAgent },
      path: parts.rawPath,
      protocol: 'HTTP/1.1',
      requestId: req.requestId,
      requestTime: clfTime(req.time),
      requestTimeEpoch: req.time,
      resourceId: API_ID,
      resourcePath: resource,
      stage: STAGE,
    },
    body: req.body.length > 0 ? bodyText(req, parts) : null,
    isBase64Encoded: parts.base64,
  };
}

/** Aether's first event's fields that payload 2.0 lacks: what today's handlers use keeps working by default. */
function convenienceFields(req: HttpFacts, parts: Parts): Record<string, unknown> {
  return {
    method: req.method,
    path: safeDecode(parts.rawPath),
    query: joined(parts.query, ','),
    rawQuery: parts.rawQuery,
    requestId: req.requestId,
  };
}

/** Aether's first event: `{method, path, rawPath, query, rawQuery, headers, body, isBase64Encoded, requestId}`. */
function aetherEvent(req: HttpFacts, parts: Parts): Record<string, unknown> {
  return {
    ...convenienceFields(req, parts),
    rawPath: parts.rawPath,
    headers: joined(parts.headers, ', '),
    body: bodyText(req, parts),
    isBase64Encoded: parts.base64,
  };
}

/** Payload 2.0: `{statusCode, ...}` as given; anything else is the body of a 200 application/json answer. */
function apigwV2Answer(result: unknown): HttpAnswer {
  if (!isStructured(result)) {
    if (result === undefined || result === null) return { status: 200, headers: {}, body: Buffer.alloc(0) };
    const body = typeof result === 'string' ? result : JSON.stringify(result);
    return { status: 200, headers: { 'content-type': 'application/json' }, body: Buffer.from(body) };
  }
  const answer = structured(result);
  const cookies = result.cookies;
  if (cookies !== undefined) {
    if (!Array.isArray(cookies) || !cookies.every((c) => typeof c === 'string'))
      throw new MalformedResult('cookies must be an array of strings');
    checkHeader('set-cookie', cookies);
    if (cookies.length > 0) answer.headers['set-cookie'] = [...toList(answer.headers['set-cookie']), ...cookies];
  }
  return answer;
}

/** Payload 1.0 (REST APIs): only `{statusCode, headers, multiValueHeaders, body, isBase64Encoded}` is an answer. */
function apigwV1Answer(result: unknown): HttpAnswer {
  if (!isStructured(result)) throw new MalformedResult('a REST API (payload 1.0) result must be an object with a statusCode');
  if (result.body !== undefined && result.body !== null && typeof result.body !== 'string') {
    throw new MalformedResult('body must be a string (JSON.stringify objects, base64-encode bytes)');
  }
  return structured(result);
}

/** Aether's first answers: `{statusCode,...}` as given; a string as text/plain; undefined as an empty 200; anything else as JSON. */
function aetherAnswer(result: unknown): HttpAnswer {
  if (isStructured(result)) {
    const answer = structured(result);
    if (Array.isArray(result.cookies) && result.cookies.length > 0) {
      answer.headers['set-cookie'] = result.cookies.map(String);
      checkHeader('set-cookie', answer.headers['set-cookie']);
    }
    return answer;
  }
  if (result === undefined || result === null) return { status: 200, headers: {}, body: Buffer.alloc(0) };
  if (typeof result === 'string')
    return { status: 200, headers: { 'content-type': 'text/plain; charset=utf-8' }, body: Buffer.from(result) };
  return json(200, result);
}

interface StructuredResult {
  statusCode: unknown;
  headers?: unknown;
  multiValueHeaders?: unknown;
  cookies?: unknown;
  body?: unknown;
  isBase64Encoded?: unknown;
}

function isStructured(result: unknown): result is StructuredResult {
  return typeof result === 'object' && result !== null && 'statusCode' in result;
}

/**
 * statusCode, headers and multiValueHeaders (merged: where both name a header, multiValueHeaders wins,
 * as API Gateway does), body (a string, base64 when isBase64Encoded; bytes as they are; other values as JSON).
 */
function structured(result: StructuredResult): HttpAnswer {
  const status = Number(result.statusCode);
  if (!Number.isInteger(status) || status < 100 || status > 599)
    throw new MalformedResult(`statusCode ${String(result.statusCode)} is not an HTTP status`);
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of entries(result.headers, 'headers')) {
    if (value !== undefined && value !== null) headers[name.toLowerCase()] = Array.isArray(value) ? value.map(String) : String(value);
  }
  const multiValue: Record<string, string[]> = {};
  for (const [name, values] of entries(result.multiValueHeaders, 'multiValueHeaders')) {
    if (!Array.isArray(values)) throw new MalformedResult(`multiValueHeaders.${name} must be an array`);
    (multiValue[name.toLowerCase()] ??= []).push(...values.map(String));
  }
  Object.assign(headers, multiValue);
  for (const [name, value] of Object.entries(headers)) checkHeader(name, value);
  let body: Buffer;
  const raw = result.body;
  if (raw === undefined || raw === null) body = Buffer.alloc(0);
  else if (typeof raw === 'string') body = Buffer.from(raw, result.isBase64Encoded === true ? 'base64' : 'utf8');
  else if (raw instanceof Uint8Array) body = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  else {
    body = Buffer.from(JSON.stringify(raw));
    headers['content-type'] ??= 'application/json';
  }
  return { status, headers, body };
}

function checkHeader(name: string, value: string | string[]): void {
  try {
    validateHeaderName(name);
    for (const v of toList(value)) validateHeaderValue(name, v);
  } catch (err) {
    throw new MalformedResult(`header ${JSON.stringify(name)}: ${(err as Error).message}`);
  }
}

function entries(value: unknown, field: string): Array<[string, unknown]> {
  if (value === undefined || value === null) return [];
  if (typeof value !== 'object' || Array.isArray(value)) throw new MalformedResult(`${field} must be an object`);
  return Object.entries(value);
}

function toList(value: string | string[] | undefined): string[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}

function json(status: number, value: unknown): HttpAnswer {
  return { status, headers: { 'content-type': 'application/json' }, body: Buffer.from(JSON.stringify(value)) };
}

function safeDecode(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** API Gateway's request time: `12/Mar/2020:19:03:58 +0000`. */
function clfTime(ms: number): string {
  const d = new Date(ms);
  const two = (n: number) => String(n).padStart(2, '0');
  return `${two(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} +0000`;
}
