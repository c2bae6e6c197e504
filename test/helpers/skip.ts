/**
 * The one way a test skips. A test that cannot run here (no root, no QEMU, a driver that does not work on
 * this host) skips with the reason, and says so loudly: a line on stderr that stands out in the run's output,
 * besides the `# SKIP reason` in the runner's report, so that a skip is never mistaken for a pass.
 */
import type { TestContext } from 'node:test';

function announce(why: string): void {
  process.stderr.write(`\n*** SKIPPED: ${why}\n\n`);
}

/** For a test's or describe's options: `{ skip: skipUnless(ok, why) }` runs it when `ok`, else skips it loudly. */
export function skipUnless(ok: boolean, why: string): false | string {
  if (ok) return false;
  announce(why);
  return why;
}

/**
 * Inside a running test, for what is only known then: when `ok` is false, marks the test skipped with `why`
 * (loudly) and returns false, and the test returns: `if (!requireOrSkip(t, ok, why)) return;`.
 */
export function requireOrSkip(t: TestContext, ok: boolean, why: string): boolean {
  if (ok) return true;
  announce(`${t.name}: ${why}`);
  t.skip(why);
  return false;
}
