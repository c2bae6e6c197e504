/**
 * `--logs`: warm latency of one function while another prints as fast as it can, against the same
 * function's latency with nothing printing, in the same run (idle before and after the flood, A B A).
 * Also what became of the flood's lines: printed, kept, dropped by the per-function rate limit.
 *
 * A control phase runs the same function burning CPU without printing (its own 1-vcpu quota, as the
 * flood does): on a small host much of the flood's effect is that CPU, not logging, and the ratio
 * flood / spin tells the two apart.
 */
import { performance } from 'node:perf_hooks';
import { Client } from 'undici';
import type { AetherServer, Setup } from './aether.js';
import { functionFiles } from './functions.js';
import { ratio, summarize, type Summary } from './stats.js';

export interface LogFloodOptions {
  floodSeconds: number;
  /** The control phase: the same function spinning without output. */
  spinSeconds: number;
  /** Each of the two idle phases (before and after the flood). */
  idleSeconds: number;
  warmup: number;
}

export interface LogFloodRow {
  setup: Setup;
  driver: string;
  mode: 'handler';
  flood_seconds: number;
  idle: Summary;
  spin: Summary;
  flood: Summary;
  /** Under the flood / idle. */
  ratio_p50: number;
  ratio_p99: number;
  /** Under the flood / under the silent spin: what the logging itself costs. */
  ratio_spin_p50: number;
  lines_printed: number;
  /** Stored (stdout lines in the function's log). */
  lines_kept: number;
  /** Counted in the marker lines; kept + dropped = printed. */
  lines_dropped: number;
}

/**
 * Prints as fast as its stdout takes lines for `ms` (waiting only when the pipe is full: a printer
 * that never waits just queues its output in its own memory until it is killed for it), and answers
 * how many lines it printed. `silent=1`: the same loop building the same lines without printing them.
 */
const FLOOD = `
const { once } = require('events');
exports.handler = async (event) => {
  const end = Date.now() + Number(event.query.ms);
  const silent = Boolean(event.query.silent);
  let n = 0;
  let built = 0;
  while (Date.now() < end) {
    let full = false;
    for (let i = 0; i < 1000; i++) {
      const line = 'flood line ' + n++ + ' lorem ipsum dolor sit amet\\n';
      if (silent) built += line.length;
      else full = !process.stdout.write(line) || full;
    }
    if (full) await once(process.stdout, 'drain');
    else await new Promise((r) => setImmediate(r));
  }
  return { statusCode: 200, body: String(silent ? built : n) };
};`;

export async function measureLogFlood(aether: AetherServer, opts: LogFloodOptions, progress: (what: string) => void): Promise<LogFloodRow> {
  const hot = await aether.deploy({ name: 'hot', concurrency: 64, max_instances: 1, idle_timeout_s: 600 }, functionFiles('handler'));
  const floodFn = await aether.deploy(
    { name: 'flood', concurrency: 1, max_instances: 1, idle_timeout_s: 600, timeout_ms: (opts.floodSeconds + 60) * 1000 },
    { 'handler.js': FLOOD },
  );
  const client = (path: string) => ({
    path,
    http: new Client(aether.url, {
      pipelining: 1,
      keepAliveTimeout: 60_000,
      keepAliveMaxTimeout: 60_000,
      headersTimeout: 0,
      bodyTimeout: 0,
    }),
  });
  const hotClient = client(`/functions/${hot.name}/`);
  const floodClient = client(`/functions/${floodFn.name}/`);
  /** The hot function's latencies while the flood function runs with this query, and its answer. */
  const during = async (query: string) => {
    let running = true;
    const answer = get(floodClient, query).finally(() => (running = false));
    answer.catch(() => {}); // a failure surfaces below, once the latencies are in: not as an unhandled rejection
    const latencies = await sequentialFor(hotClient, () => !running);
    return { latencies, answer: Number(await answer) };
  };
  try {
    await get(floodClient, '?silent=1&ms=100'); // its cold start is not part of the flood
    await sequentialFor(hotClient, () => false, opts.warmup);

    progress(`logs: idle ${opts.idleSeconds} s`);
    const idle = await sequentialFor(hotClient, deadline(opts.idleSeconds));
    progress(`logs: the same function spinning without output ${opts.spinSeconds} s`);
    const spin = await during(`?silent=1&ms=${opts.spinSeconds * 1000}`);
    progress(`logs: flood ${opts.floodSeconds} s`);
    const flood = await during(`?ms=${opts.floodSeconds * 1000}`);
    progress(`logs: idle ${opts.idleSeconds} s`);
    idle.push(...(await sequentialFor(hotClient, deadline(opts.idleSeconds))));

    const { kept, dropped } = await countLines(aether, floodFn.id);
    const [i, s, f] = [summarize(idle), summarize(spin.latencies), summarize(flood.latencies)];
    return {
      setup: aether.setup,
      driver: aether.driver,
      mode: 'handler',
      flood_seconds: opts.floodSeconds,
      idle: i,
      spin: s,
      flood: f,
      ratio_p50: ratio(f.p50, i.p50),
      ratio_p99: ratio(f.p99, i.p99),
      ratio_spin_p50: ratio(f.p50, s.p50),
      lines_printed: flood.answer,
      lines_kept: kept,
      lines_dropped: dropped,
    };
  } finally {
    await Promise.all([hotClient.http.close(), floodClient.http.close()]);
  }
}

async function get(c: { path: string; http: Client }, query: string): Promise<string> {
  const { statusCode, body } = await c.http.request({ method: 'GET', path: c.path + query });
  const text = await body.text();
  if (statusCode !== 200) throw new Error(`GET ${c.path}${query} answered ${statusCode}: ${text}`);
  return text;
}

/** Sequential request latencies (sent -> whole body read) until `done()` or `count` requests. */
async function sequentialFor(c: { path: string; http: Client }, done: () => boolean, count = Number.POSITIVE_INFINITY): Promise<number[]> {
  const out: number[] = [];
  while (out.length < count && !done()) {
    const start = performance.now();
    await get(c, '');
    out.push(performance.now() - start);
  }
  return out;
}

function deadline(seconds: number): () => boolean {
  const end = performance.now() + seconds * 1000;
  return () => performance.now() >= end;
}

/** Lines of the flood kept in its log, and those dropped, from its marker lines (`… 12,345 lines dropped`). */
async function countLines(aether: AetherServer, fnId: string): Promise<{ kept: number; dropped: number }> {
  let kept = 0;
  let dropped = 0;
  let before: string | null = null;
  do {
    const page: { lines: { stream: string; event: string | null; message: string }[]; before: string | null } = await aether.api(
      'GET',
      `/api/functions/${fnId}/logs?limit=1000${before ? `&before=${before}` : ''}`,
    );
    for (const l of page.lines) {
      if (l.stream === 'stdout') kept++;
      if (l.event === 'dropped') dropped += Number(/^… ([\d,]+) lines/.exec(l.message)?.[1]?.replace(/,/g, '') ?? 0);
    }
    before = page.before;
  } while (before);
  return { kept, dropped };
}
