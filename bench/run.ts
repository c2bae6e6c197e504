/**
 * `npm run bench`: cold start, warm latency, throughput and a burst from zero of Aether against plain
 * node (a `node -e` spawn for cold starts, the same server directly, and nginx proxying to it), per
 * isolation driver, all in one run so that every ratio is against a baseline taken under the same
 * noise. Prints tables and PASS/MISS per target; writes the numbers as JSON.
 *
 *   --quick        fewer samples and shorter loads (a smoke run, not numbers to quote)
 *   --microvm      in a --quick run, also boot one microVM (a full run without --cluster boots 5)
 *   --cluster      bubblewrap only, single node next to a cluster (1 gateway + 1 worker on real etcd,
 *                  Redis and S3 started for the run), and how the cluster compares
 *   --apps         only the real apps' cold starts (Express, Fastify), per driver, with fast starts
 *                  (the default) and without (AETHER_FAST_START=0), and the trivial ones they compare to
 *   --proxy        warm latency, throughput and the burst per driver, with 5 cold starts as the
 *                  burst's reference; no real apps, no microVM
 *   --logs         bubblewrap single node only: warm latency of one function while another prints as
 *                  fast as it can for 30 s, as a ratio to the same function idle
 *   --json <file>  where to write the results (default bench/results/<ISO timestamp>.json)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { startServices } from '../test/helpers/services.js';
import { startCluster, startSingleNode, type AetherServer } from './aether.js';
import { type AppColdStartRow, measureAppColdStarts } from './app-cold-start.js';
import { measureBurst, type BurstRow } from './burst.js';
import { measureColdStarts, type ColdStartRow } from './cold-start.js';
import { compareClusterToSingle } from './compare.js';
import { startDirect, type DirectServer } from './direct.js';
import { functionFiles, MODES, type Mode } from './functions.js';
import { type LogFloodOptions, type LogFloodRow, measureLogFlood } from './log-flood.js';
import { startNginx } from './nginx.js';
import { measureMicroVm, type MicroVmRow } from './microvm.js';
import {
  appColdStartTable,
  burstTable,
  clusterTable,
  coldStartTable,
  logFloodTable,
  warmPoolTable,
  microVmTable,
  targetsTable,
  throughputTable,
  warmLatencyTable,
} from './report.js';
import { checkTargets } from './targets.js';
import { measureThroughput, type ThroughputOptions, type ThroughputRow } from './throughput.js';
import { measureWarmLatency, type WarmLatencyRow, type WarmOptions } from './warm-latency.js';
import { measureWarmPool, type WarmPoolOptions, type WarmPoolRow } from './warm-pool.js';

const DRIVERS = ['bwrap', 'gvisor'];
/** The cluster runs the fastest sandbox, so that what it shows is the cluster's own cost. */
const CLUSTER_DRIVER = 'bwrap';
/** The log flood runs on the fastest sandbox too: what it shows is the cost of logging, not of isolation. */
const LOGS_DRIVER = 'bwrap';

interface Plan {
  coldSamples: number;
  /** Per real app (Express, Fastify): each a fresh function. */
  appSamples: number;
  /** MicroVM boots (QEMU driver); 0 = not measured. */
  microVmSamples: number;
  warm: WarmOptions;
  throughput: ThroughputOptions;
  logFlood: LogFloodOptions;
  /** The warm pool scenario besides its cold starts (coldSamples of them). */
  pool: Omit<WarmPoolOptions, 'samples'>;
}

/**
 * 5 microVM boots: under TCG each takes 5-7 s plus its stop, so ~30 s on top of a 70-110 s run keeps
 * the default run under 3 minutes; with KVM they cost far less.
 */
const FULL: Plan = {
  coldSamples: 15,
  appSamples: 5,
  microVmSamples: 5,
  warm: { warmup: 300, rounds: 4, perRound: 500 },
  throughput: { warmupSeconds: 0.5, rounds: 2, seconds: 2 },
  logFlood: { floodSeconds: 30, spinSeconds: 10, idleSeconds: 10, warmup: 300 },
  pool: { idleWatchMs: 5000, warmRequests: 300 },
};
const QUICK: Plan = {
  coldSamples: 3,
  appSamples: 2,
  microVmSamples: 0,
  warm: { warmup: 50, rounds: 2, perRound: 100 },
  throughput: { warmupSeconds: 0.5, rounds: 1, seconds: 1 },
  logFlood: { floodSeconds: 5, spinSeconds: 2, idleSeconds: 2, warmup: 50 },
  pool: { idleWatchMs: 2000, warmRequests: 100 },
};

/**
 * The warm function: concurrency above the load's connections, so one instance can take them all and
 * no request waits in Aether's queue; Aether may still scale out if it decides to.
 */
