/**
 * Cold start: "no instance -> first byte of the response" through Aether, interleaved sample by
 * sample with the baseline (`node -e` of the same function: spawn -> first byte). Each Aether sample
 * is the first request to a function deployed for it. Samples run in batches, and a batch's functions
 * are deleted (which waits until their instances are gone) before the next: teardowns never overlap
 * a measurement, and no more than a batch of idle instances lingers during one.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AetherServer, FunctionInfo, Invocation, Setup } from './aether.js';
import { directColdStart } from './direct.js';
import { firstByte } from './first-byte.js';
import { functionFiles, MODES, type Mode } from './functions.js';
import { ratio, summarize, type Summary } from './stats.js';

const TIMEOUT_MS = 30_000;
const BATCH = 5;
/** A cluster gateway writes the invocation record to Redis just after the response: allow for that. */
const RECORD_WAIT_MS = 2_000;

export interface ColdStartRow {
  setup: Setup;
  driver: string;
  mode: Mode;
  /** Client side: request sent -> first response byte. */
  aether: Summary;
  /** Aether's own record of the same requests (whole request, from its invocation log). */
  aether_recorded: Summary;
  /** Of that, starting the instance: until its agent dialed in ("instance ready" in Aether's log). */
  instance_start: Summary;
  node: Summary;
  ratio_p50: number;
  ratio_p95: number;
}

export async function measureColdStarts(aether: AetherServer, samples: number): Promise<ColdStartRow[]> {
  const taken = new Map(MODES.map((mode) => [mode, [] as Sample[]]));
  for (let first = 0; first < samples; first += BATCH) {
    const batch: FunctionInfo[] = [];
    for (let i = first; i < Math.min(samples, first + BATCH); i++) {
      for (const mode of MODES) {
        const fn = await aether.deploy({ name: `cold-${mode}-${i}`, concurrency: 1, max_instances: 1 }, functionFiles(mode));
        batch.push(fn);
        const nodeMs = await directColdStart(mode);
        taken.get(mode)!.push({ nodeMs, ...(await aetherColdStart(aether, fn)) });
      }
    }
    await aether.remove(batch.map((fn) => fn.id));
  }
  return MODES.map((mode) => {
    const of = (pick: (s: Sample) => number) => summarize(taken.get(mode)!.map(pick));
    const [viaAether, node] = [of((s) => s.clientMs), of((s) => s.nodeMs)];
    return {
      setup: aether.setup,
      driver: aether.driver,
      mode,
      aether: viaAether,
      aether_recorded: of((s) => s.recordedMs),
      instance_start: of((s) => s.startMs),
      node,
      ratio_p50: ratio(viaAether.p50, node.p50),
      ratio_p95: ratio(viaAether.p95, node.p95),
    };
  });
}

export interface AetherSample {
  clientMs: number;
  recordedMs: number;
  startMs: number;
}

type Sample = AetherSample & { nodeMs: number };

/** The first request to a function never run: client first byte, Aether's record, the instance's start. */
export async function aetherColdStart(aether: AetherServer, fn: FunctionInfo): Promise<AetherSample> {
  const { ms, status } = await firstByte(aether.port, `/functions/${fn.name}/`, performance.now(), TIMEOUT_MS);
  if (status !== 200) throw new Error(`cold request to ${fn.name} answered ${status}`);
  const first = await firstInvocation(aether, fn);
  // The bench's premise: if Aether had an instance already, this sample measured nothing.
  if (!first?.cold_start || !first.instance_id)
    throw new Error(`the first request to ${fn.name} was not a cold start: ${JSON.stringify(first)}`);
  return { clientMs: ms, recordedMs: first.duration_ms, startMs: await aether.startMs(first.instance_id) };
}

async function firstInvocation(aether: AetherServer, fn: FunctionInfo): Promise<Invocation | undefined> {
  const end = Date.now() + RECORD_WAIT_MS;
  for (;;) {
    const [first] = await aether.invocations(fn.id);
    if (first || Date.now() > end) return first;
    await sleep(5);
  }
}
