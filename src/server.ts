/**
 * The all-in-one server (`aether serve`): composition root that wires the adapters (SQLite, local
 * code store, the chosen isolation driver, Fastify) into the core and starts listening.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { LocalCodeStore } from './adapters/code/local-code-store.js';
import { buildApp } from './adapters/http/app.js';
import { selectDriver } from './adapters/isolation/select.js';
import { SqliteStore } from './adapters/store/sqlite-store.js';
import { loadOrCreateToken } from './api-token.js';
import type { Config } from './config.js';
import { FunctionService } from './core/functions.js';
import { Scheduler } from './core/scheduler.js';
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

/** Instance output goes to the log, tagged with function and instance, env var values masked. */
export function instanceLogger(logger: Logger): (fn: FunctionRecord, instance: string, stream: 'stdout' | 'stderr', line: string) => void {
  const maskers = new WeakMap<FunctionRecord, (line: string) => string>();
  return (fn, instance, stream, line) => {
    let mask = maskers.get(fn);
    if (!mask) maskers.set(fn, (mask = secretMasker(fn.env_vars)));
    logger.info({ function: fn.name, instance, stream }, mask(line));
  };
}

export async function startServer(config: Config, logger: Logger = pino({ level: config.logLevel })): Promise<RunningServer> {
  prepareDataDir(config.dataDir);
  const { token, created, file } = loadOrCreateToken(config.dataDir, config.apiToken);
  if (created) process.stdout.write(`\nAether API token (saved to ${file}, shown only this once):\n\n  ${token}\n\n`);

  const { driver, reason } = await selectDriver(config.isolation, {
    runDir: path.join(config.dataDir, 'run'),
    pidsLimit: config.pidsLimit,
    tmpMb: config.tmpMb,
    vmCacheDir: config.vmCacheDir,
    onProgress: (message) => logger.info({}, message),
    // One cgroup parent per data dir: a restart sweeps its own leftovers and nobody else's.
    cgroupParent: `aether/${createHash('sha256').update(config.dataDir).digest('hex').slice(0, 12)}`,
  });
  if (driver.name === 'none') logger.warn({ isolation: 'none' }, `NO ISOLATION: ${reason}`);
  else logger.info({ isolation: driver.name }, `isolation: ${reason}`);

  const store = new SqliteStore(path.join(config.dataDir, 'aether.db'));
  const code = new LocalCodeStore(path.join(config.dataDir, 'code'), config.limits);
  const scheduler = new Scheduler({
    driver,
    codeDir: (hash) => code.dir(hash),
    log: logger,
    settings: {
      maxQueue: config.maxQueue,
      scaleDownGraceMs: config.scaleDownGraceMs,
      startTimeoutMs: config.startTimeoutMs,
      stopGraceMs: config.stopGraceMs,
    },
    onInstanceLog: instanceLogger(logger),
  });
  const functions = new FunctionService(store, code, store, scheduler);
  for (const fn of await store.list()) scheduler.updated(fn); // warm min_instances after a restart

  const app = await buildApp({
    logger,
    health: () => ({ isolation: driver.name, isolation_reason: reason }),
    api: { token, functions, maxUploadBytes: config.limits.maxCompressedBytes },
    invoke: { functions, router: scheduler, invocations: store, startTimeoutMs: config.startTimeoutMs },
  });
  const address = await app.listen({ port: config.port, host: config.host });
  logger.info({ url: address, data_dir: config.dataDir }, 'aether is serving');

  return {
    url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`,
    token,
    driver: driver.name,
    close: async () => {
      await app.close();
      await scheduler.shutdown();
      store.close();
    },
  };
}
