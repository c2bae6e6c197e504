/**
 * A burst from zero: 200 requests at once to a handler function with no instance, concurrency 1 and
 * at most 20 instances, so that most requests wait in Aether's queue for one of the instances the
 * burst itself starts. Measured last in a set-up; its p99 is judged against the single cold start
 * measured in the same run.
 */
import { performance } from 'node:perf_hooks';
import { Agent, request } from 'undici';
import type { AetherServer, Setup } from './aether.js';
import { functionFiles } from './functions.js';
import { summarize, type Summary } from './stats.js';

export const BURST = { requests: 200, concurrency: 1, max_instances: 20 };

export interface BurstRow {
  setup: Setup;
  driver: string;
  mode: 'handler';
  requests: number;
  /** Requests that did not answer 200 (or failed to connect). */
  failures: number;
  /** Request sent -> whole body read, of the requests that succeeded. */
  latency: Summary;
}

export async function measureBurst(aether: AetherServer): Promise<BurstRow> {
  const fn = await aether.deploy(
    { name: 'burst', concurrency: BURST.concurrency, max_instances: BURST.max_instances },
    functionFiles('handler'),
  );
  // One connection per request: the burst is the requests arriving together, not a client-side queue.
  const dispatcher = new Agent({ connections: BURST.requests });
  try {
    const one = async (): Promise<number | undefined> => {
      const start = performance.now();
      try {
        const { statusCode, body } = await request(`${aether.url}/functions/${fn.name}/`, { dispatcher });
        await body.dump();
        return statusCode === 200 ? performance.now() - start : undefined;
      } catch {
        return undefined;
      }
    };
    const results = await Promise.all(Array.from({ length: BURST.requests }, one));
    const ok = results.filter((ms) => ms !== undefined);
    if (ok.length === 0) throw new Error(`none of ${BURST.requests} requests at once to ${fn.name} succeeded`);
    return {
      setup: aether.setup,
      driver: aether.driver,
      mode: 'handler',
      requests: BURST.requests,
      failures: BURST.requests - ok.length,
      latency: summarize(ok),
    };
  } finally {
    // Its 20 instances are left to the set-up's stop (the burst is measured last): deleting them first
    // took a loaded cluster worker longer than the bench waits for.
    await dispatcher.close();
  }
}
