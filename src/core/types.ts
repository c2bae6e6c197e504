import type { DeadLetterReason } from './async-retry.js';

/**
 * What an HTTP request becomes in handler mode: `apigw-v2` (API Gateway HTTP API payload 2.0, plus the
 * first event's fields), `apigw-v1` (REST API payload 1.0) or `aether` (Aether's first event).
 */
export const EVENT_FORMATS = ['apigw-v2', 'apigw-v1', 'aether'] as const;
export type EventFormat = (typeof EVENT_FORMATS)[number];

/** Records as the API shows them (field names follow the original prototype's JSON). */
export interface FunctionRecord {
  id: string;
  name: string;
  runtime: Runtime;
  entrypoint: string | null;
  memory_mb: number;
  vcpu: number;
  port: number;
  env_vars: Record<string, string>;
  timeout_ms: number;
  concurrency: number;
  min_instances: number;
  max_instances: number;
  idle_timeout_s: number;
  /** Handler mode: the event an HTTP request becomes (API Gateway payload 2.0 or 1.0, or Aether's own). */
  event_format: EventFormat;
  /** Async invocations: attempts after a failed first one (0-2), and the oldest an event may be when an attempt starts. */
  max_retries: number;
  max_event_age_s: number;
  /** Bumped by every code upload and config change: instances of older versions drain. */
  version: number;
  code_hash: string | null;
  code_size: number | null;
  created_at: string;
  updated_at: string;
}

export type Runtime = 'node';

/** A function's health as the API shows it next to its record. */
export interface FunctionStatus {
  /** `failing`: its instances fail to start (see last_error); new starts back off exponentially. */
  status: 'ok' | 'failing';
  last_error: string | null;
  failing_since: string | null;
}

/** How a function's instances start: from a prepared bundle, plainly (and why), or not known yet. */
export interface StartMode {
  mode: 'bundle' | 'plain' | 'preparing';
  reason?: string;
}

export type FunctionView = FunctionRecord & FunctionStatus & { start?: StartMode };

export interface InvocationRecord {
  /** Unique, and sorts by start time (a UUIDv7): pass the last one of a page as `before` for the next. */
  id: string;
  /** The client's X-Request-Id if it was valid, else the same as `id`; also what the function saw. */
  request_id: string;
  function_id: string;
  started_at: string;
  status: number;
  duration_ms: number;
  /** The request waited for a new instance: the one that served it (or failed to start) was not ready when it arrived. */
  cold_start: boolean;
  /** The instance that served it, failed, or failed to start; null when none was involved. */
  instance_id: string | null;
  /** Why it failed (handler threw, crash, out of memory, timeout, start failure, no capacity...); null otherwise. */
  error: string | null;
  /** `Event`: an async invocation's attempt (its request_id is the id the 202 answered with). */
  invocation_type: InvocationType;
  /** Which attempt this was (1 for sync invocations). */
  attempts: number;
}

export type InvocationType = 'RequestResponse' | 'Event';

/** `stopping`: killed by the host or crashed, not yet torn down; `draining`: finishing its requests before a stop. */
export type InstanceState = 'starting' | 'ready' | 'draining' | 'stopping' | 'stopped';

export interface InstanceInfo {
  id: string;
  state: InstanceState;
  version: number;
  started_at: string;
  in_flight: number;
  served: number;
  /** It came from the warm pool (pre-started, then given this function). */
  prewarmed: boolean;
  /** Cluster mode: the worker that runs it. */
  worker_id?: string;
}

/** A name for a version of a function (core/versions.ts), optionally splitting traffic with others. */
export interface AliasRecord {
  function_id: string;
  name: string;
  version: number;
  /** Other versions and the share (0-1) of the alias's invocations each gets; `version` gets the rest. */
  additional_version_weights: Record<string, number>;
  created_at: string;
  updated_at: string;
}

/** The request an attempt sends to an instance: what a sync invocation would have sent. */
export interface EventRequest {
  method: string;
  /** Path and query as the function sees them. */
  path: string;
  headers: Record<string, string | string[]>;
  /** base64 */
  body: string;
}

export interface AsyncEvent {
  /** Answered with the 202; every attempt's invocation record has it as its request_id... */
  id: string;
  /** ...unless the client brought its own request id (X-Request-Id on the HTTP route). */
  request_id: string;
  function_id: string;
  /** The version it was invoked with: `$LATEST` (the latest when it runs) or a version number (an alias's choice included). */
  qualifier?: string;
  /** `invoke`: the Lambda Invoke API's JSON event; `http`: a request to /functions/{id}/*. */
  source: 'invoke' | 'http';
  request: EventRequest;
  /** Epoch ms of acceptance (or of its redrive): the event's age counts from here. */
  accepted_at: number;
  /** Attempts made so far. */
  attempts: number;
  /** Epoch ms from which it may run (now, or when its retry is due). */
  due_at: number;
  last_error: string | null;
}

export interface DeadLetter {
  event: AsyncEvent;
  reason: DeadLetterReason;
  failed_at: number;
}
