/**
 * What the composition roots (serve, worker, gateway) share: the data dir, the isolation driver with
 * its start-up log line, the pool settings, and instance output into the function logs.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { startMetricsListener } from './adapters/http/system-routes.js';
import { selectDriver, type SelectedDriver } from './adapters/isolation/select.js';
import { WarmPool, type WarmPoolStatus, withWarmPool } from './adapters/isolation/warm-pool.js';
import { PrometheusMetrics, type PrometheusSources } from './adapters/metrics/prometheus.js';
import type { Config, FunctionLogSettings } from './config.js';
import { AsyncDispatcher, AsyncInvocations, type DispatcherDeps } from './core/async-invocations.js';
import type { FunctionService } from './core/functions.js';
import { LogWriter } from './core/log-writer.js';
import { FUNCTION_DEFAULTS } from './core/function-spec.js';
import type { PoolDeps, PoolSettings } from './core/pool.js';
import type { AsyncQueue, IsolationDriver, LogSink } from './core/ports.js';
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

/**
 * Picks the isolation driver and says which and why (loudly when there is none), behind a warm pool
 * of pre-started instances where the driver can have one and AETHER_WARM_POOL_MB allows it.
 */
export async function startIsolation(config: Config, log: Logger, cgroupParent: string): Promise<SelectedDriver> {
  const selected = await selectDriver(config.isolation, {
    runDir: path.join(config.dataDir, 'run'),
    pidsLimit: config.pidsLimit,
    openFilesLimit: config.openFilesLimit,
    tmpMb: config.tmpMb,
    fastStart: config.fastStart,
    vmCacheDir: config.vmCacheDir,
    kernel: config.kernel,
    firecrackerJailer: config.firecrackerJailer,
    vmSnapshots: config.vmSnapshots,
    onProgress: (message) => log.info({}, message),
    cgroupParent,
  });
  const { reason } = selected;
  const driver = withWarmPool(selected.driver, {
    settings: { ...config.warmPool, defaultMemoryMb: FUNCTION_DEFAULTS.memory_mb },
    startTimeoutMs: config.startTimeoutMs,
    log,
  });
  if (driver.name === 'none') log.warn({ isolation: 'none' }, `NO ISOLATION: ${reason}`);
  else
    log.info({ isolation: driver.name, warm_pool_mb: driver === selected.driver ? 0 : config.warmPool.budgetMb }, `isolation: ${reason}`);
  return { driver, reason };
}

/** For /api/system: the warm pool's state, when the driver has one. */
export async function warmPoolInfo(driver: IsolationDriver): Promise<{ warm_pool?: WarmPoolStatus }> {
  return driver instanceof WarmPool ? { warm_pool: await driver.status() } : {};
}

/** The process's metrics, and their own listener when AETHER_METRICS_LISTEN asks for one. */
export async function startMetrics(
  config: Config,
  logger: Logger,
  sources: Omit<PrometheusSources, 'log'>,
): Promise<{ metrics: PrometheusMetrics; close(): Promise<void> }> {
  const metrics = new PrometheusMetrics({ ...sources, log: logger });
  const listener = config.metricsListen && (await startMetricsListener(config.metricsListen, metrics, logger));
  if (listener) logger.info({ address: listener.server.address() }, 'serving /metrics without a token on its own listener');
  return { metrics, close: async () => void (await listener?.close()) };
}

/** The longest wait between attempts of an async invocation, however the backoff grows. */
const ASYNC_RETRY_MAX_MS = 15 * 60_000;
/** How often a dispatcher looks at the queue unprompted: for retries falling due, and events other processes queued. */
const ASYNC_POLL_MS = 200;

/**
 * Runs queued async invocations (serve, gateway): at most `perFunction` of a function at once, so
 * that most of its capacity stays for synchronous requests.
 */
export function startAsyncInvocations(
  config: Config,
  log: Logger,
  queue: AsyncQueue,
  functions: FunctionService,
  attempt: DispatcherDeps['attempt'],
): { invocations: AsyncInvocations; dispatcher: AsyncDispatcher } {
  const dispatcher = new AsyncDispatcher({
    queue,
    functions,
    attempt,
    perFunction: config.async.perFunction,
    retry: { baseDelayMs: config.async.retryBaseMs, maxDelayMs: Math.max(config.async.retryBaseMs, ASYNC_RETRY_MAX_MS) },
    pollMs: ASYNC_POLL_MS,
    log,
  });
  dispatcher.start();
  return { invocations: new AsyncInvocations(queue, functions, () => dispatcher.notify()), dispatcher };
}

export function poolSettings(config: Config): PoolSettings {
  return {
    maxQueue: config.maxQueue,
    scaleDownGraceMs: config.scaleDownGraceMs,
    startTimeoutMs: config.startTimeoutMs,
    startsAtOnce: config.startsAtOnce,
    stopGraceMs: config.stopGraceMs,
    startBackoff: config.startBackoff,
  };
}

/**
 * Instance output and platform events go to the function logs (rate limited, env var values masked),
 * and into the server's own log only at `echoLevel` (debug by default).
 */
export function functionLogs(
  settings: FunctionLogSettings,
  logger: Logger,
  sink: LogSink,
  opts: { onDropped?(fn: FunctionRecord, count: number): void } = {},
): Pick<PoolDeps, 'onInstanceLog' | 'onInstanceEvent'> {
  const maskers = new WeakMap<FunctionRecord, (line: string) => string>();
  const level = settings.echoLevel;
  const writer = new LogWriter({
    sink,
    limits: settings,
    masker: (fn) => {
      let mask = maskers.get(fn);
      if (!mask) maskers.set(fn, (mask = secretMasker(fn.env_vars)));
      return mask;
    },
    echo:
      level !== 'silent' && logger.isLevelEnabled(level)
        ? (e, fn) =>
            logger[level](
              {
                function: fn.name,
                instance: e.instance_id,
                stream: e.stream,
                request_id: e.request_id ?? undefined,
                event: e.event ?? undefined,
              },
              e.message,
            )
        : undefined,
    onDropped: opts.onDropped,
  });
  return {
    onInstanceLog: (fn, instance, stream, line, requestId) => writer.line(fn, instance, stream, line, requestId),
    onInstanceEvent: (fn, instance, event) => writer.event(fn, instance, event),
  };
}
