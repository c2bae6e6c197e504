/**
 * The scaling decisions (core/scaling.ts) as pure functions of state and time: a fake clock is moved,
 * nothing sleeps and no sandbox starts. The same decisions end to end, through real HTTP and real
 * sandboxes, are in scaling.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  afterCrash,
  CRASH_WINDOW_MS,
  keepMinimumCount,
  type Load,
  scaleDownVictims,
  scaleUpCount,
  startsAtOnce,
} from '../src/core/scaling.js';

const T0 = Date.parse('2026-12-01T10:00:00Z');

/** A clock that only moves when told to. */
function fakeClock(start = T0) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

const limits = (over: Partial<{ concurrency: number; minInstances: number; maxInstances: number }> = {}) => ({
  concurrency: 1,
  minInstances: 0,
  maxInstances: 10,
  ...over,
});

type Inst = Load & { id: string };
const inst = (id: string, lastActive: number, inFlight = 0): Inst => ({ id, lastActive, inFlight });

describe('scaleUpCount', () => {
  test('a burst from zero starts one instance per `concurrency` waiting requests', () => {
    assert.equal(scaleUpCount({ limits: limits({ concurrency: 2 }), waiting: 8, live: [], startable: Infinity }), 4);
    assert.equal(scaleUpCount({ limits: limits({ concurrency: 2 }), waiting: 7, live: [], startable: Infinity }), 4);
  });

  test('instances already starting or ready count, so the same demand starts nothing twice', () => {
    const starting = [inst('a', T0), inst('b', T0)];
    assert.equal(scaleUpCount({ limits: limits({ concurrency: 2 }), waiting: 4, live: starting, startable: Infinity }), 0);
    assert.equal(scaleUpCount({ limits: limits({ concurrency: 2 }), waiting: 5, live: starting, startable: Infinity }), 1);
  });

  test('requests in flight are demand too: a full instance plus one waiting request needs a second', () => {
    const full = [inst('a', T0, 4)];
    assert.equal(scaleUpCount({ limits: limits({ concurrency: 4 }), waiting: 1, live: full, startable: Infinity }), 1);
    assert.equal(scaleUpCount({ limits: limits({ concurrency: 4 }), waiting: 0, live: full, startable: Infinity }), 0);
  });

  test('never beyond max_instances, nor beyond what the start-failure backoff allows', () => {
    assert.equal(scaleUpCount({ limits: limits({ maxInstances: 3 }), waiting: 200, live: [], startable: Infinity }), 3);
    assert.equal(scaleUpCount({ limits: limits({ maxInstances: 3 }), waiting: 200, live: [inst('a', T0)], startable: Infinity }), 2);
    assert.equal(scaleUpCount({ limits: limits(), waiting: 200, live: [], startable: 1 }), 1);
    assert.equal(scaleUpCount({ limits: limits(), waiting: 200, live: [], startable: 0 }), 0);
  });

  test('more live instances than needed (e.g. min_instances) is not negative', () => {
    assert.equal(scaleUpCount({ limits: limits(), waiting: 0, live: [inst('a', T0), inst('b', T0)], startable: Infinity }), 0);
  });
});

describe('startsAtOnce', () => {
  test('up to the limit while others start; none beyond it', () => {
    assert.equal(startsAtOnce(0, 2), 2);
    assert.equal(startsAtOnce(1, 2), 1);
    assert.equal(startsAtOnce(2, 2), 0);
    assert.equal(startsAtOnce(5, 2), 0, 'more starting than the limit (it was lowered): none, never negative');
  });

  test('a burst of 200 at concurrency 1 starts only the limit, as scaleUpCount gets it as `startable`', () => {
    assert.equal(scaleUpCount({ limits: limits({ maxInstances: 20 }), waiting: 200, live: [], startable: startsAtOnce(0, 2) }), 2);
  });
});

describe('keepMinimumCount', () => {
  test('tops up to min_instances, within what may start', () => {
    assert.equal(keepMinimumCount({ limits: limits({ minInstances: 3 }), live: 1, startable: Infinity }), 2);
    assert.equal(keepMinimumCount({ limits: limits({ minInstances: 3 }), live: 1, startable: 1 }), 1);
    assert.equal(keepMinimumCount({ limits: limits({ minInstances: 3 }), live: 5, startable: Infinity }), 0);
    assert.equal(keepMinimumCount({ limits: limits(), live: 0, startable: Infinity }), 0);
  });
});

