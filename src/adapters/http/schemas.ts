/**
 * Zod schemas of the HTTP API's own shapes (the function configuration's are in core/function-spec.ts).
 * Routes validate their params and query with them and the OpenAPI document is generated from them.
 * Response schemas are strict: a field added to a record must be added here (the API tests parse real
 * responses with them).
 */
import { z } from 'zod';
import { functionRecordSchema } from '../../core/function-spec.js';
import { aliasNameSchema } from '../../core/versions.js';
import { LOG_STREAMS } from '../../core/logs.js';

export const ErrorBody = z.strictObject({
  error: z.strictObject({
    code: z.string().describe('stable, machine-readable: validation_failed, not_found, queue_full, ...'),
    message: z.string().describe('what went wrong and how to fix it'),
  }),
});

export const FunctionParams = z.strictObject({
  id: z.string().min(1).max(100).describe('the function id or its name'),
});

/** A function as the API shows it: the record (env var values masked) and whether it is failing to start. */
export const FunctionView = functionRecordSchema.extend({
  status: z.enum(['ok', 'failing']).describe('failing: its instances fail to start; new starts back off exponentially'),
  last_error: z.string().nullable().describe('why the last start failed'),
  failing_since: z.iso.datetime().nullable(),
  start: z
    .strictObject({
      mode: z.enum(['bundle', 'plain', 'preparing']),
      reason: z.string().optional().describe('why it starts plainly'),
    })
    .optional()
    .describe(
      'how its instances start: from the bundle prepared at deploy time, or plainly; absent where no instances run (a cluster gateway)',
    ),
});

/** A version as GET /api/functions/{id}/versions lists it. */
export const VersionSchema = z.strictObject({
  version: z.number().int().min(1),
  code_hash: z.string().nullable().describe('sha256 of the code archive it runs; null: deployed before any code'),
  code_size: z.number().int().nullable(),
  created_at: z.iso.datetime(),
  config: functionRecordSchema
    .omit({ id: true, version: true, code_hash: true, code_size: true, created_at: true, updated_at: true })
    .describe('its configuration, env var values masked'),
});

export const AliasSchema = z.strictObject({
  function_id: z.string(),
  name: aliasNameSchema,
  version: z.number().int().min(1),
  additional_version_weights: z.record(z.string(), z.number()).describe('other versions and the share of invocations each gets'),
  created_at: z.iso.datetime(),
  updated_at: z.iso.datetime(),
});

export const InstanceInfoSchema = z.strictObject({
  id: z.string(),
  state: z.enum(['starting', 'ready', 'draining', 'stopping', 'stopped']),
  version: z.number().int(),
  started_at: z.iso.datetime(),
  in_flight: z.number().int().min(0),
  served: z.number().int().min(0),
  prewarmed: z.boolean().describe('it came from the warm pool: started before its function was known, then given the function'),
  worker_id: z.string().optional().describe('cluster mode: the worker that runs it'),
});

export const InvocationRecordSchema = z.strictObject({
  id: z.string().describe('unique, sorts by start time (UUIDv7): pass the last of a page as `before` for the next'),
  request_id: z.string().describe("the client's X-Request-Id if it was valid, else the same as id"),
  function_id: z.string(),
  started_at: z.iso.datetime(),
  status: z.number().int(),
  duration_ms: z.number().min(0),
  cold_start: z.boolean().describe('the request waited for a new instance'),
  instance_id: z.string().nullable().describe('the instance that served it, failed, or failed to start'),
  error: z.string().nullable().describe('why it failed; null otherwise'),
  invocation_type: z
    .enum(['RequestResponse', 'Event'])
    .describe('Event: an attempt of an async invocation (request_id: the id of its 202)'),
  attempts: z.number().int().min(1).describe('which attempt this was (1 for synchronous invocations)'),
});

