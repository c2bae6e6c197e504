/**
 * The Redis adapters against a real redis-server: the provisioning queue (dedupe, delivery,
 * at-least-once takeover from a SIGKILLed worker process, deadlines, cancel, outages) and the
 * invocation log's outage behaviour (its contract: invocation-log.test.ts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Redis } from 'ioredis';
import { AetherError } from '../src/core/errors.js';
import type { Logger } from '../src/core/ports.js';
import type { InvocationRecord } from '../src/core/types.js';
import { newInvocationId } from '../src/core/invocations.js';
import { connectRedis } from '../src/adapters/redis/connection.js';
import { RedisInvocationLog } from '../src/adapters/redis/invocation-log.js';
import { ProvisionQueue, type ConsumeOptions, type ProvisionJob, type ProvisionRequest } from '../src/adapters/redis/provision-queue.js';
import { freePort, redisProcess, type ServiceProcess } from './helpers/services.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FAST = { blockMs: 500, takeoverIntervalMs: 200, claimIdleMs: 300, retryMs: 100 };

let server: ServiceProcess;
let addr: string;
let dir: string;
let raw: Redis; // for looking at what the adapters left in Redis
const clients: Redis[] = [];
const consumers: { stop(): Promise<void> }[] = [];

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-redis-'));
  const port = await freePort();
  server = redisProcess(port, dir);
  await server.start();
  addr = `127.0.0.1:${port}`;
  raw = await client();
});

after(async () => {
  await Promise.all(consumers.map((c) => c.stop()));
  for (const c of clients) c.disconnect();
  await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function client(): Promise<Redis> {
  const c = await connectRedis(addr);
  clients.push(c);
  return c;
}

interface LogLine {
  level: string;
  obj: object;
  msg?: string;
}
function recordingLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** A consumer whose handle records jobs and finishes each one when the test says so. */
function consumer(queue: ProvisionQueue, workerId: string, isAlive: ConsumeOptions['isAlive'] = () => true) {
  const jobs: ProvisionJob[] = [];
  const finish = new Map<string, () => void>();
  const c = queue.consume({
    workerId,
    isAlive,
    timing: FAST,
    handle: (job) => {
      jobs.push(job);
      const d = deferred();
      finish.set(job.jobId, d.resolve);
      return d.promise;
    },
  });
  const handle = {
    jobs,
    finish: (jobId: string) => finish.get(jobId)?.(),
    /** Finishes whatever is still being handled (stop waits for it), then stops. */
    stop: () => {
      for (const f of finish.values()) f();
      return c.stop();
    },
  };
  consumers.push(handle);
  return handle;
}

const request = (over: Partial<ProvisionRequest> & Pick<ProvisionRequest, 'functionId' | 'targetWorker'>): ProvisionRequest => ({
  version: 1,
  slot: 0,
  deadline: Date.now() + 10_000,
  ...over,
});

const pendingCount = async (worker: string) => {
  const summary = (await raw.xpending(`aether:provision:${worker}`, 'workers')) as [number];
  return summary[0];
};

test('concurrent requests for one slot add one job; another slot is another job', async () => {
  const [a, b] = [new ProvisionQueue(await client(), recordingLogger()), new ProvisionQueue(await client(), recordingLogger())];
  const req = request({ functionId: 'fn-dedupe', version: 3, targetWorker: 'w-dedupe-1' });
  const tickets = await Promise.all([a.request(req), b.request({ ...req, targetWorker: 'w-dedupe-2' }), a.request(req), b.request(req)]);
  assert.equal(tickets.filter((t) => t.enqueued).length, 1);
  assert.equal(new Set(tickets.map((t) => t.jobId)).size, 1);
  const jobs = (await raw.xlen('aether:provision:w-dedupe-1')) + (await raw.xlen('aether:provision:w-dedupe-2'));
  assert.equal(jobs, 1);
  const ttl = await raw.pttl('aether:provisioning:fn-dedupe:3:0');
  assert.ok(ttl > 9000 && ttl <= 10_000, `dedupe key expires at the deadline (pttl ${ttl})`);

  const slot1 = await b.request({ ...req, slot: 1 });
  assert.ok(slot1.enqueued);
  assert.notEqual(slot1.jobId, tickets[0].jobId);
});

