/**
 * When an async (`Event`) invocation runs again, and when it is given up: exponential backoff with
 * jitter up to the function's `max_retries`, never past its `max_event_age_s`. Pure functions of the
 * event's state, the time and a random number, which the caller passes in (as scaling.ts does), so
 * that tests move a clock instead of waiting.
 */

/** Why an event went to the dead-letter list. */
export type DeadLetterReason = 'retries_exhausted' | 'expired';

/** What the decisions need to know of an event. */
export interface EventState {
  /** Epoch ms at which the event was accepted (or redriven): its age counts from here. */
  acceptedAt: number;
  /** Attempts made so far, the one that just ended included. */
  attempts: number;
}

export interface RetryPolicy {
  /** The function's max_retries: attempts after the first (0-2, as on Lambda). */
  maxRetries: number;
  /** The function's max_event_age_s in ms: no attempt starts later than this after acceptance. */
  maxEventAgeMs: number;
  /** The delay before the first retry; it doubles with each further one. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export type AfterAttempt = { kind: 'done' } | { kind: 'retry'; at: number } | { kind: 'dead'; reason: DeadLetterReason };

/**
 * The delay before retry number `retry` (1 = the first): base × 2^(retry-1), capped, then "equal
 * jitter": between half of it and all of it, so that events that failed together do not retry together.
 * `random` is in [0, 1).
 */
export function retryDelay(retry: number, policy: Pick<RetryPolicy, 'baseDelayMs' | 'maxDelayMs'>, random: number): number {
  const full = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.min(Math.max(retry - 1, 0), 30));
  return Math.round(full / 2 + (full / 2) * random);
}

/** Whether the event is too old for another attempt to start at `now`. */
export function isExpired(ev: EventState, policy: Pick<RetryPolicy, 'maxEventAgeMs'>, now: number): boolean {
  return now - ev.acceptedAt > policy.maxEventAgeMs;
}

/**
 * After an attempt ended at `now` (`failed` or not): done, retried at a time, or dead-lettered because
 * the retries are used up or the retry would start after the event's maximum age.
 */
export function afterAttempt(ev: EventState, failed: boolean, policy: RetryPolicy, now: number, random: number): AfterAttempt {
  if (!failed) return { kind: 'done' };
  if (ev.attempts > policy.maxRetries) return { kind: 'dead', reason: 'retries_exhausted' };
  const at = now + retryDelay(ev.attempts, policy, random);
  if (isExpired(ev, policy, at)) return { kind: 'dead', reason: 'expired' };
  return { kind: 'retry', at };
}
