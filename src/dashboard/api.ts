/**
 * The dashboard's side of the public HTTP API: the token (kept in sessionStorage, sent as a bearer
 * header, never in a URL), JSON calls, code uploads with progress, and following a function's logs.
 */
import { EventSourceParserStream } from 'eventsource-parser/stream';
import type { InvocationStats } from '../core/invocation-stats.js';
import type { LogLine } from '../core/logs.js';
import type { WorkerInfo } from '../core/ports.js';
import type { FunctionView, InstanceInfo, InvocationRecord } from '../core/types.js';
import type { SystemInfo } from '../adapters/http/schemas.js';

export type { FunctionView, InstanceInfo, InvocationRecord, InvocationStats, LogLine, SystemInfo, WorkerInfo };

const TOKEN_KEY = 'aether-token';

export const token = {
  get: (): string | null => sessionStorage.getItem(TOKEN_KEY),
  set: (value: string) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An error answer of the API: its `{error: {code, message}}`, or what went wrong on the way. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Called when the API rejects the token: the app goes back to the login form. */
let onUnauthorized: (message: string) => void = () => {};
export const whenUnauthorized = (fn: (message: string) => void) => (onUnauthorized = fn);

const authHeaders = (t = token.get()): Record<string, string> => (t ? { authorization: `Bearer ${t}` } : {});

async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text();
  try {
    const { error } = JSON.parse(text) as { error: { code: string; message: string } };
    return new ApiError(res.status, error.code, error.message);
  } catch {
    return new ApiError(res.status, 'http_error', `HTTP ${res.status}${text ? `: ${text.slice(0, 200)}` : ''}`);
  }
}

/** A JSON call to /api; a rejected token logs out. `given`: a token to try instead of the stored one (login). */
export async function api<T>(method: string, path: string, body?: unknown, given?: string): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: { ...authHeaders(given ?? token.get()), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401 && given === undefined) onUnauthorized(err.message);
    throw err;
  }
  return (res.status === 204 ? undefined : await res.json()) as T;
}

export const fnPath = (name: string) => `/api/functions/${encodeURIComponent(name)}`;

/** Uploads an archive as the function's code; XMLHttpRequest, since fetch cannot report upload progress. */
export function uploadCode(
  name: string,
  file: File,
  onProgress: (fraction: number) => void,
): Promise<{ code_hash: string; code_size: number; version: number }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${fnPath(name)}/code`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.upload.onload = () => onProgress(1); // all sent; the server checks and stores it before answering
    xhr.onerror = () => reject(new ApiError(0, 'network_error', 'the upload failed: the server could not be reached'));
    xhr.onload = () => {
      if (xhr.status === 200) return resolve(JSON.parse(xhr.responseText));
      const err = errorOf(new Response(xhr.responseText, { status: xhr.status }));
      err.then((e) => {
        if (xhr.status === 401) onUnauthorized(e.message);
        reject(e);
      }, reject);
    };
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
}

/**
 * Follows the function's log lines until `signal` aborts: the last `backlog` lines first, then new ones
 * as Server-Sent Events. EventSource cannot send the token header, so the stream is read with fetch;
 * a dropped stream is resumed from the last line seen.
 */
export async function followLogs(name: string, backlog: number, onLines: (lines: LogLine[]) => void, signal: AbortSignal): Promise<void> {
  const started = Date.now();
  const page = await api<{ lines: LogLine[]; after: string | null }>('GET', `${fnPath(name)}/logs?limit=${backlog}`);
  onLines(page.lines);
  let from = page.after ? `after=${encodeURIComponent(page.after)}` : `since=${started}`;
  while (!signal.aborted) {
    try {
      const res = await fetch(`${fnPath(name)}/logs?follow=1&${from}`, { headers: authHeaders(), signal });
      if (!res.ok || !res.body) throw await errorOf(res);
      const events = res.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
      for await (const event of events) {
        onLines([JSON.parse(event.data) as LogLine]);
        if (event.id) from = `after=${encodeURIComponent(event.id)}`;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status !== 503) {
        if (err.status === 401) onUnauthorized(err.message);
        throw err;
      }
    }
    await new Promise((r) => setTimeout(r, 1000)); // then resume where the stream stopped
  }
}
