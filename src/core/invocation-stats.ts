/**
 * A function's recent traffic from its invocation records: request rate, errors and latency
 * percentiles in fixed time buckets, for the dashboard's charts. Pure: records and the clock in,
 * numbers out. Stores keep only the last INVOCATIONS_KEPT records per function, so a busy function's
 * window may reach further back than its records: `complete` says whether they cover all of it.
 */
import { isFailure } from './invocations.js';
import type { InvocationRecord } from './types.js';

export interface StatsWindow {
  /** Seconds back from now. */
  window_s: number;
  /** Seconds per bucket. */
  step_s: number;
}

export interface StatsBucket {
  /** The bucket's start (buckets are aligned to multiples of the step, so that polls line up). */
  start: string;
  count: number;
  errors: number;
  /** Latency percentiles of the bucket's invocations; null when it had none. */
  p50_ms: number | null;
  p99_ms: number | null;
}

export interface InvocationStats extends StatsWindow {
  from: string;
  to: string;
  /** False when older records were already dropped (only the last ones are kept): the numbers cover `since` to `to`. */
  complete: boolean;
  since: string;
  totals: {
    count: number;
    errors: number;
    cold_starts: number;
    /** errors / count; null without invocations. */
    error_rate: number | null;
    /** Invocations per second over the time covered. */
    rate_per_s: number;
    p50_ms: number | null;
    p99_ms: number | null;
  };
  buckets: StatsBucket[];
}

/** Nearest-rank percentile (p in 0..100) of ascending values; null when there are none. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/**
 * Buckets the records that started within the window ending `now`. `records` are what the store
 * returned, newest first, read with a limit of `readLimit`: when it returned that many, older ones
 * may exist that were not read or were dropped, and the window counts as complete only if the
 * oldest record read is older than the window.
 */
export function invocationStats(records: readonly InvocationRecord[], w: StatsWindow, now: number, readLimit: number): InvocationStats {
  const stepMs = w.step_s * 1000;
  const to = Math.ceil(now / stepMs) * stepMs;
  const from = to - w.window_s * 1000;
  const n = Math.ceil((to - from) / stepMs);
  const durations: number[][] = Array.from({ length: n }, () => []);
  const errors = new Array<number>(n).fill(0);
  let coldStarts = 0;
  let oldest = Number.POSITIVE_INFINITY;
  for (const inv of records) {
    const t = Date.parse(inv.started_at);
    oldest = Math.min(oldest, t);
    if (!(t >= from && t < to)) continue;
    const i = Math.floor((t - from) / stepMs);
    durations[i]!.push(inv.duration_ms);
    if (isFailure(inv)) errors[i]! += 1;
    if (inv.cold_start) coldStarts += 1;
  }
  const complete = records.length < readLimit || oldest < from;
  const since = complete ? from : oldest;
  const all = durations.flat().sort((a, b) => a - b);
  const errorCount = errors.reduce((a, b) => a + b, 0);
  const coveredS = Math.max(1, (now - since) / 1000);
  return {
    ...w,
    from: new Date(from).toISOString(),
    to: new Date(to).toISOString(),
    complete,
    since: new Date(since).toISOString(),
    totals: {
      count: all.length,
      errors: errorCount,
      cold_starts: coldStarts,
      error_rate: all.length === 0 ? null : errorCount / all.length,
      rate_per_s: all.length / coveredS,
      p50_ms: percentile(all, 50),
      p99_ms: percentile(all, 99),
    },
    buckets: durations.map((ds, i) => {
      ds.sort((a, b) => a - b);
      return {
        start: new Date(from + i * stepMs).toISOString(),
        count: ds.length,
        errors: errors[i]!,
        p50_ms: percentile(ds, 50),
        p99_ms: percentile(ds, 99),
      };
    }),
  };
}
