/**
 * Provisioning jobs in Redis: keys, the atomic scripts that add and remove a job, and the
 * encoding of a job as a stream entry. Shared by the gateway side (ProvisionQueue) and the worker
 * side (ProvisionConsumer).
 */
import type { Redis } from 'ioredis';
import type { ProvisionRequest } from '../../core/ports.js';

export type { ProvisionRequest };

export type ProvisionSlot = Pick<ProvisionRequest, 'functionId' | 'version' | 'slot'>;

export interface ProvisionJob extends ProvisionRequest {
  jobId: string;
}

export const GROUP = 'workers';
/** Worker ids that have a provisioning stream, so that takeover finds streams without SCAN. */
export const TARGETS_KEY = 'aether:provision-targets';

export const streamKey = (workerId: string) => `aether:provision:${workerId}`;
export const dedupeKey = (s: ProvisionSlot) => `aether:provisioning:${s.functionId}:${s.version}:${s.slot}`;

/**
 * A job id names its stream entry and the stream's worker (`{entryId}@{workerId}`), so that
 * whoever holds it (the gateway that joined a job, not only the one that added it) can remove it.
 */
const jobIdOf = (entryId: string, workerId: string) => `${entryId}@${workerId}`;

/** When the job was added: stream entry ids start with Redis' clock in ms. */
export function enqueuedAt(jobId: string): number {
  return Number(parseJobId(jobId).entryId.split('-')[0]);
}

function parseJobId(jobId: string): { entryId: string; workerId: string } {
  const at = jobId.indexOf('@');
  if (at <= 0 || at === jobId.length - 1) throw new Error(`invalid provisioning job id "${jobId}"`);
  return { entryId: jobId.slice(0, at), workerId: jobId.slice(at + 1) };
}

/**
 * Dedupe and enqueue in one step: the first request for a slot sets the dedupe key (expiring at
 * the deadline) and adds the job; later ones get the job id the key holds. One script, so a key
 * never exists without its job. KEYS: dedupe key, stream, targets. ARGV: ttl ms, target worker,
 * function id, version, slot, deadline. Returns {1 if added, job id}.
 */
const REQUEST = `
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local entry = redis.call('XADD', KEYS[2], '*', 'function_id', ARGV[3], 'version', ARGV[4], 'slot', ARGV[5],
  'target_worker', ARGV[2], 'deadline', ARGV[6])
local job = entry .. '@' .. ARGV[2]
redis.call('SET', KEYS[1], job, 'PX', ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return {1, job}`;

/**
 * Acks and deletes the entry and frees the slot's dedupe key if it still holds this job (a newer
 * job for the slot keeps its key). KEYS: stream, dedupe key. ARGV: group, entry id, job id.
 */
const REMOVE = `
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1`;

/** Deletes a dead worker's stream once nothing is left in it. KEYS: stream, targets. ARGV: worker id. */
const DROP_IF_EMPTY = `
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1`;

export async function addJob(redis: Redis, req: ProvisionRequest): Promise<{ jobId: string; enqueued: boolean }> {
  const ttl = Math.max(1, Math.ceil(req.deadline - Date.now()));
  const reply = (await redis.eval(
    REQUEST,
    3,
    dedupeKey(req),
    streamKey(req.targetWorker),
    TARGETS_KEY,
    ttl,
    req.targetWorker,
    req.functionId,
    req.version,
    req.slot,
    req.deadline,
  )) as [number, string];
  return { jobId: reply[1], enqueued: reply[0] === 1 };
}

export async function removeJob(redis: Redis, jobId: string, slot: ProvisionSlot): Promise<void> {
  const { entryId, workerId } = parseJobId(jobId);
  await redis.eval(REMOVE, 2, streamKey(workerId), dedupeKey(slot), GROUP, entryId, jobId);
}

export async function dropIfEmpty(redis: Redis, workerId: string): Promise<void> {
  await redis.eval(DROP_IF_EMPTY, 2, streamKey(workerId), TARGETS_KEY, workerId);
}

/** A stream entry as XREADGROUP/XCLAIM return it; fields are null for an entry deleted while pending. */
export interface StreamEntry {
  id: string;
  fields: string[] | null;
}

/** Entries of `[[id, [field, value, ...] | null], ...]`, the shape XREADGROUP (per stream) and XCLAIM share. */
export function toEntries(rows: unknown): StreamEntry[] {
  if (!Array.isArray(rows)) return [];
  return rows.map(([id, fields]: [string, string[] | null]) => ({ id, fields }));
}

/** The job in an entry of `workerId`'s stream, or undefined when the entry is not a job. */
export function decodeJob(workerId: string, entry: StreamEntry): ProvisionJob | undefined {
  if (!entry.fields) return undefined;
  const f = new Map<string, string>();
  for (let i = 0; i + 1 < entry.fields.length; i += 2) f.set(entry.fields[i]!, entry.fields[i + 1]!);
  const job = {
    jobId: jobIdOf(entry.id, workerId),
    functionId: f.get('function_id') ?? '',
    version: Number(f.get('version')),
    slot: Number(f.get('slot')),
    targetWorker: f.get('target_worker') ?? workerId,
    deadline: Number(f.get('deadline')),
  };
  const valid = job.functionId && Number.isFinite(job.version) && Number.isFinite(job.slot) && Number.isFinite(job.deadline);
  return valid ? job : undefined;
}