export const LogLineSchema = z.strictObject({
  id: z.string().describe('an opaque cursor: pass it as before/after (or Last-Event-ID) to continue'),
  time: z.iso.datetime(),
  function_id: z.string(),
  version: z.number().int(),
  instance_id: z.string().nullable(),
  stream: z.enum(LOG_STREAMS).describe("platform: Aether's own events about the function"),
  request_id: z.string().nullable().describe('handler mode: the invocation that wrote it'),
  event: z.enum(['started', 'start_failed', 'crashed', 'oom', 'timeout', 'stopped', 'dropped']).nullable(),
  message: z.string(),
});

export const LogPageSchema = z.strictObject({
  lines: LogLineSchema.array().describe('oldest first'),
  before: z.string().nullable().describe('?before= for the previous (older) page; null when there is none'),
  after: z.string().nullable().describe('?after= to continue forward'),
});

const latency = z.number().min(0).nullable().describe('ms; null without invocations');

export const InvocationStatsSchema = z.strictObject({
  window_s: z.number().int(),
  step_s: z.number().int(),
  from: z.iso.datetime().describe('the first bucket starts here (aligned to a multiple of step_s)'),
  to: z.iso.datetime(),
  complete: z
    .boolean()
    .describe('false: more invocations happened than the last 1000 records kept, and the numbers cover `since` to `to` only'),
  since: z.iso.datetime(),
  totals: z.strictObject({
    count: z.number().int(),
    errors: z.number().int().describe('invocations with an error or a 5xx answer'),
    cold_starts: z.number().int(),
    error_rate: z.number().min(0).max(1).nullable(),
    rate_per_s: z.number().min(0),
    p50_ms: latency,
    p99_ms: latency,
  }),
  buckets: z
    .strictObject({
      start: z.iso.datetime(),
      count: z.number().int(),
      errors: z.number().int(),
      p50_ms: latency,
      p99_ms: latency,
    })
    .array()
    .describe('oldest first, one per step'),
});

export const WorkerInfoSchema = z.strictObject({
  id: z.string(),
  url: z.string(),
  driver: z.string(),
  driver_reason: z.string(),
  cpus: z.number().int(),
  memory_mb: z.number().int(),
  max_instances: z.number().int(),
  instances: z.number().int(),
  started_at: z.iso.datetime(),
});

export const CodeUploadResult = z.strictObject({
  id: z.string(),
  code_hash: z.string(),
  code_size: z.number().int(),
  version: z.number().int(),
});

export const Health = z.strictObject({ status: z.literal('ok') });

/** GET /api/system: what /healthz no longer tells anyone without a token. */
export const SystemInfo = z.strictObject({
  role: z.enum(['serve', 'gateway', 'worker']),
  version: z.string().describe("Aether's version"),
  node: z.string().describe('the Node.js version'),
  started_at: z.iso.datetime(),
  isolation: z
    .strictObject({ driver: z.string(), reason: z.string() })
    .optional()
    .describe('serve and worker: the isolation driver and why it was chosen'),
  capacity: z
    .strictObject({
      cpus: z.number().int(),
      memory_mb: z.number().int(),
      instances: z.number().int().describe('instances running now'),
      max_instances: z.number().int().optional().describe('worker: instances it offers'),
    })
    .optional(),
  warm_pool: z
    .strictObject({
      budget_mb: z.number().int(),
      sizes: z
        .strictObject({ memory_mb: z.number().int(), idle: z.number().int(), target: z.number().int() })
        .array()
        .describe('per memory size: pre-started instances waiting for a function, and how many the pool wants now'),
      starting: z.number().int().describe('being pre-started'),
      hits: z.number().int().describe('cold starts that took a pre-started instance'),
      misses: z.number().int().describe('cold starts that found none of their memory size'),
      idle_memory_bytes: z.number().int().describe('memory charged to the waiting instances together'),
      idle_cpu_ms: z.number().describe('CPU time the waiting instances used so far, together'),
    })
    .optional()
    .describe('serve and worker with a warm pool (AETHER_WARM_POOL_MB > 0, bwrap or gVisor)'),
  worker_id: z.string().optional(),
  workers: z.number().int().optional().describe('gateway: live workers'),
});
export type SystemInfo = z.infer<typeof SystemInfo>;
