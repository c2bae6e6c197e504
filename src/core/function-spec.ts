/**
 * Validation of function configuration: the rules of what a function may be, independent of
 * how requests arrive. The API's create/replace/patch bodies go through here.
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { badRequest } from './errors.js';
import { EVENT_FORMATS, type EventFormat, type FunctionRecord } from './types.js';
import { validate } from './validate.js';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Names Aether sets itself inside an instance; a function may not override them. */
const RESERVED_ENV = new Set(['PORT', 'HOME', 'PATH', 'NODE_OPTIONS']);
const MAX_ENV_BYTES = 32 * 1024;

const int = (min: number, max: number) => z.number().int().min(min).max(max);

const configShape = {
  runtime: z.enum(['node'], { error: 'runtime must be one of: node' }),
  entrypoint: z
    .string()
    .min(1)
    .max(255)
    .refine((p) => !p.startsWith('/') && !p.split(/[\\/]/).includes('..'), 'entrypoint must be a relative path inside the code')
    .nullable(),
  memory_mb: int(32, 8192),
  vcpu: int(1, 64),
  port: int(1, 65535),
  env_vars: z
    .record(z.string(), z.string())
    .refine((env) => Object.keys(env).every((k) => ENV_NAME.test(k)), 'env var names must match [A-Za-z_][A-Za-z0-9_]*')
    .refine(
      (env) => Object.keys(env).every((k) => !RESERVED_ENV.has(k) && !k.startsWith('AETHER_')),
      `env var names PORT, HOME, PATH, NODE_OPTIONS and AETHER_* are reserved`,
    )
    .refine((env) => Buffer.byteLength(JSON.stringify(env)) <= MAX_ENV_BYTES, `env vars may take at most ${MAX_ENV_BYTES} bytes`),
  timeout_ms: int(100, 15 * 60 * 1000),
  concurrency: int(1, 1000),
  min_instances: int(0, 100),
  max_instances: int(1, 100),
  idle_timeout_s: int(1, 7 * 24 * 3600),
  event_format: z.enum(EVENT_FORMATS, { error: `event_format must be one of: ${EVENT_FORMATS.join(', ')}` }),
  max_retries: int(0, 2),
  max_event_age_s: int(60, 6 * 3600),
};

export const FUNCTION_DEFAULTS = {
  entrypoint: null,
  memory_mb: 128,
  vcpu: 1,
  port: 3000,
  env_vars: {},
  timeout_ms: 30_000,
  concurrency: 10,
  min_instances: 0,
  max_instances: 10,
  idle_timeout_s: 300,
  // Runs unchanged Lambda code and handlers written for the first event alike.
  event_format: 'apigw-v2' as EventFormat,
  // Async invocations, as Lambda's defaults.
  max_retries: 2,
  max_event_age_s: 6 * 3600,
} as const;

const NAME = z
  .string()
  .regex(
    /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/,
    'name must be a DNS label: 1-63 lowercase letters, digits or "-", not starting or ending with "-"',
  );

/** POST /api/functions. */
export const createFunctionSchema = z
  .strictObject({ name: NAME, ...configShape })
  .partial()
  .required({ name: true, runtime: true });
/** PUT replaces the configuration (omitted fields return to defaults); PATCH changes only what it names. */
export const replaceFunctionSchema = z
  .strictObject({ name: NAME, ...configShape })
  .partial()
  .required({ runtime: true });
export const patchFunctionSchema = z.strictObject({ name: NAME, ...configShape }).partial();

/** A function record as publicView shows it: its configuration, env var values masked (the API adds its status: FunctionView). */
export const functionRecordSchema = z.strictObject({
  id: z.string(),
  name: NAME,
  ...configShape,
  version: z.number().int().min(0).describe('bumped by every code upload and configuration change'),
  code_hash: z.string().nullable().describe('sha256 of the uploaded archive; null before the first upload'),
  code_size: z.number().int().nullable(),
  created_at: z.iso.datetime(),
  updated_at: z.iso.datetime(),
});

type Config = Omit<FunctionRecord, 'id' | 'version' | 'code_hash' | 'code_size' | 'created_at' | 'updated_at'>;

function checkScaling(c: Config): Config {
  if (c.min_instances > c.max_instances) throw badRequest('min_instances must not exceed max_instances', 'validation_failed');
  return c;
}

export function newFunction(body: unknown, now = new Date()): FunctionRecord {
  const input = validate(createFunctionSchema, body);
  const config = checkScaling({ ...FUNCTION_DEFAULTS, ...input } as Config);
  const ts = now.toISOString();
  return { id: randomUUID(), ...config, version: 0, code_hash: null, code_size: null, created_at: ts, updated_at: ts };
}

/** Applies a PUT (replace) or PATCH (merge) body; the result is a new version when the config changed. */
export function changeFunction(fn: FunctionRecord, body: unknown, mode: 'replace' | 'patch', now = new Date()): FunctionRecord {
  const input = mode === 'replace' ? validate(replaceFunctionSchema, body) : validate(patchFunctionSchema, body);
  const base = mode === 'replace' ? { ...FUNCTION_DEFAULTS, name: fn.name } : fn;
  const next = checkScaling({ ...base, ...input } as Config);
  const changed = (Object.keys(next) as (keyof Config)[]).some((k) => JSON.stringify(next[k]) !== JSON.stringify(fn[k]));
  if (!changed) return fn;
  return { ...fn, ...next, version: fn.version + 1, updated_at: now.toISOString() };
}

/** A record as stored, with the defaults of fields added since it was written. */
export function storedRecord(json: string): FunctionRecord {
  return { ...FUNCTION_DEFAULTS, ...(JSON.parse(json) as FunctionRecord) };
}

/** The record as shown to API clients: env var values are secrets and never leave the server. */
export function publicView(fn: FunctionRecord): FunctionRecord {
  const masked = Object.fromEntries(Object.keys(fn.env_vars).map((k) => [k, '********']));
  return { ...fn, env_vars: masked };
}