const HOT_SPEC = { concurrency: 64, max_instances: 4, idle_timeout_s: 600 };

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    cluster: { type: 'boolean', default: false },
    microvm: { type: 'boolean', default: false },
    logs: { type: 'boolean', default: false },
    apps: { type: 'boolean', default: false },
    proxy: { type: 'boolean', default: false },
    json: { type: 'string' },
  },
});
/** --proxy: enough cold starts for the burst's reference (its p50), none of the rest of the cold-start story. */
const PROXY: Plan = { ...FULL, coldSamples: 5, appSamples: 0, microVmSamples: 0 };
const plan = args.quick ? { ...QUICK, microVmSamples: args.microvm ? 1 : 0 } : args.proxy ? PROXY : FULL;
const startedAt = new Date();
const t0 = performance.now();
const machine = {
  cpus: os.cpus().length,
  cpu_model: os.cpus()[0]?.model ?? 'unknown',
  memory_gb: Math.round(os.totalmem() / 2 ** 30),
  load_average_start: os.loadavg().map((l) => Number(l.toFixed(2))),
  node: process.version,
  kernel: os.release(),
};
console.log(
  `Aether bench ${startedAt.toISOString()}${args.quick ? ' (--quick: smoke run, few samples)' : ''}${args.cluster ? ' (--cluster: single node vs cluster, bwrap)' : ''}${args.logs ? ' (--logs: warm latency under a log flood, bwrap)' : ''}${args.apps ? ' (--apps: real-app cold starts only)' : ''}${args.proxy ? ' (--proxy: warm, throughput and burst; 5 cold starts)' : ''}`,
);
console.log(
  `machine: ${machine.cpus} cpus (${machine.cpu_model}), ${machine.memory_gb} GiB, load average at start ${machine.load_average_start.join(' ')}, node ${machine.node}, linux ${machine.kernel}`,
);

const cold: ColdStartRow[] = [];
const appCold: AppColdStartRow[] = [];
const warm: WarmLatencyRow[] = [];
const throughput: ThroughputRow[] = [];
const bursts: BurstRow[] = [];
const logFlood: LogFloodRow[] = [];
const pools: WarmPoolRow[] = [];
const NO_POOL = { AETHER_WARM_POOL_MB: '0' };
type Ran = { ran: boolean; reason?: string };
const drivers: Record<string, Ran> = {};
let cluster: Ran | undefined;
let microvm: (Ran & { cold_start?: MicroVmRow }) | undefined;

// --logs compares a function with itself (idle, under a flood), --apps has baselines of its own: no others.
const baselineModes = args.logs || args.apps ? [] : MODES;
const direct = new Map<Mode, DirectServer>();
const nginx = new Map<Mode, DirectServer>();
let nginxRan: Ran = args.logs || args.apps ? { ran: false, reason: `not needed by --${args.logs ? 'logs' : 'apps'}` } : { ran: true };
try {
  for (const mode of baselineModes) direct.set(mode, await startDirect(mode));
  try {
    for (const mode of baselineModes) nginx.set(mode, await startNginx(direct.get(mode)!.url));
  } catch (err) {
    nginxRan = { ran: false, reason: err instanceof Error ? err.message : String(err) };
    console.log(`\nno nginx baseline: ${nginxRan.reason}`);
  }
  for (const driver of args.logs ? [] : args.cluster ? [CLUSTER_DRIVER] : DRIVERS) {
    // Cold starts as they were before the warm pool (AETHER_WARM_POOL_MB=0), and from it after; --apps
    // measures the real apps with the pool, as a deployment runs them.
    drivers[driver] = await measure(driver, () => startSingleNode(driver, args.apps ? undefined : NO_POOL));
    if (args.apps) await measure(`${driver}, no fast start`, () => startSingleNode(driver, { AETHER_FAST_START: '0' }), true);
    if (!args.apps && !args.proxy && !args.cluster && drivers[driver]?.ran) await poolScenario(driver);
  }
  if (args.cluster) {
    progress('cluster: starting etcd, Redis and S3');
    const services = await startServices();
    try {
      cluster = await measure(`cluster ${CLUSTER_DRIVER}`, () => startCluster(CLUSTER_DRIVER, services));
    } finally {
      await services.stop();
    }
  }
} finally {
  await Promise.all([...direct.values(), ...nginx.values()].map((d) => d.stop()));
}
if (args.logs) drivers[LOGS_DRIVER] = await floodScenario();

// After the sandboxes, with the baseline servers gone: a microVM boot wants every cycle it can get.
if (plan.microVmSamples > 0 && !args.cluster && !args.logs && !args.apps) {
  progress(`microvm: ${plan.microVmSamples} cold boots of the qemu driver`);
  microvm = await measureMicroVm(plan.microVmSamples, progress).then(
    (row) => ({ ran: true, cold_start: row }),
    (err: unknown) => {
      const reason = err instanceof Error ? err.message : String(err);
      console.log(`\nmicrovm not measured: ${reason}`);
      return { ran: false, reason };
    },
  );
}

