/**
 * A cluster worker (`aether worker`): runs instances of any function on this host, announces itself
 * and its instances in etcd, takes cold starts from its Redis provisioning stream, fetches code from
 * S3 (cached by hash), and serves invocations forwarded by gateways.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { EtcdDiscovery } from './adapters/etcd/discovery.js';
import { EtcdFunctionStore } from './adapters/etcd/function-store.js';
import { EtcdStartFailures } from './adapters/etcd/start-failures.js';
import { buildApp } from './adapters/http/app.js';
import { createRedis, ready as redisReady } from './adapters/redis/connection.js';
import { RedisLogStore } from './adapters/redis/log-stream.js';
import { enqueuedAt } from './adapters/redis/provision-jobs.js';
import { ProvisionQueue } from './adapters/redis/provision-queue.js';
import { S3CodeStore } from './adapters/s3/s3-code-store.js';
import type { WorkerConfig } from './config.js';
import { errorMessage } from './core/errors.js';
import type { WorkerInfo } from './core/ports.js';
import { Scheduler } from './core/scheduler.js';
import { resolveQualified } from './core/versions.js';
import { functionLogs, poolSettings, prepareDataDir, startIsolation, startMetrics, warmPoolInfo, type RunningServer } from './compose.js';
import { AETHER_VERSION } from './version.js';

const MB = 1024 * 1024;
/** How long start-up waits for Redis (its first connection), as connectRedis does. */
const REDIS_START_WAIT_MS = 2000;

