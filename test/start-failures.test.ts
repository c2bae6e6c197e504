/**
 * The failing-state rules (core/start-failures.ts) as pure functions of state and time: a fake clock
 * is moved, nothing sleeps. The same rules run in the pool and a gateway's router; the end-to-end
 * tests with real sandboxes are in failing.test.ts and invocations-cluster.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AetherError } from '../src/core/errors.js';
import {
  afterStartFailure,
  backoffDelay,
  failingError,
  functionStatus,
  LocalStartFailures,
  type StartFailure,
  startsAllowed,
} from '../src/core/start-failures.js';

const policy = { initialMs: 1000, maxMs: 60_000 };
const fn = { id: 'fn-1', version: 3 };
const T0 = Date.parse('2026-12-01T10:00:00Z');

/** A clock that only moves when told to. */
function fakeClock(start = T0) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

const fail = (prev: StartFailure | undefined, at: number, error = 'boom', version = fn.version) =>
  afterStartFailure(prev, { ...fn, version }, { error, instanceId: `i-${at}` }, at, policy);

test('a healthy function may start any number of instances', () => {
  assert.equal(startsAllowed(undefined, fn.version, T0, 0), Number.POSITIVE_INFINITY);
  assert.equal(startsAllowed(undefined, fn.version, T0, 5), Number.POSITIVE_INFINITY);
  assert.deepEqual(functionStatus(undefined, fn.version), { status: 'ok', last_error: null, failing_since: null });
});

test('after a failed start: no start during the backoff, then exactly one probe at a time', () => {
  const clock = fakeClock();
  const state = fail(undefined, clock.now(), 'entry module handler.js failed to load: boom');
  assert.equal(state.failures, 1);
  assert.equal(state.retryAt, T0 + 1000);
  assert.deepEqual(functionStatus(state, fn.version), {
    status: 'failing',
    last_error: 'entry module handler.js failed to load: boom',
    failing_since: '2026-12-01T10:00:00.000Z',
  });
  assert.equal(startsAllowed(state, fn.version, clock.now(), 0), 0);
  clock.advance(999);
  assert.equal(startsAllowed(state, fn.version, clock.now(), 0), 0);
  clock.advance(1);
  assert.equal(startsAllowed(state, fn.version, clock.now(), 0), 1, 'the probe');
  assert.equal(startsAllowed(state, fn.version, clock.now(), 1), 0, 'while the probe starts, nothing else');
  clock.advance(3_600_000);
  assert.equal(startsAllowed(state, fn.version, clock.now(), 0), 1, 'still one at a time until a start succeeds');
});

test('the delay doubles with each failure in a row, up to the maximum; failing_since stays the first', () => {
  const clock = fakeClock();
  let state: StartFailure | undefined;
  const delays: number[] = [];
  for (let i = 0; i < 10; i++) {
    state = fail(state, clock.now(), `boom ${i}`);
    delays.push(state.retryAt - clock.now());
    clock.advance(state.retryAt - clock.now()); // the probe starts as soon as it may, and fails again
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000, 60_000]);
  assert.equal(state!.failures, 10);
  assert.equal(state!.lastError, 'boom 9');
  assert.equal(state!.failingSince, T0);
  assert.equal(backoffDelay(1_000_000, policy), 60_000, 'no overflow');
});

test('a function that never starts gets few attempts: 10 in the first 5 minutes instead of one per request', () => {
  const clock = fakeClock();
  let state: StartFailure | undefined;
  let attempts = 0;
  // A request every 100 ms for 5 minutes; each start allowed fails at once.
  for (let t = 0; t < 300_000; t += 100) {
    clock.advance(t === 0 ? 0 : 100);
    if (startsAllowed(state, fn.version, clock.now(), 0) > 0) {
      attempts++;
      state = fail(state, clock.now());
    }
  }
  // At 0, 1, 3, 7, 15, 31, 63, 123, 183, 243 s.
  assert.equal(attempts, 10);
});

test('a new version is not failing: its first failure starts a new row', () => {
  const clock = fakeClock();
  const old = fail(fail(undefined, clock.now()), clock.advance(1000));
  assert.equal(old.failures, 2);
  assert.equal(startsAllowed(old, fn.version + 1, clock.now(), 0), Number.POSITIVE_INFINITY);
  assert.equal(functionStatus(old, fn.version + 1).status, 'ok');
  const next = fail(old, clock.advance(10), 'other', fn.version + 1);
  assert.equal(next.failures, 1);
  assert.equal(next.failingSince, clock.now());
  assert.equal(next.retryAt, clock.now() + 1000);
});

test('the fast answer during the backoff: 503 function_failing with the last error and when the next attempt is', () => {
  const clock = fakeClock();
  const state = fail(fail(undefined, clock.now()), clock.advance(1000), 'entry module not found: handler.js');
  clock.advance(500);
  const err = failingError('hello', state, clock.now());
  assert.ok(err instanceof AetherError);
  assert.equal(err.status, 503);
  assert.equal(err.code, 'function_failing');
  assert.equal(err.message, 'function hello is failing: its last 2 starts failed, next attempt in 2 s: entry module not found: handler.js');
});

test('single node store: a success clears the failures of its version and older ones, not newer ones', () => {
  const store = new LocalStartFailures();
  store.record(fail(undefined, T0));
  store.clear(fn.id, fn.version - 1);
  assert.ok(store.get(fn.id), 'an older version starting is no news about this one');
  store.clear(fn.id, fn.version);
  assert.equal(store.get(fn.id), undefined);
  store.record(fail(undefined, T0));
  store.clear(fn.id, Number.POSITIVE_INFINITY); // deleted
  assert.equal(store.get(fn.id), undefined);
});
