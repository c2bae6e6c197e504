/**
 * Invocation records: their ids, request ids, what counts as a failure, and how they are paged.
 * The rules here are shared by every store (SQLite on one node, Redis in a cluster).
 */
import { v7 as uuidv7 } from 'uuid';
import type { InvocationRecord } from './types.js';

/**
 * A request id a client may bring (X-Request-Id): 1-128 letters, digits, ".", "_", ":" or "-". Enough for
 * UUIDs, ULIDs, trace ids and load balancer ids; nothing that could break a header, a log line or a URL.
 */
export const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** Records kept per function; older ones are dropped. */
export const INVOCATIONS_KEPT = 1000;

/**
 * A new record id: a UUIDv7, so that ids sort (as strings) in the order the invocations started,
 * which is what paging with `before` relies on. Also the request id when the client sent none.
 */
export function newInvocationId(startedAt: number = Date.now()): string {
  return uuidv7({ msecs: startedAt });
}

/** The client's request id if it is valid, else undefined (the caller falls back to a new one). */
export function validRequestId(candidate: string | string[] | undefined): string | undefined {
  const value = Array.isArray(candidate) ? candidate[0] : candidate;
  return value !== undefined && REQUEST_ID_PATTERN.test(value) ? value : undefined;
}

/** An invocation failed when Aether or the function's handler reported an error, or the answer was a 5xx. */
export function isFailure(inv: Pick<InvocationRecord, 'status' | 'error'>): boolean {
  return inv.error !== null || inv.status >= 500;
}

/** A record as stored, with the defaults of fields added since it was written. */
export function storedInvocation(json: string): InvocationRecord {
  const stored = JSON.parse(json) as Partial<InvocationRecord>;
  return { ...stored, invocation_type: stored.invocation_type ?? 'RequestResponse', attempts: stored.attempts ?? 1 } as InvocationRecord;
}

/** One page of a function's records, newest first. */
export interface InvocationQuery {
  /** At most this many records. */
  limit: number;
  /** Only records older than this record id: the last id of the previous page. */
  before?: string;
  /** true: failed invocations only; false: successful ones only. */
  failed?: boolean;
  /** true: cold starts only; false: warm ones only. */
  coldStart?: boolean;
}

/** Whether a record passes the query's filters (stores that cannot filter natively use this). */
export function matches(inv: InvocationRecord, q: InvocationQuery): boolean {
  return (q.failed === undefined || isFailure(inv) === q.failed) && (q.coldStart === undefined || inv.cold_start === q.coldStart);
}
