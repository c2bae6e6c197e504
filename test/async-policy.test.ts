/**
 * Async invocations' decisions (core/async-retry.ts) as pure functions of an event's state and the
 * time, and the dispatcher (core/async-invocations.ts) that applies them, on the real SQLite queue, with a
 * fake clock: nothing waits for a backoff and no sandbox starts. End to end: async-invocations.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { SqliteAsyncQueue } from '../src/adapters/store/sqlite-async-queue.js';
import { AsyncDispatcher, AsyncInvocations } from '../src/core/async-invocations.js';
import type { AsyncEvent } from '../src/core/types.js';
import { afterAttempt, isExpired, type RetryPolicy, retryDelay } from '../src/core/async-retry.js';
import { FUNCTION_DEFAULTS } from '../src/core/function-spec.js';
import { AetherError } from '../src/core/errors.js';
import type { FunctionRecord } from '../src/core/types.js';
import { until } from './helpers/wait.ts';

const T0 = Date.parse('2026-12-01T10:00:00Z');
const HOUR = 3_600_000;
const policy = (over: Partial<RetryPolicy> = {}): RetryPolicy => ({
  maxRetries: 2,
  maxEventAgeMs: 6 * HOUR,
  baseDelayMs: 1000,
  maxDelayMs: 60_000,
  ...over,
});

describe('retryDelay', () => {
  test('doubles with each retry, within the cap, jittered between half and all of it', () => {
    const p = policy();
    assert.deepEqual(
      [1, 2, 3].map((n) => retryDelay(n, p, 0)),
      [500, 1000, 2000],
      'random 0: half',
    );
    assert.deepEqual(
      [1, 2, 3].map((n) => retryDelay(n, p, 0.999999)),
      [1000, 2000, 4000],
      'random ~1: all',
    );
    assert.equal(retryDelay(20, p, 0.999999), 60_000, 'capped');
    assert.equal(retryDelay(1000, p, 0), 30_000, 'no overflow for absurd counts');
    const spread = new Set(Array.from({ length: 50 }, (_, i) => retryDelay(2, p, i / 50)));
    assert.ok(spread.size > 40, 'different random draws give different delays');
  });
});

describe('afterAttempt', () => {
  test('a success is done, whatever the count', () => {
    assert.deepEqual(afterAttempt({ acceptedAt: T0, attempts: 3 }, false, policy(), T0, 0.5), { kind: 'done' });
  });

  test('failures are retried max_retries times with growing delays, then dead-lettered', () => {
    let now = T0;
    const decisions = [];
    for (let attempts = 1; attempts <= 3; attempts++) {
      const d = afterAttempt({ acceptedAt: T0, attempts }, true, policy(), now, 0.5);
      decisions.push(d);
      if (d.kind === 'retry') now = d.at;
    }
    assert.deepEqual(decisions, [
      { kind: 'retry', at: T0 + 750 },
      { kind: 'retry', at: T0 + 750 + 1500 },
      { kind: 'dead', reason: 'retries_exhausted' },
    ]);
  });

  test('max_retries 0: the first failure is final', () => {
    assert.deepEqual(afterAttempt({ acceptedAt: T0, attempts: 1 }, true, policy({ maxRetries: 0 }), T0, 0), {
      kind: 'dead',
      reason: 'retries_exhausted',
    });
  });

  test('a retry that would start after max_event_age is not scheduled: the event expires now', () => {
    const p = policy({ maxEventAgeMs: 60_000, baseDelayMs: 10_000 });
    assert.deepEqual(afterAttempt({ acceptedAt: T0, attempts: 1 }, true, p, T0 + 40_000, 0), { kind: 'retry', at: T0 + 45_000 });
    assert.deepEqual(afterAttempt({ acceptedAt: T0, attempts: 1 }, true, p, T0 + 56_000, 0), { kind: 'dead', reason: 'expired' });
  });

  test('isExpired: older than max_event_age at the moment an attempt would start', () => {
    const p = policy({ maxEventAgeMs: 60_000 });
    assert.equal(isExpired({ acceptedAt: T0, attempts: 0 }, p, T0 + 60_000), false);
    assert.equal(isExpired({ acceptedAt: T0, attempts: 0 }, p, T0 + 60_001), true);
  });
});

describe('the dispatcher on the SQLite queue, with a fake clock', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-async-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const fn = (name: string, over: Partial<FunctionRecord> = {}): FunctionRecord => ({
    ...FUNCTION_DEFAULTS,
    id: `id-${name}`,
    name,
    runtime: 'node',
    version: 1,
    code_hash: 'h',
    code_size: 1,
    created_at: new Date(T0).toISOString(),
    updated_at: new Date(T0).toISOString(),
    ...over,
  });

  function setup(
    file: string,
    fns: FunctionRecord[],
    attempt: (fn: FunctionRecord, ev: AsyncEvent) => Promise<string | null>,
    perFunction = 2,
  ) {
    let now = T0;
    const queue = new SqliteAsyncQueue(path.join(dir, file));
    const functions = {
      get: async (id: string) => {
        const found = fns.find((f) => f.id === id || f.name === id);
        if (!found) throw new AetherError('not_found', `no function ${id}`);
        return found;
      },
    };
    const resolver = { resolve: async (id: string) => ({ fn: await functions.get(id) }) };
    const dispatcher = new AsyncDispatcher({
      queue,
      functions: resolver,
      attempt,
      perFunction,
      retry: { baseDelayMs: 1000, maxDelayMs: 60_000 },
      pollMs: 5,
      log: { debug() {}, info() {}, warn() {}, error() {} },
      now: () => now,
      random: () => 0.5,
    });
    const service = new AsyncInvocations(
      queue,
      functions,
      () => dispatcher.notify(),
      () => now,
    );
    const event = (f: FunctionRecord, id: string): AsyncEvent => ({
      id,
      request_id: id,
      function_id: f.id,
      source: 'invoke',
      request: { method: 'POST', path: '/events', headers: {}, body: Buffer.from(JSON.stringify({ id })).toString('base64') },
      accepted_at: now,
      attempts: 0,
      due_at: now,
      last_error: null,
    });
    return { queue, dispatcher, service, event, advance: (ms: number) => (now += ms), now: () => now };
  }

  test('at most perFunction attempts of a function at once; another function is not held up', async () => {
    const slow = fn('slow');
    const other = fn('other');
    const releases: (() => void)[] = [];
    const runningOf = new Map<string, number>();
    let most = 0;
    const ran: string[] = [];
    const s = setup('bound.db', [slow, other], async (f, ev) => {
      runningOf.set(f.id, (runningOf.get(f.id) ?? 0) + 1);
      most = Math.max(most, runningOf.get(slow.id) ?? 0);
      if (f.id === slow.id) await new Promise<void>((resolve) => releases.push(resolve));
      runningOf.set(f.id, runningOf.get(f.id)! - 1);
      ran.push(ev.id);
      return null;
    });
    for (let i = 0; i < 5; i++) await s.queue.enqueue(s.event(slow, `s${i}`));
    await s.queue.enqueue(s.event(other, 'o1'));
    s.dispatcher.start();
    await until(async () => releases.length === 2 && ran.includes('o1'), 5000, 'two slow attempts and the other function');
    assert.equal(most, 2);
    while (ran.filter((id) => id.startsWith('s')).length < 5) {
      await until(async () => releases.length > 0, 5000, 'the next slow attempt');
      releases.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(most, 2, 'never more than perFunction at once');
    await s.dispatcher.stop();
    assert.equal((await s.queue.take(() => 10, s.now())).length, 0, 'all done: nothing left queued');
    s.queue.close();
  });

  test('a failing event: retried when due on the clock, then dead-lettered; redrive runs it again', async () => {
    const f = fn('failing', { max_retries: 2 });
    const attempts: number[] = [];
    let succeed = false;
    const s = setup('retry.db', [f], async (_f, ev) => {
      attempts.push(ev.attempts);
      return succeed ? null : `boom ${ev.attempts}`;
    });
    await s.queue.enqueue(s.event(f, 'e1'));
    s.dispatcher.start();
    await until(async () => attempts.length === 1, 5000, 'the first attempt');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(attempts.length, 1, 'the retry waits for the clock (750 ms with this jitter)');
    s.advance(749);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(attempts.length, 1);
    s.advance(1);
    await until(async () => attempts.length === 2, 5000, 'the first retry');
    s.advance(1500);
    await until(async () => attempts.length === 3, 5000, 'the second retry');
    await until(async () => (await s.service.deadLetters('failing', 10)).length === 1, 5000, 'the dead letter');
    const [letter] = await s.service.deadLetters('failing', 10);
    assert.equal(letter!.id, 'e1');
    assert.equal(letter!.reason, 'retries_exhausted');
    assert.equal(letter!.attempts, 3);
    assert.equal(letter!.error, 'boom 3');
    assert.equal(letter!.payload, '{"id":"e1"}');
    s.advance(60_000);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(attempts, [1, 2, 3], 'no attempt after the dead letter');

    succeed = true;
    assert.equal(await s.service.redrive('failing', 'e1'), 1);
    await until(async () => attempts.length === 4, 5000, 'the redriven attempt');
    assert.equal(attempts[3], 1, 'a redriven event starts from its first attempt');
    assert.deepEqual(await s.service.deadLetters('failing', 10), []);
    await assert.rejects(s.service.redrive('failing', 'e1'), /no dead letter e1/);
    await s.dispatcher.stop();
    s.queue.close();
  });

  test('an event older than max_event_age_s when due is dead-lettered as expired, without an attempt', async () => {
    const f = fn('old', { max_event_age_s: 60 });
    let attempts = 0;
    const s = setup('expiry.db', [f], async () => {
      attempts++;
      return null;
    });
    await s.queue.enqueue(s.event(f, 'e-old'));
    s.advance(60_001);
    s.dispatcher.start();
    await until(async () => (await s.service.deadLetters('old', 10)).length === 1, 5000, 'the dead letter');
    assert.equal((await s.service.deadLetters('old', 10))[0]!.reason, 'expired');
    assert.equal(attempts, 0);
    await s.dispatcher.stop();
    s.queue.close();
  });

  test('a deleted function: its queued events are dropped, not run', async () => {
    const f = fn('gone');
    let attempts = 0;
    const s = setup('gone.db', [], async () => {
      attempts++;
      return null;
    });
    await s.queue.enqueue(s.event(f, 'e-gone'));
    s.dispatcher.start();
    await until(async () => (await s.queue.take(() => 10, s.now())).length === 0, 5000, 'the event to go');
    await s.dispatcher.stop();
    assert.equal(attempts, 0);
    s.queue.close();
  });
});