test('a job reaches its target worker and is acked only after handle resolves', async () => {
  const queue = new ProvisionQueue(await client(), recordingLogger());
  const target = consumer(queue, 'w-target');
  const bystander = consumer(queue, 'w-bystander');
  const req = request({ functionId: 'fn-deliver', version: 7, slot: 2, targetWorker: 'w-target' });
  const ticket = await queue.request(req);

  await waitFor('the job to be handled', () => target.jobs.length === 1);
  assert.deepEqual(target.jobs[0], { ...req, jobId: ticket.jobId });
  await sleep(600); // several takeover rounds: a live worker's job stays with it
  assert.equal(bystander.jobs.length, 0);
  assert.equal(await pendingCount('w-target'), 1, 'not acked while handle runs');
  assert.equal(await raw.get('aether:provisioning:fn-deliver:7:2'), ticket.jobId);

  target.finish(ticket.jobId);
  await waitFor('the ack', async () => (await pendingCount('w-target')) === 0);
  assert.equal(await raw.xlen('aether:provision:w-target'), 0, 'acked entries are deleted');
  assert.equal(await raw.exists('aether:provisioning:fn-deliver:7:2'), 0, 'the slot is free again');
  assert.equal(target.jobs.length, 1);
  await Promise.all([target.stop(), bystander.stop()]);
});

test('a handle that throws is logged and acked, not retried', async () => {
  const logger = recordingLogger();
  const queue = new ProvisionQueue(await client(), logger);
  let calls = 0;
  const c = queue.consume({
    workerId: 'w-failing',
    isAlive: () => true,
    timing: FAST,
    handle: async () => {
      calls++;
      throw new Error('no capacity left');
    },
  });
  consumers.push(c);
  await queue.request(request({ functionId: 'fn-fails', targetWorker: 'w-failing' }));
  await waitFor('the ack', async () => calls === 1 && (await raw.xlen('aether:provision:w-failing')) === 0);
  await sleep(500);
  assert.equal(calls, 1);
  assert.ok(logger.lines.some((l) => l.level === 'warn' && JSON.stringify(l.obj).includes('no capacity left')));
  await c.stop();
});

/** A worker in its own process that starts handling its first job and never finishes. */
function doomedWorker(workerId: string): { proc: ReturnType<typeof spawn>; started: Promise<ProvisionJob> } {
  const url = (file: string) => pathToFileURL(path.join(root, 'src/adapters/redis', file)).href;
  const code = `
    const { createRedis } = await import(${JSON.stringify(url('connection.ts'))});
    const { ProvisionQueue } = await import(${JSON.stringify(url('provision-queue.ts'))});
    const quiet = { debug() {}, info() {}, warn() {}, error() {} };
    new ProvisionQueue(createRedis(process.env.REDIS_ADDR), quiet).consume({
      workerId: process.env.WORKER_ID, isAlive: () => true,
      handle: (job) => { process.stdout.write(JSON.stringify(job) + '\\n'); return new Promise(() => {}); },
    });`;
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: root,
    env: { ...process.env, REDIS_ADDR: addr, WORKER_ID: workerId },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const started = new Promise<ProvisionJob>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', (line) => resolve(JSON.parse(line)));
    proc.once('exit', (code) => reject(new Error(`worker process exited (${code}) before handling a job`)));
  });
  return { proc, started };
}