describe('scaleDownVictims', () => {
  const settings = { graceMs: 500, idleTimeoutMs: 10_000 };
  const ids = (v: Array<{ instance: Inst }>) => v.map((x) => x.instance.id);

  test('idle extras go after the grace period, longest idle first; the last one after idle_timeout_s', () => {
    const clock = fakeClock();
    const ready = [inst('newest', T0 + 200), inst('oldest', T0), inst('middle', T0 + 100)];
    const at = () => scaleDownVictims({ limits: limits(), waiting: 0, ready, ...settings }, clock.now());

    clock.advance(499);
    assert.deepEqual(at(), [], 'nothing has been idle for the grace period yet');
    clock.advance(1); // oldest idle 500 ms
    assert.deepEqual(ids(at()), ['oldest']);
    clock.advance(200); // every one idle >= 500 ms: all but one go, the most recently active stays
    const victims = at();
    assert.deepEqual(ids(victims), ['oldest', 'middle']);
    assert.ok(victims.every((v) => !v.last));
    assert.deepEqual(
      victims.map((v) => v.idleMs),
      [700, 600],
    );

    const last = [inst('newest', T0 + 200)];
    clock.advance(9_499); // newest idle 9,999 ms
    assert.deepEqual(scaleDownVictims({ limits: limits(), waiting: 0, ready: last, ...settings }, clock.now()), []);
    clock.advance(1);
    assert.deepEqual(scaleDownVictims({ limits: limits(), waiting: 0, ready: last, ...settings }, clock.now()), [
      { instance: last[0], idleMs: 10_000, last: true },
    ]);
  });

  test('an instance with a request in flight is never stopped, and the load it carries keeps others', () => {
    const clock = fakeClock();
    clock.advance(60_000);
    const busy = inst('busy', T0, 1);
    const idle = inst('idle', T0);
    assert.deepEqual(ids(scaleDownVictims({ limits: limits(), waiting: 0, ready: [busy, idle], ...settings }, clock.now())), ['idle']);
    assert.deepEqual(
      ids(scaleDownVictims({ limits: limits({ concurrency: 1 }), waiting: 1, ready: [busy, idle], ...settings }, clock.now())),
      [],
    );
    assert.deepEqual(scaleDownVictims({ limits: limits(), waiting: 0, ready: [busy], ...settings }, clock.now()), []);
  });

  test('min_instances stay however long they idle; a waiting request keeps the last one', () => {
    const clock = fakeClock();
    clock.advance(3_600_000);
    const ready = [inst('a', T0), inst('b', T0 + 1), inst('c', T0 + 2)];
    assert.deepEqual(ids(scaleDownVictims({ limits: limits({ minInstances: 2 }), waiting: 0, ready, ...settings }, clock.now())), ['a']);
    assert.deepEqual(scaleDownVictims({ limits: limits(), waiting: 1, ready: [inst('a', T0)], ...settings }, clock.now()), []);
  });

  test('the grace period is never longer than idle_timeout_s', () => {
    const clock = fakeClock();
    const ready = [inst('a', T0), inst('b', T0 + 1)];
    clock.advance(1000);
    const short = { graceMs: 30_000, idleTimeoutMs: 1000 };
    assert.deepEqual(ids(scaleDownVictims({ limits: limits(), waiting: 0, ready, ...short }, clock.now())), ['a']);
  });
});

describe('afterCrash', () => {
  test('instances dying young restart after 100 ms, doubling, at most 30 s; an old one starts the streak over', () => {
    const clock = fakeClock();
    let streak = 0;
    const delays: number[] = [];
    for (let i = 0; i < 12; i++) {
      const startedAt = clock.now();
      clock.advance(1000); // each lives a second
      const next = afterCrash(streak, startedAt, clock.now());
      streak = next.streak;
      delays.push(next.restartDelayMs);
    }
    assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000, 30_000]);

    const startedAt = clock.now();
    clock.advance(CRASH_WINDOW_MS - 1);
    assert.deepEqual(afterCrash(streak, startedAt, clock.now()), { streak: 13, restartDelayMs: 30_000 });
    clock.advance(1);
    assert.deepEqual(afterCrash(streak, startedAt, clock.now()), { streak: 1, restartDelayMs: 100 });
  });
});
