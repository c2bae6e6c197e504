/**
 * The warm pool's size (core/warm-pool.ts) as a pure function of recent cold starts, the memory budget
 * and the time: a fake clock is moved, nothing sleeps and no sandbox starts. The pool itself, with real
 * sandboxes, is in warm-pool.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type ColdStartSample, peakWithin, recentColdStarts, warmPoolTargets } from '../src/core/warm-pool.js';

const T0 = Date.parse('2026-12-04T10:00:00Z');
const settings = { budgetMb: 512, windowMs: 60_000, defaultMemoryMb: 128 };

function fakeClock(start = T0) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

const starts = (memoryMb: number, ...at: number[]): ColdStartSample[] => at.map((t) => ({ at: T0 + t, memoryMb }));
const targets = (samples: ColdStartSample[], now: number, over: Partial<typeof settings> = {}, refillMs = 200) =>
  Object.fromEntries(warmPoolTargets({ samples, refillMs, settings: { ...settings, ...over } }, now));

describe('peakWithin', () => {
  test('the most starts inside any span, sliding', () => {
    assert.equal(peakWithin([], 100), 0);
    assert.equal(peakWithin([0], 100), 1);
    assert.equal(peakWithin([0, 50, 99, 100, 150, 400], 100), 3); // 50, 99 and 100 (or 99..150) are within 100 ms
    assert.equal(peakWithin([0, 100, 200, 300], 100), 1); // exactly the span apart: never two within it
  });
});

describe('warmPoolTargets', () => {
  test('idle: one instance of the default size, so that the first request to any function finds one', () => {
    assert.deepEqual(targets([], T0), { 128: 1 });
  });

  test('budget 0 disables the pool, whatever the demand', () => {
    assert.deepEqual(targets(starts(128, 0, 1, 2), T0 + 10, { budgetMb: 0 }), {});
  });

  test('a burst grows the pool to the burst (within one refill time), capped by the budget', () => {
    assert.deepEqual(targets(starts(128, 0, 10, 20), T0 + 100), { 128: 3 });
    const burst = starts(128, ...Array.from({ length: 20 }, (_, i) => i));
    assert.deepEqual(targets(burst, T0 + 100), { 128: 4 }, '512 MB of 128 MB instances');
    assert.deepEqual(targets(burst, T0 + 100, { budgetMb: 300 }), { 128: 2 });
    assert.deepEqual(targets(burst, T0 + 100, { budgetMb: 100 }), {}, 'not even one fits');
  });

  test('starts spread wider than a refill need no more than one; a slower refill needs more', () => {
    const steady = starts(128, 0, 500, 1000, 1500);
    assert.deepEqual(targets(steady, T0 + 2000), { 128: 1 });
    assert.deepEqual(targets(steady, T0 + 2000, {}, 1000), { 128: 2 }, 'gVisor-like refill of a second');
  });

  test('demand ages out of the window as the clock moves', () => {
    const clock = fakeClock();
    const burst = starts(128, 0, 1, 2);
    clock.advance(50);
    assert.deepEqual(targets(burst, clock.now()), { 128: 3 });
    clock.advance(59_950);
    assert.deepEqual(targets(burst, clock.now()), { 128: 2 }, 'the first start left the window, two remain');
    clock.advance(2);
    assert.deepEqual(targets(burst, clock.now()), { 128: 1 }, 'back to the idle size');
  });

  test('other memory sizes get pooled instances while they see cold starts, each at least one', () => {
    const mixed = [...starts(128, ...Array.from({ length: 10 }, (_, i) => i)), ...starts(256, 5)];
    assert.deepEqual(targets(mixed, T0 + 100), { 128: 2, 256: 1 }, '128 + 256 first, then 128 MB instances while they fit');
    assert.deepEqual(
      targets(mixed, T0 + 100, { budgetMb: 300 }),
      { 128: 2 },
      'the default size first; 256 MB no longer fits, 128 MB still does',
    );
    assert.deepEqual(targets(starts(512, 0), T0 + 60_001), { 128: 1 }, 'a size without recent starts gets none');
  });

  test('samples from the future (a clock step back) do not count', () => {
    assert.deepEqual(recentColdStarts(starts(128, 0, 1000), T0 + 500, 60_000), starts(128, 0));
  });
});
