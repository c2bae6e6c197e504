/**
 * Cold start of the real apps (bench/apps.ts): each sample is the first request to a function that was
 * just deployed with code Aether has never seen (a unique hash), interleaved with the same app run by
 * plain `node` on the host. Aether prepares a function's start at deploy time (docs/architecture.md,
 * "Fast starts"); the sample waits until that is done, so it measures the start, not the deploy.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AetherServer, Setup } from './aether.js';
import { type App, APPS, appFiles, writeApp } from './apps.js';
import { type AetherSample, aetherColdStart } from './cold-start.js';
import { directFileColdStart } from './direct.js';
import { ratio, summarize, type Summary } from './stats.js';

const BATCH = 5;
const PREPARE_TIMEOUT_MS = 60_000;

export interface AppColdStartRow {
  setup: Setup;
  driver: string;
  app: App;
  /** How Aether started it (the function's `start.mode`), and why not faster if it fell back. */
  start_mode: string;
  fallback_reason?: string;
  aether: Summary;
  /** Of that, starting the instance until its agent dialed in (the app loaded and listening). */
  instance_start: Summary;
  /** Deploy-time preparation (upload answered -> start mode settled). */
  prepare: Summary;
  node: Summary;
  ratio_p50: number;
}

interface StartStatus {
  mode: string;
  reason?: string;
}

export async function measureAppColdStarts(aether: AetherServer, samples: number): Promise<AppColdStartRow[]> {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-bench-apps-'));
  try {
    const rows: AppColdStartRow[] = [];
    for (const app of APPS) {
      const entry = writeApp(app, path.join(scratch, app));
      const taken: Array<AetherSample & { nodeMs: number; prepareMs: number; start: StartStatus }> = [];
      for (let first = 0; first < samples; first += BATCH) {
        const batch: string[] = [];
        for (let i = first; i < Math.min(samples, first + BATCH); i++) {
          const fn = await aether.deploy(
            { name: `app-${app}-${i}`, concurrency: 1, max_instances: 1 },
            appFiles(app, `${Date.now()}-${i}`),
          );
          batch.push(fn.id);
          const deployed = performance.now();
          const start = await settledStart(aether, fn.id);
          const prepareMs = performance.now() - deployed;
          const nodeMs = await directFileColdStart(entry);
          taken.push({ nodeMs, prepareMs, start, ...(await aetherColdStart(aether, fn)) });
        }
        await aether.remove(batch);
      }
      const of = (pick: (s: (typeof taken)[number]) => number) => summarize(taken.map(pick));
      const viaAether = of((s) => s.clientMs);
      const node = of((s) => s.nodeMs);
      const last = taken.at(-1)?.start;
      rows.push({
        setup: aether.setup,
        driver: aether.driver,
        app,
        start_mode: [...new Set(taken.map((s) => s.start.mode))].join('/'),
        ...(last?.reason && { fallback_reason: last.reason }),
        aether: viaAether,
        instance_start: of((s) => s.startMs),
        prepare: of((s) => s.prepareMs),
        node,
        ratio_p50: ratio(viaAether.p50, node.p50),
      });
    }
    return rows;
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** The function's start mode once deploy-time preparation is over (`unknown` from an Aether that does not report one). */
async function settledStart(aether: AetherServer, fnId: string): Promise<StartStatus> {
  const end = Date.now() + PREPARE_TIMEOUT_MS;
  for (;;) {
    const { start } = await aether.api<{ start?: StartStatus }>('GET', `/api/functions/${fnId}`);
    if (!start) return { mode: 'unknown' };
    if (start.mode !== 'preparing') return start;
    if (Date.now() > end) throw new Error(`function ${fnId} still preparing its start after ${PREPARE_TIMEOUT_MS} ms`);
    await sleep(20);
  }
}
