/**
 * A cluster gateway (`aether gateway`): the same HTTP API as the all-in-one server, keeping no state
 * of its own. Function records live in etcd, invocation records in Redis, code in S3; invocations go
 * to workers found through etcd discovery, cold starts through the Redis provisioning queue.
 */
import net from 'node:net';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { request } from 'undici';
import { EtcdDiscovery } from './adapters/etcd/discovery.js';
import { EtcdFunctionStore } from './adapters/etcd/function-store.js';
import { EtcdStartFailures } from './adapters/etcd/start-failures.js';
import { buildApp } from './adapters/http/app.js';
import { CLUSTER_TOKEN_HEADER } from './adapters/http/auth.js';
import { attemptAsync } from './adapters/http/async-attempt.js';
import type { InvokeDeps } from './adapters/http/invocation.js';
import { RedisAsyncQueue } from './adapters/redis/async-queue.js';
import { connectRedis } from './adapters/redis/connection.js';
import { RedisInvocationLog } from './adapters/redis/invocation-log.js';
import { RedisLogStore } from './adapters/redis/log-stream.js';
import { ProvisionQueue } from './adapters/redis/provision-queue.js';
import { S3CodeStore } from './adapters/s3/s3-code-store.js';
import type { ClusterConfig } from './config.js';
import { ClusterRouter } from './core/cluster-router.js';
import { FunctionService } from './core/functions.js';
import type { WorkerInfo } from './core/ports.js';
import type { InstanceInfo } from './core/types.js';
import { prepareDataDir, startAsyncInvocations, startMetrics, type RunningServer } from './compose.js';
import { AETHER_VERSION } from './version.js';

export async function startGateway(config: ClusterConfig, logger: Logger = pino({ level: config.logLevel })): Promise<RunningServer> {
  prepareDataDir(config.dataDir);
  const store = new EtcdFunctionStore(config.etcdEndpoints, { log: logger });
  const discovery = new EtcdDiscovery(config.etcdEndpoints, { leaseTtlS: config.leaseTtlS, log: logger });
  const code = new S3CodeStore({ ...config.s3, cacheDir: path.join(config.dataDir, 'code'), limits: config.limits });
  await code.ensureBucket().catch((err: Error) => logger.warn({ err: err.message }, 'S3 bucket not ready yet; uploads will retry'));
  const redis = await connectRedis(config.redisUrl);
  const invocations = new RedisInvocationLog(redis, logger);
  const workerHeaders = { [CLUSTER_TOKEN_HEADER]: config.apiToken };
  const startFailures = new EtcdStartFailures(config.etcdEndpoints, { log: logger });

  const router = new ClusterRouter({
    directory: discovery,
    provision: new ProvisionQueue(redis, logger),
    connect: (worker) => connectTo(worker),
    workerInstances: async (worker, functionId) => {
      const res = await request(`${worker.url}/internal/functions/${encodeURIComponent(functionId)}/instances`, {
        headers: workerHeaders,
        headersTimeout: 2000,
        bodyTimeout: 2000,
      });
      if (res.statusCode !== 200) throw new Error(`worker ${worker.id} answered ${res.statusCode}`);
      return (await res.body.json()) as InstanceInfo[];
    },
    workerHeaders,
    startFailures,
    log: logger,
  });
  // Gateways only read logs (workers write them), but deleting a function removes its stream here.
  const logs = new RedisLogStore(redis, config.functionLogs, logger);
  const asyncQueue = new RedisAsyncQueue(redis, logger, config.asyncLeaseMs);
  const functions = new FunctionService(
    store,
    code,
    invocations,
    router,
    startFailures,
    logs,
    { versionsKept: config.versionsKept },
    asyncQueue,
  );
  const telemetry = await startMetrics(config, logger, { functionNames: async () => (await store.list()).map((fn) => fn.name) });
  const { metrics } = telemetry;

  const invoke: InvokeDeps = { functions, router, invocations, metrics, startTimeoutMs: config.startTimeoutMs, body: config.body };
  // Every gateway runs async invocations; the consumer group gives each event to one of them.
  const async = startAsyncInvocations(config, logger, asyncQueue, functions, (fn, ev) => attemptAsync(invoke, fn, ev));
  invoke.async = async.invocations;

  const startedAt = new Date().toISOString();
  const app = await buildApp({
    logger,
    token: config.apiToken,
    system: {
      info: () => ({
        role: 'gateway',
        version: AETHER_VERSION,
        node: process.version,
        started_at: startedAt,
        workers: discovery.workers().length,
      }),
      metrics,
      metricsPublic: config.metricsPublic,
    },
    api: { functions, maxUploadBytes: config.limits.maxCompressedBytes, workers: () => discovery.workers() },
    lambdaKeys: config.lambdaKey && [config.lambdaKey],
    invoke,
  });
  await app.listen({ port: config.port, host: config.host });
  const port = (app.server.address() as { port: number }).port;
  logger.info({ url: `http://127.0.0.1:${port}`, role: 'gateway' }, 'aether is serving');

  return {
    url: `http://127.0.0.1:${port}`,
    token: config.apiToken,
    driver: 'cluster',
    close: async () => {
      await async.dispatcher.stop();
      await app.close();
      await telemetry.close();
      await discovery.close();
      startFailures.close();
      store.close();
      code.close();
      redis.disconnect();
    },
  };
}

function connectTo(worker: WorkerInfo): Promise<net.Socket> {
  const { hostname, port } = new URL(worker.url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port), noDelay: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