export async function startWorker(config: WorkerConfig, logger: Logger = pino({ level: config.logLevel })): Promise<RunningServer> {
  prepareDataDir(config.dataDir);
  const workerId = config.workerId ?? persistentId(config.dataDir);
  const log = logger.child({ worker: workerId });
  const { driver, reason } = await startIsolation(config, log, `aether/${workerId}`);

  const functions = new EtcdFunctionStore(config.etcdEndpoints, { log });
  const discovery = new EtcdDiscovery(config.etcdEndpoints, { leaseTtlS: config.leaseTtlS, log });
  const code = new S3CodeStore({ ...config.s3, cacheDir: path.join(config.dataDir, 'code'), limits: config.limits });
  // Created, not awaited: nothing may be awaited before the subscription to function changes below.
  const redis = createRedis(config.redisUrl);
  const queue = new ProvisionQueue(redis, log);
  const logs = new RedisLogStore(redis, config.functionLogs, log);

  // Warm instances (min_instances) start as soon as the functions are loaded, which can be before
  // the worker listens and knows its URL: their announcements wait for the worker's registration.
  let info: WorkerInfo | undefined;
  let registered!: (info: WorkerInfo) => void;
  const registration = new Promise<WorkerInfo>((resolve) => (registered = resolve));
  const announce = () => {
    if (!info) return; // registering the worker counts its instances
    info = { ...info, instances: scheduler.instanceCount() };
    discovery.updateWorker(info).catch((err: Error) => log.warn({ err: err.message }, 'could not update the worker registration'));
  };
  const startFailures = new EtcdStartFailures(config.etcdEndpoints, { log });
  const telemetry = await startMetrics(config, log, {
    functionNames: async () => (await functions.list()).map((fn) => fn.name),
    instances: () => scheduler.instanceCounts(),
  });
  const { metrics } = telemetry;
  const scheduler: Scheduler = new Scheduler({
    driver,
    startFailures,
    codeDir: (hash) => code.dir(hash),
    log,
    metrics,
    settings: poolSettings(config),
    ...functionLogs(config.functionLogs, log, logs, { onDropped: (fn, lines) => metrics.logLinesDropped(fn, lines) }),
    onInstanceReady: (fn, instanceId) => {
      const startedAt = new Date().toISOString();
      void registration.then(({ url }) => {
        const route = {
          function_id: fn.id,
          instance_id: instanceId,
          worker_id: workerId,
          worker_url: url,
          version: fn.version,
          concurrency: fn.concurrency,
          started_at: startedAt,
        };
        discovery.registerInstance(route).catch((err: Error) => log.warn({ err: err.message }, 'instance registration deferred'));
        announce();
      });
    },
    onInstanceGone: (fn, instanceId) => {
      void registration.then(() => {
        discovery.unregisterInstance(fn.id, instanceId).catch((err: Error) => log.warn({ err: err.message }, 'instance removal deferred'));
        announce();
      });
    },
  });
  // Code and config changes arrive through etcd: instances of old versions drain, deleted functions stop.
  // Subscribed before anything is awaited: the functions' first load (warm instances to start) is a change too.
  functions.onChange((ev) => {
    if (ev.type === 'put') scheduler.updated(ev.fn);
    // Its stopping instances still log: the stream goes once they are gone.
    else void scheduler.removed(ev.id).then(() => logs.remove(ev.id));
  });
  // A restart reclaims nothing of its previous life: routes to instances that died with it go first
  // (the new instances' routes wait for the worker's registration, below).
  const stale = await discovery.removeStaleInstances(workerId).catch((err: unknown) => {
    log.warn({ err: errorMessage(err) }, 'could not remove the routes left by a previous run; they go when its lease expires');
    return 0;
  });
  if (stale > 0) log.info({ stale }, 'removed routes left by a previous run');
  await redisReady(redis, REDIS_START_WAIT_MS); // a worker starts while Redis is down, and says so per request
  await functions.ready();

  // Gateways name the version they chose (`id:7`): a worker never picks one itself.
  const lookup = { resolve: (idOrName: string, qualifier?: string) => resolveQualified(functions, idOrName, qualifier) };
  const capacity = {
    cpus: os.availableParallelism(),
    memory_mb: Math.round(os.totalmem() / MB),
    max_instances: config.maxInstances ?? Math.max(1, Math.floor((os.totalmem() * 0.75) / (128 * MB))),
  };
  const startedAt = new Date().toISOString();
  const app = await buildApp({
    logger: log,
    token: config.apiToken,
    system: {
      info: async () => ({
        role: 'worker',
        version: AETHER_VERSION,
        node: process.version,
        started_at: startedAt,
        worker_id: workerId,
        isolation: { driver: driver.name, reason },
        ...(await warmPoolInfo(driver)),
        capacity: { ...capacity, instances: scheduler.instanceCount() },
      }),
      metrics,
      metricsPublic: config.metricsPublic,
    },
    invoke: {
      functions: lookup,
      router: scheduler,
      metrics,
      startTimeoutMs: config.startTimeoutMs,
      body: config.body,
      requireToken: config.apiToken,
    },
    internal: { instances: (id) => scheduler.instances(id).map((i) => ({ ...i, worker_id: workerId })) },
  });
  await app.listen({ port: config.port, host: config.host });
  const port = (app.server.address() as { port: number }).port;
  const url = `http://${config.workerIp ?? defaultIp()}:${port}`;
  info = {
    id: workerId,
    url,
    driver: driver.name,
    driver_reason: reason,
    ...capacity,
    instances: scheduler.instanceCount(),
    started_at: startedAt,
  };
  await discovery.registerWorker(info);
  registered(info);
  const consumer = queue.consume({
    workerId,
    isAlive: (id) => discovery.hasWorker(id),
    handle: async (job) => {
      metrics.provisionLag(Date.now() - enqueuedAt(job.jobId));
      const fn = await functions.get(job.functionId);
      if (!fn) return; // deleted meanwhile: nobody waits for it
      // An older version than the latest is asked for by invocations pinned to it (a version or an alias).
      const version = job.version === fn.version ? fn : await functions.version(fn.id, job.version);
      if (!version) return; // removed meanwhile
      await scheduler.provision(version);
    },
  });
  log.info({ url, worker_id: workerId }, 'aether is serving');

  return {
    url: `http://127.0.0.1:${port}`,
    token: config.apiToken,
    driver: driver.name,
    close: async () => {
      await consumer.stop();
      await app.close();
      await telemetry.close();
      await scheduler.shutdown();
      await logs.close();
      await discovery.close();
      startFailures.close();
      functions.close();
      code.close();
      redis.disconnect();
    },
  };
}

/** A worker keeps its id across restarts, so it can recognise (and clean up) its previous life. */
function persistentId(dataDir: string): string {
  const file = path.join(dataDir, 'worker-id');
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    const id = `${os
      .hostname()
      .replace(/[^A-Za-z0-9_.-]/g, '-')
      .slice(0, 40)}-${randomUUID().slice(0, 8)}`;
    fs.writeFileSync(file, `${id}\n`);
    return id;
  }
}

/** The first non-internal IPv4 address: how other hosts most likely reach this one (else set WORKER_IP). */
function defaultIp(): string {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}
