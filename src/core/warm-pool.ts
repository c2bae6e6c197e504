/**
 * How many pre-started generic instances (a warm pool: sandbox up, node and the agent running,
 * waiting for a function) to keep, per instance memory size. Instances of one size are
 * interchangeable: node's heap limit is fixed when it starts, so a pooled instance can only take a
 * function of its own memory size. Pure functions of the recent cold starts, a memory budget and the
 * time, which the caller passes in (as scaling.ts does): the warm pool adapter applies them, tests
 * move a clock.
 */

export interface WarmPoolSettings {
  /** Memory the idle pooled instances may reserve in all (each counts its memory size); 0: no pool. */
  budgetMb: number;
  /** How far back cold starts count as recent demand. */
  windowMs: number;
  /** The memory size of a function that does not set one: always kept ready, demand or not. */
  defaultMemoryMb: number;
}

/** One cold start: when, and for which memory size. */
export interface ColdStartSample {
  at: number;
  memoryMb: number;
}

/** The samples still inside the window at `now` (the adapter keeps only these). */
export function recentColdStarts(samples: ColdStartSample[], now: number, windowMs: number): ColdStartSample[] {
  return samples.filter((s) => s.at > now - windowMs && s.at <= now);
}

/**
 * The most cold starts of `times` (sorted) that fell within any `spanMs`: what a pool must hold to
 * serve such a burst before refilling (one refill takes about `spanMs`) catches up.
 */
export function peakWithin(times: number[], spanMs: number): number {
  let peak = 0;
  let first = 0;
  for (let last = 0; last < times.length; last++) {
    while (times[last]! - times[first]! >= spanMs) first++;
    peak = Math.max(peak, last - first + 1);
  }
  return peak;
}

/**
 * Target pool size per memory size at `now`. Every size with a recent cold start, and the default
 * size always, wants its peak number of cold starts within one refill time (at least one). The
 * budget is shared out one instance at a time: first one for each size (the default size first, then
 * the smaller), so that a burst of one size never starves the others, then to the size with the
 * largest shortfall. budgetMb 0: no pool at all.
 */
export function warmPoolTargets(
  s: { samples: ColdStartSample[]; refillMs: number; settings: WarmPoolSettings },
  now: number,
): Map<number, number> {
  const { budgetMb, windowMs, defaultMemoryMb } = s.settings;
  const targets = new Map<number, number>();
  if (budgetMb <= 0) return targets;
  const bySize = new Map<number, number[]>([[defaultMemoryMb, []]]);
  for (const sample of recentColdStarts(s.samples, now, windowMs)) {
    const times = bySize.get(sample.memoryMb) ?? [];
    times.push(sample.at);
    bySize.set(sample.memoryMb, times);
  }
  const span = Math.max(1, s.refillMs);
  const wanted = [...bySize].map(([memoryMb, times]) => ({
    memoryMb,
    want: Math.max(
      1,
      peakWithin(
        times.sort((a, b) => a - b),
        span,
      ),
    ),
  }));
  // The order of the first round; later rounds pick by shortfall, this order breaking ties.
  wanted.sort((a, b) => (a.memoryMb === defaultMemoryMb ? -1 : b.memoryMb === defaultMemoryMb ? 1 : a.memoryMb - b.memoryMb));
  let left = budgetMb;
  for (;;) {
    const have = (memoryMb: number) => targets.get(memoryMb) ?? 0;
    const fits = wanted.filter((w) => w.want > have(w.memoryMb) && w.memoryMb <= left);
    const pick =
      fits.find((w) => have(w.memoryMb) === 0) ??
      fits.reduce<(typeof fits)[number] | undefined>(
        (best, w) => (!best || w.want - have(w.memoryMb) > best.want - have(best.memoryMb) ? w : best),
        undefined,
      );
    if (!pick) return targets;
    targets.set(pick.memoryMb, have(pick.memoryMb) + 1);
    left -= pick.memoryMb;
  }
}
