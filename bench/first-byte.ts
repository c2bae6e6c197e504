/**
 * Time to first byte of one HTTP request on a fresh connection, measured on the raw socket (no client
 * library in between). A refused connection is retried: the server may still be starting, and that
 * wait is exactly what a cold start measurement wants to include.
 */
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';

const RETRY_MS = 1;

export interface FirstByte {
  /** From `since` (a performance.now() value) to the first byte of the response. */
  ms: number;
  status: number;
}

export function firstByte(port: number, path: string, since: number, timeoutMs: number): Promise<FirstByte> {
  return new Promise((resolve, reject) => {
    const deadline = since + timeoutMs;
    const attempt = () => {
      const socket = connect({ port, host: '127.0.0.1', noDelay: true });
      let firstAt = 0;
      let head = '';
      socket.setEncoding('latin1');
      socket.once('connect', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`));
      socket.on('data', (chunk: string) => {
        firstAt ||= performance.now();
        head += chunk;
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        socket.destroy();
        if (err.code === 'ECONNREFUSED' && performance.now() < deadline) setTimeout(attempt, RETRY_MS);
        else reject(err);
      });
      // Connection: close, so the whole (small) response has arrived once the server closes.
      socket.once('end', () => {
        socket.destroy();
        const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1]);
        if (!firstAt || !status) reject(new Error(`no HTTP response from port ${port}${path}: ${JSON.stringify(head.slice(0, 200))}`));
        else resolve({ ms: firstAt - since, status });
      });
      socket.setTimeout(Math.max(1, deadline - performance.now()), () =>
        socket.destroy(new Error(`no response from port ${port}${path} within ${timeoutMs} ms`)),
      );
    };
    attempt();
  });
}
