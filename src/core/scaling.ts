/**
 * A function's scaling decisions: how many instances to start for the requests waiting, which idle
 * instances to stop, and how long to wait before bringing back warm instances that keep crashing.
 * Pure functions of the pool's state and the time, which the caller passes in (as start-failures.ts
 * does for start failures): the pool (pool.ts) applies them, and tests move a clock instead of waiting.
 */
import { type BackoffPolicy, backoffDelay } from './start-failures.js';

/** What a scaling decision needs to know of the function. */
export interface ScalingLimits {
  concurrency: number;
  minInstances: number;
  maxInstances: number;
}

/** An instance as the decisions see it. */
export interface Load {
  inFlight: number;
  /** Epoch ms of its last request (or of its start). */
  lastActive: number;
}

/**
 * How many instances to start now: enough for the waiting and running requests at `concurrency` each,
 * counting the `live` (starting or ready) instances, within max_instances and the `startable` limit
 * (startsAllowed in start-failures.ts).
 */
export function scaleUpCount(s: { limits: ScalingLimits; waiting: number; live: Load[]; startable: number }): number {
  const busy = s.live.reduce((n, i) => n + i.inFlight, 0);
  const missing = Math.ceil((s.waiting + busy) / s.limits.concurrency) - s.live.length;
  const room = s.limits.maxInstances - s.live.length;
  return Math.max(0, Math.min(missing, room, s.startable));
}

/**
 * How many more instances of a function may start while `starting` of them are: at most `limit` at once.
 * Starts compete for the host's CPUs: twenty at once on two cores each take about ten times as long,
 * while two at a time have the first ones serving the queue after about one start's time (and the
 * pool starts the next ones as those become ready, only if the queue still needs them).
 */
export function startsAtOnce(starting: number, limit: number): number {
  return Math.max(0, limit - starting);
}

/** How many instances to start to keep min_instances up. */
export function keepMinimumCount(s: { limits: ScalingLimits; live: number; startable: number }): number {
  return Math.max(0, Math.min(s.limits.minInstances - s.live, s.startable));
}

export interface ScaleDownVictim<I> {
  instance: I;
  idleMs: number;
  /** It is the last instance: the function scales to zero. */
  last: boolean;
}

/**
 * The ready instances to stop at `now`, longest idle first: idle extras beyond what the load needs (at
 * least one) once idle for the grace period (never longer than idle_timeout_s), and the last one once
 * idle for idle_timeout_s with nothing waiting and min_instances 0. An instance with a request in
 * flight is never chosen.
 */
export function scaleDownVictims<I extends Load>(
  s: { limits: ScalingLimits; waiting: number; ready: I[]; graceMs: number; idleTimeoutMs: number },
  now: number,
): ScaleDownVictim<I>[] {
  const load = s.waiting + s.ready.reduce((n, i) => n + i.inFlight, 0);
  const needed = Math.max(s.limits.minInstances, Math.ceil(load / s.limits.concurrency));
  const idle = s.ready.filter((i) => i.inFlight === 0).sort((a, b) => a.lastActive - b.lastActive);
  const grace = Math.min(s.graceMs, s.idleTimeoutMs);
  const victims: ScaleDownVictim<I>[] = [];
  let live = s.ready.length;
  for (const instance of idle) {
    const idleMs = now - instance.lastActive;
    const extra = live > Math.max(needed, 1) && idleMs >= grace;
    const last = live === 1 && needed === 0 && idleMs >= s.idleTimeoutMs;
    if (!extra && !last) continue;
    victims.push({ instance, idleMs, last });
    live--;
  }
  return victims;
}

/** An instance that dies within this long of starting continues a crash streak. */
export const CRASH_WINDOW_MS = 60_000;
/** Restarting warm instances after crashes: 100 ms, doubling with each crash in a row, at most 30 s. */
export const RESTART_BACKOFF: BackoffPolicy = { initialMs: 100, maxMs: 30_000 };

/**
 * After an instance exited unexpectedly at `now`: the crash streak (a young instance's death continues
 * it, an old one's starts a new one) and how long to wait before restarting min_instances.
 */
export function afterCrash(streak: number, startedAt: number, now: number): { streak: number; restartDelayMs: number } {
  const next = now - startedAt < CRASH_WINDOW_MS ? streak + 1 : 1;
  return { streak: next, restartDelayMs: backoffDelay(next, RESTART_BACKOFF) };
}
