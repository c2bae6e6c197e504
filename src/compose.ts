/**
 * What the composition roots (serve, worker, gateway) share: the data dir, the isolation driver with
 * its start-up log line, the pool settings, and instance output in the log.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { selectDriver, type SelectedDriver } from './adapters/isolation/select.js';
import type { Config } from './config.js';
import type { PoolSettings } from './core/pool.js';
import type { FunctionRecord } from './core/types.js';
import { secretMasker } from './secret-mask.js';

export interface RunningServer {
  url: string;
  token: string;
  driver: string;
  close(): Promise<void>;
}

/** 0711: sandboxes run as other uids and must traverse to their bind-mounted code, nothing more. */
export function prepareDataDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  fs.chmodSync(dir, 0o711);
}

/** Picks the isolation driver and says which and why (loudly when there is none). */
export async function startIsolation(config: Config, log: Logger, cgroupParent: string): Promise<SelectedDriver> {
  const selected = await selectDriver(config.isolation, {
    runDir: path.join(config.dataDir, 'run'),
    pidsLimit: config.pidsLimit,
    tmpMb: config.tmpMb,
    vmCacheDir: config.vmCacheDir,
    onProgress: (message) => log.info({}, message),
    cgroupParent,
  });
  const { driver, reason } = selected;
  if (driver.name === 'none') log.warn({ isolation: 'none' }, `NO ISOLATION: ${reason}`);
  else log.info({ isolation: driver.name }, `isolation: ${reason}`);
  return selected;
}

export function poolSettings(config: Config): PoolSettings {
  return {
    maxQueue: config.maxQueue,
    scaleDownGraceMs: config.scaleDownGraceMs,
    startTimeoutMs: config.startTimeoutMs,
    stopGraceMs: config.stopGraceMs,
    startBackoff: config.startBackoff,
  };
}

/** Instance output goes to the log, tagged with function and instance, env var values masked. */
export function instanceLogger(logger: Logger): (fn: FunctionRecord, instance: string, stream: 'stdout' | 'stderr', line: string) => void {
  const maskers = new WeakMap<FunctionRecord, (line: string) => string>();
  return (fn, instance, stream, line) => {
    let mask = maskers.get(fn);
    if (!mask) maskers.set(fn, (mask = secretMasker(fn.env_vars)));
    logger.info({ function: fn.name, instance, stream }, mask(line));
  };
}
