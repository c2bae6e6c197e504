/**
 * The all-in-one server (`aether serve`): composition root that wires the adapters (SQLite, local
 * code store, the chosen isolation driver, Fastify) into the core and starts listening.
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { LocalCodeStore } from './adapters/code/local-code-store.js';
import { buildApp } from './adapters/http/app.js';
import { attemptAsync } from './adapters/http/async-attempt.js';
import type { InvokeDeps } from './adapters/http/invocation.js';
import { SqliteAsyncQueue } from './adapters/store/sqlite-async-queue.js';
import { SqliteLogStore } from './adapters/store/sqlite-log-store.js';
import { SqliteStore } from './adapters/store/sqlite-store.js';
import { loadOrCreateToken } from './api-token.js';
import type { Config } from './config.js';
import { FunctionService } from './core/functions.js';
import { Scheduler } from './core/scheduler.js';
import { LocalStartFailures } from './core/start-failures.js';
import {
  functionLogs,
  poolSettings,
  prepareDataDir,
  startAsyncInvocations,
  startIsolation,
  startMetrics,
  warmPoolInfo,
  type RunningServer,
} from './compose.js';
import { AETHER_VERSION } from './version.js';

const MB = 1024 * 1024;

export async function startServer(config: Config, logger: Logger = pino({ level: config.logLevel })): Promise<RunningServer> {
  prepareDataDir(config.dataDir);
  const { token, created, file } = loadOrCreateToken(config.dataDir, config.apiToken);
  if (created) process.stdout.write(`\nAether API token (saved to ${file}, shown only this once):\n\n  ${token}\n\n`);

  // One cgroup parent per data dir: a restart sweeps its own leftovers and nobody else's.
  const { driver, reason } = await startIsolation(
    config,
    logger,
    `aether/${createHash('sha256').update(config.dataDir).digest('hex').slice(0, 12)}`,
  );

  const store = new SqliteStore(path.join(config.dataDir, 'aether.db'));
  const logs = new SqliteLogStore(path.join(config.dataDir, 'logs.db'), config.functionLogs, logger);
  const code = new LocalCodeStore(path.join(config.dataDir, 'code'), config.limits);
  const startFailures = new LocalStartFailures();
  const telemetry = await startMetrics(config, logger, {
    functionNames: async () => (await store.list()).map((fn) => fn.name),
    instances: () => scheduler.instanceCounts(),
  });
  const { metrics } = telemetry;
  const scheduler: Scheduler = new Scheduler({
    driver,
    startFailures,
    codeDir: (hash) => code.dir(hash),
    log: logger,
    metrics,
    settings: poolSettings(config),
    ...functionLogs(config.functionLogs, logger, logs, { onDropped: (fn, lines) => metrics.logLinesDropped(fn, lines) }),
  });
  const asyncQueue = new SqliteAsyncQueue(path.join(config.dataDir, 'async.db'));
  const functions = new FunctionService(
    store,
    code,
    store,
    scheduler,
    startFailures,
    logs,
    { versionsKept: config.versionsKept },
    asyncQueue,
  );
  for (const fn of await store.list()) scheduler.updated(fn); // warm min_instances after a restart

  const invoke: InvokeDeps = {
    functions,
    router: scheduler,
    invocations: store,
    metrics,
    startTimeoutMs: config.startTimeoutMs,
    body: config.body,
  };
  const async = startAsyncInvocations(config, logger, asyncQueue, functions, (fn, ev) => attemptAsync(invoke, fn, ev));
  invoke.async = async.invocations;

  const startedAt = new Date().toISOString();
  const app = await buildApp({
    logger,
    token,
    system: {
      info: async () => ({
        role: 'serve',
        version: AETHER_VERSION,
        node: process.version,
        started_at: startedAt,
        isolation: { driver: driver.name, reason },
        ...(await warmPoolInfo(driver)),
        capacity: { cpus: os.availableParallelism(), memory_mb: Math.round(os.totalmem() / MB), instances: scheduler.instanceCount() },
      }),
      metrics,
      metricsPublic: config.metricsPublic,
    },
    api: { functions, maxUploadBytes: config.limits.maxCompressedBytes },
    lambdaKeys: config.lambdaKey && [config.lambdaKey],
    invoke,
  });
  const address = await app.listen({ port: config.port, host: config.host });
  logger.info({ url: address, data_dir: config.dataDir }, 'aether is serving');

  return {
    url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`,
    token,
    driver: driver.name,
    close: async () => {
      await async.dispatcher.stop();
      await app.close();
      await telemetry.close();
      await scheduler.shutdown();
      store.close();
      logs.close();
      asyncQueue.close();
    },
  };
}
