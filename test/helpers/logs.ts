/** Reading function logs the way users do: the JSON API, and `?follow=1` through a real EventSource client. */
import { EventSource } from 'eventsource';
import type { LogLine } from '../../src/core/logs.js';
import { TOKEN, type Aether } from './aether.ts';
import { until } from './wait.ts';

export type { LogLine };

/** All lines of a function matching the query (one page of up to 1000). */
export async function logLines(a: Pick<Aether, 'api'>, name: string, query = ''): Promise<LogLine[]> {
  const res = await a.api('GET', `/api/functions/${name}/logs?limit=1000${query ? `&${query}` : ''}`);
  if (res.status !== 200) throw new Error(`logs answered ${res.status}: ${JSON.stringify(res.body)}`);
  return res.body.lines;
}

/** Waits until the function's lines satisfy `cond`; returns them. */
export async function waitForLines(
  a: Pick<Aether, 'api'>,
  name: string,
  cond: (lines: LogLine[]) => boolean,
  what: string,
  query = '',
  timeoutMs = 10_000,
): Promise<LogLine[]> {
  let lines: LogLine[] = [];
  await until(
    async () => {
      lines = await logLines(a, name, query);
      return cond(lines);
    },
    timeoutMs,
    what,
  );
  return lines;
}

export interface Follower {
  lines: LogLine[];
  /** Resolves once the lines received satisfy `cond`. */
  waitFor(cond: (lines: LogLine[]) => boolean, what: string, timeoutMs?: number): Promise<LogLine[]>;
  close(): void;
}

/** Follows a function's logs over Server-Sent Events; resolves once the stream is open. */
export async function followLogs(url: string, name: string, query = ''): Promise<Follower> {
  const lines: LogLine[] = [];
  const es = new EventSource(`${url}/api/functions/${name}/logs?follow=1${query ? `&${query}` : ''}`, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init?.headers, authorization: `Bearer ${TOKEN}` } }),
  });
  es.onmessage = (ev) => lines.push(JSON.parse(ev.data) as LogLine);
  await new Promise<void>((resolve, reject) => {
    es.onopen = () => resolve();
    es.onerror = (err) => reject(new Error(`log stream failed: ${err.code ?? ''} ${err.message ?? ''}`));
  });
  es.onerror = null;
  return {
    lines,
    async waitFor(cond, what, timeoutMs = 10_000) {
      await until(async () => cond(lines), timeoutMs, what, 20);
      return lines;
    },
    close: () => es.close(),
  };
}
