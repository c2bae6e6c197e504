/**
 * Firecracker's HTTP API over its Unix socket (the spec: firecracker-api.yaml). Success is 204 (200
 * with a body for GETs); a refused call is 4xx/5xx with `{ "fault_message": ... }`, which becomes
 * the message of a FirecrackerFault so that a start error says what Firecracker objected to.
 */
import { request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export class FirecrackerFault extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly faultMessage: string,
  ) {
    super(`${method} ${path}: ${status} ${faultMessage}`);
    this.name = 'FirecrackerFault';
  }
}

export class FirecrackerApi {
  constructor(readonly socketPath: string) {}

  put(path: string, body: unknown): Promise<void> {
    return this.call('PUT', path, body).then(() => undefined);
  }

  patch(path: string, body: unknown): Promise<void> {
    return this.call('PATCH', path, body).then(() => undefined);
  }

  async get<T>(path: string): Promise<T> {
    return JSON.parse(await this.call('GET', path)) as T;
  }

  /** Polls until the socket answers `GET /` (Firecracker binds it within milliseconds of starting). */
  async waitUntilUp(timeoutMs: number, gone: () => boolean): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.get('/');
        return;
      } catch (err) {
        if (err instanceof FirecrackerFault) throw err;
        if (gone()) throw new Error('firecracker exited before its API socket came up');
        if (Date.now() > end) throw new Error(`firecracker's API socket ${this.socketPath} did not come up within ${timeoutMs} ms`);
        await sleep(10);
      }
    }
  }

  private call(method: string, path: string, body?: unknown): Promise<string> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: {
            accept: 'application/json',
            ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolve(text);
            let fault = text;
            try {
              fault = (JSON.parse(text) as { fault_message?: string }).fault_message ?? text;
            } catch {
              // not JSON: the raw body is the best description there is
            }
            reject(new FirecrackerFault(method, path, status, fault));
          });
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  }
}