test('a job whose worker process is killed mid-job is taken over once that worker is not alive', async () => {
  const queue = new ProvisionQueue(await client(), recordingLogger());
  const doomed = doomedWorker('w-doomed');
  const first = await queue.request(request({ functionId: 'fn-takeover', targetWorker: 'w-doomed' }));
  assert.equal((await doomed.started).jobId, first.jobId);
  doomed.proc.kill('SIGKILL');
  await new Promise((r) => doomed.proc.once('exit', r));
  // Never delivered: added after the worker died.
  const second = await queue.request(request({ functionId: 'fn-takeover', slot: 1, targetWorker: 'w-doomed' }));

  let doomedAlive = true;
  const heir = consumer(queue, 'w-heir', (id) => id !== 'w-doomed' || doomedAlive);
  await sleep(1000); // takeover rounds while w-doomed still counts as alive (its etcd lease has not expired)
  assert.equal(heir.jobs.length, 0);
  assert.equal(await pendingCount('w-doomed'), 1, 'the killed worker never acked its job');

  doomedAlive = false;
  await waitFor('both jobs to be taken over', () => heir.jobs.length === 2);
  assert.deepEqual(heir.jobs.map((j) => j.jobId).sort(), [first.jobId, second.jobId].sort());
  assert.ok(heir.jobs.every((j) => j.targetWorker === 'w-doomed'));
  await sleep(300);
  assert.equal(await pendingCount('w-doomed'), 2, 'not acked before handle finished');

  heir.finish(first.jobId);
  heir.finish(second.jobId);
  await waitFor('the dead worker stream to be cleaned up', async () => (await raw.exists('aether:provision:w-doomed')) === 0);
  assert.equal(await raw.sismember('aether:provision-targets', 'w-doomed'), 0);
  assert.equal(heir.jobs.length, 2, 'each job ran once on the heir');
  await heir.stop();
});

test('a job past its deadline is dropped without running', async () => {
  const logger = recordingLogger();
  const queue = new ProvisionQueue(await client(), logger);
  await queue.request(request({ functionId: 'fn-late', targetWorker: 'w-late', deadline: Date.now() + 150 }));
  await sleep(300);
  const late = consumer(queue, 'w-late');
  await waitFor('the expired job to be dropped', async () => (await raw.xlen('aether:provision:w-late')) === 0);
  assert.equal(late.jobs.length, 0);
  assert.equal(await pendingCount('w-late'), 0);
  assert.ok(logger.lines.some((l) => l.msg?.includes('expired')));
  await late.stop();
});

test('cancel removes the job and frees the slot, but never a newer job for the slot', async () => {
  const queue = new ProvisionQueue(await client(), recordingLogger());
  const req = request({ functionId: 'fn-cancel', targetWorker: 'w-cancel' });
  const old = await queue.request(req);
  await queue.cancel(old.jobId, req);
  assert.equal(await raw.xlen('aether:provision:w-cancel'), 0);
  assert.equal(await raw.exists('aether:provisioning:fn-cancel:1:0'), 0);

  const fresh = await queue.request(req);
  assert.ok(fresh.enqueued, 'the slot can be requested again at once');
  await queue.cancel(old.jobId, req); // a late second cancel of the old job
  assert.equal(await raw.get('aether:provisioning:fn-cancel:1:0'), fresh.jobId);
  assert.equal(await raw.xlen('aether:provision:w-cancel'), 1);

  const c = consumer(queue, 'w-cancel');
  await waitFor('the remaining job', () => c.jobs.length === 1);
  assert.equal(c.jobs[0]!.jobId, fresh.jobId);
  await queue.cancel(fresh.jobId, req); // while the worker handles it (the gateway timed out)
  assert.equal(await pendingCount('w-cancel'), 0);
  assert.equal(await raw.xlen('aether:provision:w-cancel'), 0);
  c.finish(fresh.jobId);
  await c.stop();
});

const inv = (functionId: string, i: number): InvocationRecord => ({
  id: newInvocationId(1_700_000_000_000 + i),
  request_id: `inv-${i}`,
  function_id: functionId,
  started_at: new Date(1_700_000_000_000 + i).toISOString(),
  status: 200,
  duration_ms: i % 50,
  cold_start: i === 0,
  instance_id: 'i-1',
  error: null,
  invocation_type: 'RequestResponse',
  attempts: 1,
});