/** Every measurement of one Aether set-up, or why it could not start (`appsOnly`: just the real apps). */
async function measure(label: string, start: () => Promise<AetherServer>, appsOnly = false): Promise<Ran> {
  let aether: AetherServer;
  try {
    aether = await start();
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    console.log(`\nskipping ${label}: Aether does not start: ${reason}`);
    return { ran: false, reason };
  }
  const row = { setup: aether.setup, driver: aether.driver };
  try {
    if (!appsOnly) {
      progress(`${label}: cold starts (${plan.coldSamples} per mode)`);
      cold.push(...(await measureColdStarts(aether, plan.coldSamples)));
    }
    if (plan.appSamples > 0) {
      progress(`${label}: real-app cold starts (${plan.appSamples} per app)`);
      appCold.push(...(await measureAppColdStarts(aether, plan.appSamples)));
    }
    if (args.apps) return { ran: true };
    for (const mode of MODES) {
      const fn = await aether.deploy({ name: `hot-${mode}`, ...HOT_SPEC }, functionFiles(mode));
      const viaAether = { origin: aether.url, path: `/functions/${fn.name}/` };
      const plain = { origin: direct.get(mode)!.url, path: '/' };
      const proxied = nginx.get(mode) && { origin: nginx.get(mode)!.url, path: '/' };
      progress(`${label}: ${mode} warm latency`);
      warm.push({ ...row, mode, ...(await measureWarmLatency(plain, viaAether, plan.warm)) });
      progress(`${label}: ${mode} throughput`);
      throughput.push({ ...row, mode, ...(await measureThroughput(plain, proxied, viaAether, aether, fn.id, plan.throughput)) });
    }
    progress(`${label}: burst of 200 requests at once from zero`);
    bursts.push(await measureBurst(aether));
  } finally {
    await aether.stop();
  }
  return { ran: true };
}

/** The warm pool's cold starts, idle cost and warm latency during a refill, on a single node with the default pool. */
async function poolScenario(driver: string): Promise<void> {
  let aether: AetherServer;
  try {
    aether = await startSingleNode(driver);
  } catch (err) {
    console.log(`\nskipping the warm pool on ${driver}: Aether does not start: ${err instanceof Error ? err.message : String(err)}`);
    return;
  }
  try {
    pools.push(await measureWarmPool(aether, { samples: plan.coldSamples, ...plan.pool }, progress));
  } finally {
    await aether.stop();
  }
}

/** The --logs scenario on its own single node: nothing else runs meanwhile. */
async function floodScenario(): Promise<Ran> {
  let aether: AetherServer;
  try {
    aether = await startSingleNode(LOGS_DRIVER, NO_POOL);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    console.log(`\nskipping the log flood: Aether does not start: ${reason}`);
    return { ran: false, reason };
  }
  try {
    logFlood.push(await measureLogFlood(aether, plan.logFlood, progress));
  } finally {
    await aether.stop();
  }
  return { ran: true };
}

const targets = checkTargets(cold, warm, throughput, bursts, logFlood, appCold, microvm?.cold_start, pools);
const results = {
  started_at: startedAt.toISOString(),
  duration_s: Math.round((performance.now() - t0) / 100) / 10,
  quick: args.quick,
  machine: { ...machine, load_average_end: os.loadavg().map((l) => Number(l.toFixed(2))) },
  drivers,
  nginx: nginxRan,
  ...(microvm && { microvm }),
  ...(cluster && { cluster, cluster_vs_single: compareClusterToSingle(cold, warm, throughput) }),
  cold_start: cold,
  app_cold_start: appCold,
  warm_latency: warm,
  throughput,
  burst: bursts,
  ...(logFlood.length && { log_flood: logFlood }),
  ...(pools.length && { warm_pool: pools }),
  targets,
};

if (cold.length) console.log(coldStartTable(cold));
if (appCold.length) console.log(appColdStartTable(appCold, cold));
if (microvm?.cold_start) console.log(microVmTable(microvm.cold_start));
if (warm.length) console.log(warmLatencyTable(warm));
if (throughput.length) console.log(throughputTable(throughput));
if (bursts.length) console.log(burstTable(bursts));
if (results.cluster_vs_single?.length) console.log(clusterTable(results.cluster_vs_single));
if (logFlood.length) console.log(logFloodTable(logFlood));
if (pools.length) console.log(warmPoolTable(pools));
console.log(targetsTable(targets));

const out = args.json ?? path.join(import.meta.dirname, 'results', `${startedAt.toISOString().replace(/[-:]|\.\d+/g, '')}.json`);
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
console.log(
  `\n${targets.filter((t) => t.pass).length}/${targets.length} targets met; ${results.duration_s} s; results in ${path.relative(process.cwd(), out)}`,
);

function progress(what: string): void {
  console.error(`[bench ${((performance.now() - t0) / 1000).toFixed(0).padStart(3)} s] ${what}`);
}
