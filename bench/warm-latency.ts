/**
 * Warm latency: sequential requests on one kept-alive connection, the function served directly by
 * node vs through Aether, in alternating rounds (A B A B) so that drift hits both alike.
 */
import { performance } from 'node:perf_hooks';
import { Client } from 'undici';
import { ratio, round, summarize, type Summary } from './stats.js';
import type { Setup } from './aether.js';
import type { Endpoint } from './endpoint.js';

export interface WarmLatencyRow {
  setup: Setup;
  driver: string;
  mode: string;
  aether: Summary;
  direct: Summary;
  /** Aether p50 - direct p50, ms. */
  overhead_p50_ms: number;
  overhead_p99_ms: number;
  ratio_p50: number;
}

export interface WarmOptions {
  warmup: number;
  rounds: number;
  perRound: number;
}

/** Latencies of `count` sequential requests: request sent -> whole body read. */
async function sequential(client: Client, path: string, count: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    const { statusCode, body } = await client.request({ method: 'GET', path });
    await body.dump();
    out.push(performance.now() - start);
    if (statusCode !== 200) throw new Error(`GET ${path} answered ${statusCode}`);
  }
  return out;
}

export async function measureWarmLatency(
  direct: Endpoint,
  aether: Endpoint,
  opts: WarmOptions,
): Promise<Omit<WarmLatencyRow, 'setup' | 'driver' | 'mode'>> {
  const client = (t: Endpoint) => new Client(t.origin, { pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  const clients = [client(direct), client(aether)] as const;
  try {
    const samples: [number[], number[]] = [[], []];
    await sequential(clients[0], direct.path, opts.warmup);
    await sequential(clients[1], aether.path, opts.warmup);
    for (let r = 0; r < opts.rounds; r++) {
      samples[0].push(...(await sequential(clients[0], direct.path, opts.perRound)));
      samples[1].push(...(await sequential(clients[1], aether.path, opts.perRound)));
    }
    const [d, a] = [summarize(samples[0]), summarize(samples[1])];
    return {
      aether: a,
      direct: d,
      overhead_p50_ms: round(a.p50 - d.p50),
      overhead_p99_ms: round(a.p99 - d.p99),
      ratio_p50: ratio(a.p50, d.p50),
    };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}