const isQueueUnavailable = (pattern: RegExp) => (err: unknown) =>
  err instanceof AetherError && err.status === 503 && err.code === 'queue_unavailable' && pattern.test(err.message);

async function fastRejection(what: string, p: Promise<unknown>, pattern: RegExp, withinMs = 1000): Promise<void> {
  const t0 = Date.now();
  await assert.rejects(p, isQueueUnavailable(pattern));
  const ms = Date.now() - t0;
  assert.ok(ms < withinMs, `${what} rejected after ${ms} ms`);
}

test('Redis hung (accepts, never answers): cold starts and reads fail within the command timeout', async () => {
  const queue = new ProvisionQueue(await client(), recordingLogger());
  const log = new RedisInvocationLog(await client(), recordingLogger());
  const pid = Number(/process_id:(\d+)/.exec(await raw.info('server'))![1]);
  process.kill(pid, 'SIGSTOP');
  try {
    const req = request({ functionId: 'fn-hung', targetWorker: 'w-hung' });
    await Promise.all([
      fastRejection('request', queue.request(req), /cold starts are unavailable/, 1500),
      fastRejection('query', log.query('fn-hung', { limit: 10 }), /invocation records are unavailable/, 1500),
    ]);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
});

test('Redis down: cold starts and invocation reads fail fast with 503, records are dropped with one warning per outage; all recover', async () => {
  const logger = recordingLogger();
  const queue = new ProvisionQueue(await client(), logger);
  const log = new RedisInvocationLog(await client(), logger);
  const survivor = consumer(queue, 'w-survivor');
  await queue.request(request({ functionId: 'fn-outage', targetWorker: 'w-survivor' }));
  await waitFor('a job before the outage', () => survivor.jobs.length === 1);
  survivor.finish(survivor.jobs[0]!.jobId);
  await waitFor('its ack', async () => (await raw.xlen('aether:provision:w-survivor')) === 0);

  await server.stop();
  const req = request({ functionId: 'fn-outage', slot: 1, targetWorker: 'w-survivor' });
  await fastRejection('request', queue.request(req), /cold starts are unavailable because Redis .*unreachable/);
  await fastRejection('cancel', queue.cancel(survivor.jobs[0]!.jobId, req), /cold starts are unavailable/);
  await fastRejection('query', log.query('fn-outage', { limit: 10 }), /invocation records are unavailable/);
  const warnings = () => logger.lines.filter((l) => l.level === 'warn' && l.msg?.startsWith('invocation records')).length;
  for (let i = 0; i < 20; i++) log.record(inv('fn-outage', i));
  await waitFor('the outage warning', () => warnings() === 1);
  await sleep(700);
  assert.equal(warnings(), 1, 'one warning for the whole outage');

  await server.start(); // empty: no persistence, the consumer group is gone too
  await waitFor('requests to work again', () =>
    queue.request(req).then(
      () => true,
      () => false,
    ),
  );
  await waitFor('the same consumer to take a new job', () => survivor.jobs.length === 2, 8000);
  assert.equal(survivor.jobs[1]!.slot, 1);
  survivor.finish(survivor.jobs[1]!.jobId);
  await waitFor('its ack', async () => (await raw.xlen('aether:provision:w-survivor')) === 0);

  await waitFor('records to be stored again', async () => {
    log.record(inv('fn-outage', 100));
    return (await log.query('fn-outage', { limit: 1 }).catch(() => [])).length === 1;
  });
  assert.ok(logger.lines.some((l) => l.level === 'info' && l.msg?.startsWith('invocation records') && l.msg.includes('reachable again')));
  await server.stop();
  log.record(inv('fn-outage', 101));
  await waitFor('a warning for the second outage', () => warnings() === 2);
  await server.start();
  await survivor.stop();
});
