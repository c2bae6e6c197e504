/**
 * Throughput under 50 concurrent connections (autocannon): directly, through nginx in front of the
 * same node server (the proxy baseline), and through Aether, in alternating rounds after a warm-up of
 * each. Only 2xx answers count. While Aether is loaded the
 * function's instances are sampled, to report how far it scaled.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import autocannon from 'autocannon';
import type { AetherServer, Setup } from './aether.js';
import type { Endpoint } from './endpoint.js';
import { ratio } from './stats.js';

const CONNECTIONS = 50;
const INSTANCE_POLL_MS = 200;

export interface ThroughputRow {
  setup: Setup;
  driver: string;
  mode: string;
  connections: number;
  seconds_each: number;
  aether_rps: number;
  direct_rps: number;
  /** nginx -> the same direct server; null when nginx could not run (see the run's `nginx`). */
  nginx_rps: number | null;
  /** aether / direct. */
  ratio: number;
  /** aether / nginx: the number the throughput targets judge. */
  ratio_vs_nginx: number | null;
  /** Most instances of the function seen while Aether was under load. */
  aether_instances: number;
  /** Connection errors, timeouts and non-2xx answers, per side. */
  aether_failures: number;
  direct_failures: number;
  nginx_failures: number | null;
}

export interface ThroughputOptions {
  warmupSeconds: number;
  rounds: number;
  seconds: number;
}

interface Tally {
  ok: number;
  failures: number;
  seconds: number;
}

async function load(e: Endpoint, seconds: number, tally?: Tally): Promise<void> {
  const r = await autocannon({ url: e.origin + e.path, connections: CONNECTIONS, duration: seconds });
  if (!tally) return;
  tally.ok += r['2xx'];
  tally.failures += r.errors + r.timeouts + r.non2xx;
  tally.seconds += r.duration;
}

/** Runs `work` while polling the function's instance count; resolves with the highest count seen. */
async function peakInstances(aether: AetherServer, fnId: string, work: Promise<void>): Promise<number> {
  let peak = 0;
  let done = false;
  const poll = (async () => {
    while (!done) {
      peak = Math.max(peak, (await aether.instances(fnId)).filter((i) => i.state === 'ready').length);
      await sleep(INSTANCE_POLL_MS);
    }
  })();
  try {
    await work;
  } finally {
    done = true;
    await poll;
  }
  return peak;
}

export async function measureThroughput(
  direct: Endpoint,
  nginx: Endpoint | undefined,
  viaAether: Endpoint,
  aether: AetherServer,
  fnId: string,
  opts: ThroughputOptions,
): Promise<Omit<ThroughputRow, 'setup' | 'driver' | 'mode'>> {
  await load(direct, opts.warmupSeconds);
  if (nginx) await load(nginx, opts.warmupSeconds);
  await load(viaAether, opts.warmupSeconds);
  const d: Tally = { ok: 0, failures: 0, seconds: 0 };
  const n: Tally = { ok: 0, failures: 0, seconds: 0 };
  const a: Tally = { ok: 0, failures: 0, seconds: 0 };
  let instances = 0;
  for (let r = 0; r < opts.rounds; r++) {
    await load(direct, opts.seconds, d);
    if (nginx) await load(nginx, opts.seconds, n);
    instances = Math.max(instances, await peakInstances(aether, fnId, load(viaAether, opts.seconds, a)));
  }
  const rps = (t: Tally) => Math.round(t.ok / t.seconds);
  return {
    connections: CONNECTIONS,
    seconds_each: opts.rounds * opts.seconds,
    aether_rps: rps(a),
    direct_rps: rps(d),
    nginx_rps: nginx ? rps(n) : null,
    ratio: ratio(rps(a), rps(d)),
    ratio_vs_nginx: nginx ? ratio(rps(a), rps(n)) : null,
    aether_instances: instances,
    aether_failures: a.failures,
    direct_failures: d.failures,
    nginx_failures: nginx ? n.failures : null,
  };
}
