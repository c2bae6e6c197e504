/**
 * Versions and aliases. Every deploy (a code upload or a configuration change) is an immutable,
 * numbered version: the function's record as it was then. An alias names a version and may send a
 * share of its invocations to others (a canary); moving it is a rollback, with nothing to upload.
 * An invocation names what it runs with a qualifier: none or `$LATEST` (the current record), a
 * version number, or an alias.
 */
import { z } from 'zod';
import { AetherError, badRequest, notFound } from './errors.js';
import { publicView } from './function-spec.js';
import type { FunctionStore } from './ports.js';
import type { AliasRecord, FunctionRecord } from './types.js';

export const LATEST = '$LATEST';

/** Lambda's rule: letters, digits, "-" and "_", not only digits (a number is a version). */
export const aliasNameSchema = z
  .string()
  .regex(
    /^(?!\d+$)[A-Za-z0-9_-]{1,128}$/,
    'alias names are 1-128 letters, digits, "-" or "_", and not only digits (a number names a version)',
  );

const versionNumber = z.number().int().min(1);

/** PUT /api/functions/{id}/aliases/{alias}. */
export const putAliasSchema = z.strictObject({
  version: versionNumber.describe('the version the alias runs'),
  additional_version_weights: z
    .record(z.string(), z.number().min(0, 'weights are shares from 0 to 1').max(1, 'weights are shares from 0 to 1'))
    .refine((w) => Object.keys(w).every((k) => /^[1-9]\d*$/.test(k)), 'keys must be version numbers, e.g. {"8": 0.1}')
    .default({})
    .describe('other versions and the share (0-1) of invocations each gets, e.g. {"8": 0.1}; `version` gets the rest'),
});

/** The alias as a request asked for it, checked against the versions the function has. */
export function newAlias(
  fn: FunctionRecord,
  name: string,
  body: z.output<typeof putAliasSchema>,
  exists: (version: number) => boolean,
  previous: AliasRecord | undefined,
  now = new Date(),
): AliasRecord {
  const weights = body.additional_version_weights;
  for (const v of [body.version, ...Object.keys(weights).map(Number)]) {
    if (!exists(v)) throw versionNotFound(fn, v);
  }
  if (String(body.version) in weights) {
    throw badRequest(`version ${body.version} is the alias's own version: it gets what the additional weights leave`, 'invalid_alias');
  }
  const total = Object.values(weights).reduce((a, b) => a + b, 0);
  if (total > 1 + 1e-9) throw badRequest(`additional_version_weights add up to ${total}: at most 1 is possible`, 'invalid_alias');
  const ts = now.toISOString();
  return {
    function_id: fn.id,
    name,
    version: body.version,
    additional_version_weights: weights,
    created_at: previous?.created_at ?? ts,
    updated_at: ts,
  };
}

/**
 * The version one invocation through the alias runs, for `r` uniform in [0, 1): each additional
 * version over its weight's stretch of [0, 1), the alias's own version over the rest.
 */
export function pickVersion(alias: Pick<AliasRecord, 'version' | 'additional_version_weights'>, r: number): number {
  let upTo = 0;
  for (const [version, weight] of Object.entries(alias.additional_version_weights)) {
    upTo += weight;
    if (r < upTo) return Number(version);
  }
  return alias.version;
}

/** `name:qualifier` (as in `/functions/hello:prod/` and Lambda's FunctionName) into its parts. */
export function splitQualified(ref: string): { name: string; qualifier?: string } {
  const at = ref.indexOf(':');
  return at < 0 ? { name: ref } : { name: ref.slice(0, at), qualifier: ref.slice(at + 1) };
}

/** What an invocation runs: the function's record of that version, and the version as Lambda reports it. */
export interface Resolved {
  fn: FunctionRecord;
  /** `$LATEST`, or the version number. */
  executedVersion: string;
}

/**
 * The record an invocation of `idOrName` with `qualifier` runs. An alias with weights picks its
 * version with `random` (Math.random; a test passes its own).
 */
export async function resolveQualified(
  store: Pick<FunctionStore, 'get' | 'version' | 'alias'>,
  idOrName: string,
  qualifier: string | undefined,
  random: () => number = Math.random,
): Promise<Resolved> {
  const fn = await store.get(idOrName);
  if (!fn) throw notFound(`no function ${idOrName}`);
  if (qualifier === undefined || qualifier === LATEST) return { fn, executedVersion: LATEST };
  let version: number;
  if (/^\d+$/.test(qualifier)) {
    version = Number(qualifier);
  } else {
    const alias = await store.alias(fn.id, qualifier);
    if (!alias) throw aliasNotFound(fn, qualifier);
    version = pickVersion(alias, random());
  }
  return { fn: await versionRecord(store, fn, version), executedVersion: String(version) };
}

/** A version's record; the current one is always there (it may predate stored versions). */
export async function versionRecord(store: Pick<FunctionStore, 'version'>, fn: FunctionRecord, version: number): Promise<FunctionRecord> {
  const record = version === fn.version ? fn : await store.version(fn.id, version);
  if (!record || version < 1) throw versionNotFound(fn, version);
  return record;
}

export function aliasNotFound(fn: FunctionRecord, name: string): AetherError {
  return new AetherError('alias_not_found', `function ${fn.name} has no alias ${name} (see GET /api/functions/${fn.id}/aliases)`);
}

export function versionNotFound(fn: FunctionRecord, version: number): AetherError {
  return new AetherError(
    'version_not_found',
    `function ${fn.name} has no version ${version} (its latest is ${fn.version}; see GET /api/functions/${fn.id}/versions)`,
  );
}

/**
 * The versions whose records and code go: all but the newest `kept`, the current one and those an
 * alias runs. Newest first in, oldest first out.
 */
export function versionsToRemove(versions: FunctionRecord[], current: number, aliases: AliasRecord[], kept: number): FunctionRecord[] {
  const used = new Set<number>([current]);
  for (const a of aliases) {
    used.add(a.version);
    for (const v of Object.keys(a.additional_version_weights)) used.add(Number(v));
  }
  return [...versions]
    .sort((a, b) => b.version - a.version)
    .slice(kept)
    .filter((v) => !used.has(v.version))
    .reverse();
}

/** A version as the API lists it: what ran (its code) and how (its configuration, env var values masked). */
export function versionView(fn: FunctionRecord) {
  const { id: _id, version, code_hash, code_size, created_at: _created, updated_at, ...config } = publicView(fn);
  return { version, code_hash, code_size, created_at: updated_at, config };
}
