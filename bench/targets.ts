/**
 * The performance targets of issue 10, checked against the measured numbers (nothing here is assumed),
 * as ratios against the baselines measured in the same run where the target is one: cold start vs a
 * bare `node -e` spawn, throughput vs nginx proxying to the same node server, warm overhead over direct
 * node, a burst's p99 vs the single cold start; cold starts from the warm pool, and without it. A
 * cluster is held to the same targets as a single node.
 */
import type { Setup } from './aether.js';
import type { AppColdStartRow } from './app-cold-start.js';
import type { BurstRow } from './burst.js';
import type { ColdStartRow } from './cold-start.js';
import type { LogFloodRow } from './log-flood.js';
import type { MicroVmRow } from './microvm.js';
import type { ThroughputRow } from './throughput.js';
import type { WarmPoolRow } from './warm-pool.js';
import type { WarmLatencyRow } from './warm-latency.js';

export interface TargetCheck {
  target: string;
  setup: Setup | '-';
  driver: string;
  mode: string;
  /** null: not measured (`note` says why). */
  value: number | null;
  limit: number;
  /** How value must compare to limit. */
  must: '<=' | '>=';
  unit: string;
  pass: boolean;
  note?: string;
}

type Row = { setup: Setup; driver: string; mode: string };

function check(target: string, row: Row, value: number | null, must: '<=' | '>=', limit: number, unit: string, note?: string): TargetCheck {
  const pass = value !== null && (must === '<=' ? value <= limit : value >= limit);
  return { target, setup: row.setup, driver: row.driver, mode: row.mode, value, limit, must, unit, pass, ...(note && { note }) };
}

/** Cold start without a pool: bubblewrap against the `node -e` baseline, gVisor in absolute terms. */
function coldStart(r: ColdStartRow): TargetCheck[] {
  if (r.driver === 'bwrap') return [check('cold start p50 vs node -e, no pool', r, r.ratio_p50, '<=', 1.1, 'x')];
  if (r.driver === 'gvisor') return [check('cold start p50, no pool', r, r.aether.p50, '<=', 450, 'ms')];
  return [];
}

/** Throughput at 50 connections against nginx -> the same node server. */
const THROUGHPUT_VS_NGINX: Record<string, Record<string, number>> = {
  bwrap: { handler: 1.0, server: 0.8 },
  gvisor: { handler: 0.5, server: 0.5 },
};

function throughputVsNginx(r: ThroughputRow): TargetCheck[] {
  const limit = THROUGHPUT_VS_NGINX[r.driver]?.[r.mode];
  if (limit === undefined) return [];
  return [
    check('throughput vs nginx->node', r, r.ratio_vs_nginx, '>=', limit, 'x', r.ratio_vs_nginx === null ? 'nginx did not run' : undefined),
  ];
}

function warmOverhead(r: WarmLatencyRow): TargetCheck[] {
  if (r.driver !== 'bwrap') return [];
  return [
    check('warm overhead p50 over direct', r, r.overhead_p50_ms, '<=', 0.3, 'ms'),
    check('warm overhead p99 over direct', r, r.overhead_p99_ms, '<=', 1, 'ms'),
  ];
}

/** 200 at once from zero: all succeed, p99 within 3 x the single cold start (handler mode, same set-up). */
function burst(r: BurstRow, cold: ColdStartRow[]): TargetCheck[] {
  const single = cold.find((c) => c.setup === r.setup && c.driver === r.driver && c.mode === r.mode);
  const times = single ? Math.round((r.latency.p99 / single.aether.p50) * 100) / 100 : null;
  return [
    check(`burst of ${r.requests}: failed requests`, r, r.failures, '<=', 0, ''),
    check('burst p99 vs single cold start p50', r, times, '<=', 3, 'x', single ? undefined : 'no single cold start measured'),
  ];
}

/** Issue 8: another function printing as fast as it can costs a warm request at most 20 % of its idle latency. */
function logFlood(r: LogFloodRow): TargetCheck[] {
  return [check('warm p50 under a log flood vs idle', r, r.ratio_p50, '<=', 1.2, 'x')];
}

/** Issue 10: a real Express / Fastify app, function never run, starts within these (ms, p50). */
const APP_COLD_START_MS: Record<string, number> = { bwrap: 100, gvisor: 250 };

function appColdStart(r: AppColdStartRow): TargetCheck[] {
  const limit = APP_COLD_START_MS[r.driver];
  if (limit === undefined) return [];
  return [check(`cold start p50, ${r.app} app`, { ...r, mode: r.start_mode }, r.aether.p50, '<=', limit, 'ms')];
}

/** QEMU (TCG here) from a snapshot, a function never run, to its first response byte. */
function microVmSnapshot(r: MicroVmRow | undefined): TargetCheck[] {
  const row = { setup: 'single' as Setup, driver: 'qemu', mode: r?.mode ?? 'handler' };
  const note = !r ? 'microVMs not measured in this run' : r.snapshot ? `${r.accel}` : `no snapshot: ${r.snapshot_error}`;
  return [check('microVM cold start p50 from snapshot', row, r?.snapshot?.cold_start.p50 ?? null, '<=', 1000, 'ms', note)];
}

/** Cold starts from the warm pool: bubblewrap absolute and against `node -e`, gVisor absolute. */
function fromPool(r: WarmPoolRow): TargetCheck[] {
  const row = { ...r, mode: 'handler' };
  if (r.driver === 'bwrap')
    return [
      check('cold start p50 from pool', row, r.cold_from_pool.p50, '<=', 25, 'ms'),
      check('cold start p50 from pool vs node -e', row, r.ratio_p50, '<=', 0.3, 'x'),
    ];
  if (r.driver === 'gvisor') return [check('cold start p50 from pool', row, r.cold_from_pool.p50, '<=', 60, 'ms')];
  return [];
}

export function checkTargets(
  cold: ColdStartRow[],
  warm: WarmLatencyRow[],
  throughput: ThroughputRow[],
  bursts: BurstRow[],
  floods: LogFloodRow[] = [],
  apps: AppColdStartRow[] = [],
  microvm?: MicroVmRow,
  pools: WarmPoolRow[] = [],
): TargetCheck[] {
  return [
    ...cold.flatMap(coldStart),
    ...throughput.flatMap(throughputVsNginx),
    ...warm.flatMap(warmOverhead),
    ...bursts.flatMap((b) => burst(b, cold)),
    ...floods.flatMap(logFlood),
    ...apps.flatMap(appColdStart),
    ...microVmSnapshot(microvm),
    ...pools.flatMap(fromPool),
  ];
}
