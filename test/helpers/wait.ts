import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

/** Polls `cond` until it holds, failing the test with `what` after `timeoutMs`. */
export async function until(cond: () => Promise<boolean>, timeoutMs: number, what: string, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(everyMs);
  }
  assert.fail(`timed out waiting for ${what}`);
}
