/**
 * The HTTP client behind the CLI: Aether's public API only (`/api/*` with the token, `/functions/*`
 * without it), so the same commands work against a single node and a cluster gateway. Every failure
 * becomes a CliError with an exit code and a one-line message that says what to do.
 */
import type { Readable } from 'node:stream';
import { type Dispatcher, request } from 'undici';
import { CliError, EXIT } from './exit.js';
import type { Target } from './target.js';

type Method = Dispatcher.HttpMethod;

export interface ApiErrorBody {
  error?: { code?: string; message?: string };
}

export class Client {
  constructor(readonly target: Target) {}

  get url(): string {
    return this.target.url;
  }

  /** A management call with a JSON body (if any) and a JSON answer (undefined for 204). */
  async json<T>(method: Method, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, {
      body: body === undefined ? undefined : JSON.stringify(body),
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
    });
    const text = await res.body.text();
    if (res.statusCode >= 400) throw this.apiError(res.statusCode, text);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** Like `json`, but undefined when the server answers 404 (e.g. "does this function exist yet?"). */
  async jsonOrMissing<T>(path: string): Promise<T | undefined> {
    const res = await this.send('GET', path, {});
    const text = await res.body.text();
    if (res.statusCode === 404) return undefined;
    if (res.statusCode >= 400) throw this.apiError(res.statusCode, text);
    return JSON.parse(text) as T;
  }

  /** A management call whose answer is read as a stream (uploads, Server-Sent Events); errors already thrown. */
  async stream(
    method: Method,
    path: string,
    opts: { body?: Readable; headers?: Record<string, string>; noTimeout?: boolean },
  ): Promise<Dispatcher.ResponseData> {
    const res = await this.send(method, path, opts);
    if (res.statusCode >= 400) throw this.apiError(res.statusCode, await res.body.text());
    return res;
  }

  /**
   * A request to the function itself (`/functions/{name}/...`). The management token is NOT sent:
   * the function receives the request's headers, and must never see it.
   */
  async invoke(
    name: string,
    path: string,
    opts: { method?: string; headers?: Record<string, string | string[]>; body?: string | Buffer | Readable },
  ): Promise<Dispatcher.ResponseData> {
    const sub = path.startsWith('/') ? path : `/${path}`;
    try {
      return await request(`${this.url}/functions/${encodeURIComponent(name)}${sub}`, {
        method: (opts.method ?? 'GET').toUpperCase() as Method,
        headers: opts.headers,
        body: opts.body,
        bodyTimeout: 0,
        headersTimeout: 0,
      });
    } catch (err) {
      throw this.networkError(err);
    }
  }

  private async send(
    method: Method,
    path: string,
    opts: { body?: string | Readable; headers?: Record<string, string>; noTimeout?: boolean },
  ): Promise<Dispatcher.ResponseData> {
    const { token, tokenSource } = this.target;
    if (!token) {
      throw new CliError(
        EXIT.auth,
        `no API token for ${this.url}: pass --token, set AETHER_TOKEN or run \`aether login ${this.url}\`` +
          ' (for an `aether serve` on this machine: run it where its data dir is, or set AETHER_DATA_DIR)',
      );
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await request(this.url + path, {
        method,
        headers: { authorization: `Bearer ${token}`, ...opts.headers },
        body: opts.body,
        ...(opts.noTimeout ? { bodyTimeout: 0 } : {}),
      });
    } catch (err) {
      throw this.networkError(err);
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump();
      throw new CliError(
        EXIT.auth,
        `${this.url} rejected the token from ${tokenSource}: pass the right one with --token or AETHER_TOKEN, or run \`aether login ${this.url}\``,
      );
    }
    return res;
  }

  /** The server's own error message, with the exit code its status means and a hint where one helps. */
  apiError(status: number, text: string): CliError {
    const message = apiErrorOf(text)?.message ?? `HTTP ${status} without an Aether error body (is ${this.url} an Aether server?)`;
    if (status === 404) return new CliError(EXIT.notFound, `${message} (\`aether ls\` lists the functions at ${this.url})`, status);
    if (status >= 500) return new CliError(EXIT.api, `${this.url} answered ${status}: ${message}`, status);
    return new CliError(EXIT.api, message, status);
  }

  private networkError(err: unknown): CliError {
    const e = err as { code?: string; message?: string; cause?: { code?: string } };
    const code = e.code ?? e.cause?.code ?? e.message;
    return new CliError(
      EXIT.unreachable,
      `cannot reach Aether at ${this.url} (${code}): start it with \`aether serve\`, or point to it with --url, AETHER_URL or \`aether login\``,
    );
  }
}

/** Aether's `{ error: { code, message } }` body, if that is what the text is. */
export function apiErrorOf(text: string): { code?: string; message: string } | undefined {
  try {
    const { error } = JSON.parse(text) as ApiErrorBody;
    return typeof error?.message === 'string' ? { code: error.code, message: error.message } : undefined;
  } catch {
    return undefined;
  }
}

/** A request id the client chooses; Aether keeps it in the invocation record (`request_id`). */
export const REQUEST_ID_HEADER = 'x-request-id';

/** `/api/functions/{name}` and below, with the name safe in the path. */
export const fnPath = (name: string, sub = '') => `/api/functions/${encodeURIComponent(name)}${sub}`;
