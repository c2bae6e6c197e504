/**
 * The warm pool (issue 10): cold starts of functions never run that take a pre-started instance, against
 * a `node -e` spawn in the same rounds; what an idle pooled instance costs (memory charged to it, CPU
 * it uses while it waits, from GET /api/system); and the warm latency of a running function while the
 * pool refills after a burst of cold starts, against the same function with the pool full and idle.
 */
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'undici';
import type { AetherServer, Setup } from './aether.js';
import { directColdStart } from './direct.js';
import { firstByte } from './first-byte.js';
import { functionFiles } from './functions.js';
import { ratio, round, summarize, type Summary } from './stats.js';

const TIMEOUT_MS = 30_000;
const REFILL_TIMEOUT_MS = 60_000;
const POLL_MS = 20;
/** Cold starts fired at once to drain the pool before the warm-during-refill phase. */
const DRAIN = 4;
const MEMORY_MB = 128;

export interface WarmPoolOptions {
  /** Cold starts from the pool. */
  samples: number;
  /** How long the idle pool's CPU use is watched. */
  idleWatchMs: number;
  /** Sequential warm requests per phase (idle pool, refilling). */
  warmRequests: number;
}

export interface WarmPoolRow {
  setup: Setup;
  driver: string;
  /** Client side: request sent -> first response byte, each the first request to a new function. */
  cold_from_pool: Summary;
  /** Of that, Aether's "instance ready" time: assigning the pooled instance until its agent dialed in. */
  instance_start: Summary;
  node: Summary;
  ratio_p50: number;
  /** Per idle pooled instance. */
  idle_memory_mb: number;
  idle_cpu_percent: number;
  idle_instances: number;
  /** Sequential warm requests to a running function: pool full and idle, then while it refills. */
  warm_idle_pool: Summary;
  warm_during_refill: Summary;
  /** Pre-starts running or pending when the refill phase began and when it ended. */
  refill_pending: { at_start: number; at_end: number };
  load_average: number;
}

interface PoolStatus {
  sizes: Array<{ memory_mb: number; idle: number; target: number }>;
  starting: number;
  hits: number;
  idle_memory_bytes: number;
  idle_cpu_ms: number;
}

export async function measureWarmPool(
  aether: AetherServer,
  { samples, idleWatchMs, warmRequests }: WarmPoolOptions,
  progress: (what: string) => void,
): Promise<WarmPoolRow> {
  const pool = async () => {
    const status = (await aether.api<{ warm_pool?: PoolStatus }>('GET', '/api/system')).warm_pool;
    if (!status) throw new Error('this Aether has no warm pool');
    return status;
  };
  const size = (s: PoolStatus) => s.sizes.find((x) => x.memory_mb === MEMORY_MB) ?? { idle: 0, target: 0 };
  const full = async () => {
    const end = Date.now() + REFILL_TIMEOUT_MS;
    for (;;) {
      const s = await pool();
      if (s.starting === 0 && size(s).idle >= Math.max(1, size(s).target)) return s;
      if (Date.now() > end) throw new Error(`the warm pool did not refill within ${REFILL_TIMEOUT_MS} ms: ${JSON.stringify(s)}`);
      await sleep(POLL_MS);
    }
  };

  progress(`${aether.driver} warm pool: ${samples} cold starts from the pool`);
  const coldMs: number[] = [];
  const startMs: number[] = [];
  const nodeMs: number[] = [];
  for (let i = 0; i < samples; i++) {
    const fn = await aether.deploy({ name: `pooled-${i}`, concurrency: 1, max_instances: 1 }, functionFiles('handler'));
    nodeMs.push(await directColdStart('handler'));
    await full();
    const hits = (await pool()).hits;
    const { ms, status } = await firstByte(aether.port, `/functions/${fn.name}/`, performance.now(), TIMEOUT_MS);
    if (status !== 200) throw new Error(`cold request to ${fn.name} answered ${status}`);
    const [inst] = await aether.api<Array<{ id: string; prewarmed: boolean }>>('GET', `/api/functions/${fn.id}/instances`);
    if (!inst?.prewarmed || (await pool()).hits !== hits + 1)
      throw new Error(`the cold start of ${fn.name} did not take a pooled instance`);
    coldMs.push(ms);
    startMs.push(await aether.startMs(inst.id));
    await aether.remove([fn.id]);
  }

  progress(`${aether.driver} warm pool: idle cost`);
  // Watched again if the pool changed meanwhile (an instance trimmed as demand aged out): the same instances at both ends.
  let before: PoolStatus;
  let after: PoolStatus;
  let watchedMs: number;
  let tries = 0;
  do {
    before = await full();
    const t0 = performance.now();
    await sleep(idleWatchMs);
    after = await pool();
    watchedMs = performance.now() - t0;
  } while ((size(after).idle !== size(before).idle || after.hits !== before.hits) && ++tries < 3);
  const idle = size(after).idle;
  const cpuPercent = idle > 0 ? ((after.idle_cpu_ms - before.idle_cpu_ms) / watchedMs / idle) * 100 : Number.NaN;

  progress(`${aether.driver} warm pool: warm latency while it refills`);
  const hot = await aether.deploy({ name: 'pool-hot', concurrency: 64, idle_timeout_s: 600 }, functionFiles('handler'));
  const client = new Client(aether.url, { pipelining: 1 });
  try {
    await sequential(client, `/functions/${hot.name}/`, 100); // warm-up, and its instance
    await full();
    const warmIdle = await sequential(client, `/functions/${hot.name}/`, warmRequests);
    const drained = await Promise.all(
      Array.from({ length: DRAIN }, (_, i) => aether.deploy({ name: `drain-${i}`, concurrency: 1 }, functionFiles('handler'))),
    );
    await Promise.all(drained.map((fn) => firstByte(aether.port, `/functions/${fn.name}/`, performance.now(), TIMEOUT_MS)));
    const pending = (s: PoolStatus) => s.starting + Math.max(0, size(s).target - size(s).idle);
    const atStart = pending(await pool());
    const duringRefill = await sequential(client, `/functions/${hot.name}/`, warmRequests);
    const atEnd = pending(await pool());
    await aether.remove([hot.id, ...drained.map((fn) => fn.id)]);
    const cold = summarize(coldMs);
    const node = summarize(nodeMs);
    return {
      setup: aether.setup,
      driver: aether.driver,
      cold_from_pool: cold,
      instance_start: summarize(startMs),
      node,
      ratio_p50: ratio(cold.p50, node.p50),
      idle_memory_mb: idle > 0 ? round(after.idle_memory_bytes / idle / 2 ** 20) : NaN,
      idle_cpu_percent: round(cpuPercent),
      idle_instances: idle,
      warm_idle_pool: summarize(warmIdle),
      warm_during_refill: summarize(duringRefill),
      refill_pending: { at_start: atStart, at_end: atEnd },
      load_average: os.loadavg()[0]!,
    };
  } finally {
    await client.close();
  }
}

/** Latencies of `count` sequential requests on one kept-alive connection: sent -> whole body read. */
async function sequential(client: Client, path: string, count: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    const res = await client.request({ path, method: 'GET' });
    await res.body.text();
    if (res.statusCode !== 200) throw new Error(`warm request answered ${res.statusCode}`);
    out.push(performance.now() - t);
  }
  return out;
}
