/**
 * One invocation of a function, whatever the route it came by (HTTP, Lambda Invoke API): a lease on
 * an instance (retried only while targets refuse the connection), the exchange with it, and the
 * invocation record.
 */
import type { AsyncInvocations } from '../../core/async-invocations.js';
import { AetherError } from '../../core/errors.js';
import type { FunctionService } from '../../core/functions.js';
import type { Lease } from '../../core/pool.js';
import { invocationOutcome } from '../../core/invocation-outcome.js';
import type { InvocationLog, Metrics } from '../../core/ports.js';
import type { Router } from '../../core/scheduler.js';
import type { FunctionRecord, InvocationType } from '../../core/types.js';
import { toAetherError } from './errors.js';
import type { Forwarded } from './forward.js';
import type { BodyLimits } from './request-body.js';

/** What running an invocation needs, on every route. */
export interface InvokeDeps {
  /** What an invocation with a qualifier (none, `$LATEST`, a version, an alias) runs. */
  functions: Pick<FunctionService, 'resolve'>;
  router: Router;
  /** Where invocations are recorded; a cluster worker leaves that to the gateway. */
  invocations?: InvocationLog;
  metrics: Metrics;
  startTimeoutMs: number;
  body: BodyLimits;
  /** Cluster workers only take invocations from gateways, which present this token. */
  requireToken?: string;
  /** Where async (`Event`) invocations are queued; absent on workers, which run what gateways send. */
  async?: AsyncInvocations;
}

export interface InvocationIds {
  /** The record's id (a UUIDv7). */
  id: string;
  /** What the client knows the invocation by (its own X-Request-Id, else the record's id). */
  requestId: string;
  started: number;
  /** An async invocation's attempt, and which (default: a synchronous invocation). */
  type?: InvocationType;
  attempt?: number;
}

export interface InvocationSteps<P, T extends Forwarded> {
  /** What must happen before a slot is taken (e.g. reading the request body); its failures are recorded too. */
  prepare(): Promise<P>;
  /** The exchange with the instance the lease is on; `sofar` says which instance and whether it was a cold start. */
  send(lease: Lease, prepared: P, sofar: Forwarded): Promise<T>;
}

/** What the route tells the client after a failure: the error and what is known of the invocation. */
export interface Failure {
  error: AetherError;
  cause: unknown;
  outcome: Forwarded;
}

/** A retry is safe only when the request provably never reached the instance. */
const MAX_REFUSED_RETRIES = 2;

export async function runInvocation<P, T extends Forwarded>(
  deps: InvokeDeps,
  fn: FunctionRecord,
  ids: InvocationIds,
  steps: InvocationSteps<P, T>,
): Promise<{ result: T; failure?: undefined } | { result?: undefined; failure: Failure }> {
  let lease: Lease | undefined;
  let outcome: Forwarded = { status: 0, instanceId: null, error: null, coldStart: false };
  const progress = deps.metrics.invocationStarted(fn);
  try {
    const prepared = await steps.prepare();
    // Waiting for an instance may include a cold start; timeout_ms bounds the function's own run.
    const deadline = Date.now() + deps.startTimeoutMs + fn.timeout_ms;
    for (let attempt = 0; ; attempt++) {
      progress.waiting();
      lease = await deps.router.acquire(fn, deadline, ids.requestId);
      progress.running();
      outcome = { ...outcome, instanceId: lease.remote ? null : lease.instanceId, coldStart: outcome.coldStart || lease.coldStart };
      try {
        const result = await steps.send(lease, prepared, outcome);
        outcome = { ...result, coldStart: outcome.coldStart || result.coldStart };
        return { result: { ...result, coldStart: outcome.coldStart } };
      } catch (err) {
        lease.release();
        const refused = err instanceof AetherError && err.code === 'connection_refused';
        if (!refused || attempt >= MAX_REFUSED_RETRIES) {
          lease = undefined;
          throw err;
        }
        lease.recycle(); // that target is gone: route around it
        lease = undefined;
      }
    }
  } catch (err) {
    const error = toAetherError(err);
    outcome = {
      status: error.status,
      error: error.message,
      errorCode: error.code,
      instanceId: error.context.instanceId ?? outcome.instanceId,
      coldStart: outcome.coldStart || error.context.coldStart === true,
    };
    return { failure: { error, cause: err, outcome } };
  } finally {
    lease?.release();
    progress.done(invocationOutcome(outcome), Date.now() - ids.started);
    deps.invocations?.record({
      id: ids.id,
      request_id: ids.requestId,
      function_id: fn.id,
      started_at: new Date(ids.started).toISOString(),
      status: outcome.status,
      duration_ms: Date.now() - ids.started,
      cold_start: outcome.coldStart,
      instance_id: outcome.instanceId,
      error: outcome.error,
      invocation_type: ids.type ?? 'RequestResponse',
      attempts: ids.attempt ?? 1,
    });
  }
}
