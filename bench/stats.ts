/** Percentile summaries of latency samples (milliseconds). */

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  mean: number;
}

/** Milliseconds to the microsecond: finer digits are noise. */
export const round = (ms: number) => Math.round(ms * 1000) / 1000;

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: number[], p: number): number {
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function summarize(samples: number[]): Summary {
  if (samples.length === 0) throw new Error('no samples to summarize');
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = sorted.reduce((sum, v) => sum + v, 0) / sorted.length;
  return {
    n: sorted.length,
    min: round(sorted[0]!),
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted[sorted.length - 1]!),
    mean: round(mean),
  };
}

/** a / b, rounded for reading (a ratio of 2.5 means "2.5 times the baseline"). */
export function ratio(a: number, b: number): number {
  return Math.round((a / b) * 100) / 100;
}
