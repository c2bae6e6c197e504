/**
 * Functions whose instances fail to start (the entry throws at import, there is no entry, the server
 * never listens): after a failed start a function is `failing`, and new starts wait for an
 * exponentially growing delay. Meanwhile requests that would need a new instance get a fast 503 with
 * the last error rather than a sandbox each; once the delay is over one start is tried (a probe).
 * A new deploy (a new version) starts from scratch; a successful start clears the state.
 *
 * The decisions are pure functions of the state and the time, which the caller passes in: the pool
 * on one node or a worker, and a gateway's router, apply the same rules to the same shared state.
 */
import { type AetherError, unavailable } from './errors.js';
import type { FunctionStatus } from './types.js';

export interface StartFailure {
  functionId: string;
  /** The version whose starts failed: another version is not failing (yet). */
  version: number;
  /** Failed starts in a row. */
  failures: number;
  lastError: string;
  /** The instance whose start failed last. */
  instanceId: string;
  /** Epoch ms of the first failure in the row. */
  failingSince: number;
  /** Epoch ms before which no new instance is started. */
  retryAt: number;
}

export interface BackoffPolicy {
  /** The delay after the first failure; it doubles with each further one. */
  initialMs: number;
  maxMs: number;
}

/** The delay after the n-th failure in a row (n >= 1). */
export function backoffDelay(failures: number, policy: BackoffPolicy): number {
  return Math.min(policy.maxMs, policy.initialMs * 2 ** Math.min(failures - 1, 30));
}

/** The state after a start of `version` failed at `now`; an earlier version's failures do not count. */
export function afterStartFailure(
  prev: StartFailure | undefined,
  fn: { id: string; version: number },
  failure: { error: string; instanceId: string },
  now: number,
  policy: BackoffPolicy,
): StartFailure {
  const same = prev?.version === fn.version ? prev : undefined;
  const failures = (same?.failures ?? 0) + 1;
  return {
    functionId: fn.id,
    version: fn.version,
    failures,
    lastError: failure.error,
    instanceId: failure.instanceId,
    failingSince: same?.failingSince ?? now,
    retryAt: now + backoffDelay(failures, policy),
  };
}

/** The state if it applies to this version of the function. */
export function failing(state: StartFailure | undefined, version: number): StartFailure | undefined {
  return state?.version === version ? state : undefined;
}

/**
 * How many new instances of `version` may start at `now`, with `starting` of them starting already:
 * any number when it is not failing; none during the backoff; one at a time (a probe) after it.
 */
export function startsAllowed(state: StartFailure | undefined, version: number, now: number, starting: number): number {
  const f = failing(state, version);
  if (!f) return Number.POSITIVE_INFINITY;
  if (now < f.retryAt) return 0;
  return starting > 0 ? 0 : 1;
}

/** The fast answer during the backoff. */
export function failingError(name: string, f: StartFailure, now: number): AetherError {
  const inS = Math.max(1, Math.ceil((f.retryAt - now) / 1000));
  const attempts = f.failures === 1 ? 'its last start failed' : `its last ${f.failures} starts failed`;
  return unavailable(`function ${name} is failing: ${attempts}, next attempt in ${inS} s: ${f.lastError}`, 'function_failing');
}

/** What the API shows about a function's health. */
export function functionStatus(state: StartFailure | undefined, version: number): FunctionStatus {
  const f = failing(state, version);
  return f
    ? { status: 'failing', last_error: f.lastError, failing_since: new Date(f.failingSince).toISOString() }
    : { status: 'ok', last_error: null, failing_since: null };
}

/** Where start failures are kept: in memory on one node, in etcd in a cluster. */
export interface StartFailures {
  get(functionId: string): StartFailure | undefined;
  /** A start failed (fire and forget: the state is visible here at once, elsewhere soon). */
  record(state: StartFailure): void;
  /** Forgets the function's failures of versions up to `version` (a start succeeded, or it was deleted). */
  clear(functionId: string, version: number): void;
}

/** Start failures shared by a cluster: a gateway waiting for a cold start hears of a failure on a worker. */
export interface SharedStartFailures extends StartFailures {
  /** Calls `listener` for each failure of the function recorded from now on, by anyone; returns the unsubscribe function. */
  onRecorded(functionId: string, listener: (state: StartFailure) => void): () => void;
}

/** Single node: the pool that records a failure, and the API, read it from memory. */
export class LocalStartFailures implements StartFailures {
  private readonly states = new Map<string, StartFailure>();

  get(functionId: string): StartFailure | undefined {
    return this.states.get(functionId);
  }

  record(state: StartFailure): void {
    this.states.set(state.functionId, state);
  }

  clear(functionId: string, version: number): void {
    if ((this.states.get(functionId)?.version ?? Number.POSITIVE_INFINITY) <= version) this.states.delete(functionId);
  }
}
