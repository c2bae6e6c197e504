/** Configuration: defaults, and one clear line naming the setting when something is wrong. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, loadClusterConfig, loadConfig, loadWorkerConfig } from '../src/config.ts';

const cluster = {
  ETCD_ENDPOINTS: 'http://10.0.0.1:2379, http://10.0.0.2:2379',
  REDIS_ADDR: '10.0.0.3:6379',
  MINIO_ENDPOINT: 'http://minio:9000',
  MINIO_ACCESS_KEY: 'k',
  MINIO_SECRET_KEY: 's',
  AETHER_API_TOKEN: '0123456789abcdef',
};

test('single node: defaults', () => {
  const c = loadConfig({});
  assert.equal(c.port, 8080);
  assert.equal(c.isolation, 'auto');
  assert.equal(c.limits.maxCompressedBytes, 50 * 1024 * 1024);
  assert.equal(c.limits.maxUncompressedBytes, 250 * 1024 * 1024);
  assert.equal(c.limits.maxEntries, 10_000);
  assert.deepEqual(c.body, { bufferBytes: 1024 * 1024, timeoutMs: 30_000, idleTimeoutMs: 10_000 });
  assert.equal(c.apiToken, undefined);
  assert.deepEqual(c.startBackoff, { initialMs: 1000, maxMs: 60_000 });
  // The cap is never below the first delay.
  assert.deepEqual(loadConfig({ AETHER_START_BACKOFF_MS: '5000', AETHER_START_BACKOFF_MAX_MS: '100' }).startBackoff, {
    initialMs: 5000,
    maxMs: 5000,
  });
});

test('function logs: defaults and limits', () => {
  assert.deepEqual(loadConfig({}).functionLogs, {
    retentionMs: 72 * 3_600_000,
    maxBytes: 256 * 1024 * 1024,
    maxLinesPerFunction: 50_000,
    linesPerSecond: 1000,
    bytesPerSecond: 1024 * 1024,
    echoLevel: 'debug',
  });
  assert.equal(loadConfig({ AETHER_LOG_RETENTION_H: '0.5' }).functionLogs.retentionMs, 1_800_000);
  assert.throws(() => loadConfig({ AETHER_LOG_LINES_PER_S: '0' }), /AETHER_LOG_LINES_PER_S/);
  assert.throws(() => loadConfig({ AETHER_FUNCTION_LOG_LEVEL: 'loud' }), /AETHER_FUNCTION_LOG_LEVEL/);
});

test('invalid values name the setting', () => {
  assert.throws(
    () => loadConfig({ PORT: '70000' }),
    (e: Error) => e instanceof ConfigError && /^invalid configuration: PORT: /.test(e.message),
  );
  assert.throws(() => loadConfig({ AETHER_ISOLATION: 'docker' }), /AETHER_ISOLATION/);
  assert.throws(() => loadConfig({ AETHER_API_TOKEN: 'short' }), /AETHER_API_TOKEN: must be at least 16 characters/);
});

test('the Lambda Invoke API key: both parts or neither, off by default', () => {
  assert.equal(loadConfig({}).lambdaKey, undefined);
  const key = { AETHER_LAMBDA_ACCESS_KEY_ID: 'AKIAEXAMPLE000000001', AETHER_LAMBDA_SECRET_ACCESS_KEY: 'secret-0123456789abcdef' };
  assert.deepEqual(loadConfig(key).lambdaKey, { accessKeyId: 'AKIAEXAMPLE000000001', secretAccessKey: 'secret-0123456789abcdef' });
  assert.throws(() => loadConfig({ AETHER_LAMBDA_ACCESS_KEY_ID: key.AETHER_LAMBDA_ACCESS_KEY_ID }), /set both .* or neither/);
  assert.throws(() => loadConfig({ ...key, AETHER_LAMBDA_ACCESS_KEY_ID: 'short' }), /AETHER_LAMBDA_ACCESS_KEY_ID: must be 16-128/);
  assert.throws(
    () => loadConfig({ ...key, AETHER_LAMBDA_SECRET_ACCESS_KEY: 'short' }),
    /AETHER_LAMBDA_SECRET_ACCESS_KEY: must be at least 16/,
  );
});

test('metrics access: token by default, public, or a listener of its own', () => {
  assert.equal(loadConfig({}).metricsPublic, false);
  assert.equal(loadConfig({}).metricsListen, undefined);
  assert.equal(loadConfig({ AETHER_METRICS_PUBLIC: '1' }).metricsPublic, true);
  assert.deepEqual(loadConfig({ AETHER_METRICS_LISTEN: '10.0.0.5:9464' }).metricsListen, { host: '10.0.0.5', port: 9464 });
  assert.deepEqual(loadConfig({ AETHER_METRICS_LISTEN: '[::1]:9464' }).metricsListen, { host: '::1', port: 9464 });
  assert.throws(() => loadConfig({ AETHER_METRICS_PUBLIC: 'yes' }), /AETHER_METRICS_PUBLIC: must be 1 or 0/);
  assert.throws(() => loadConfig({ AETHER_METRICS_LISTEN: '9464' }), /AETHER_METRICS_LISTEN: must be host:port/);
  assert.throws(() => loadConfig({ AETHER_METRICS_LISTEN: 'host:99999' }), /AETHER_METRICS_LISTEN: port must be at most 65535/);
});

test('cluster: the original names, defaults, and what is missing', () => {
  const c = loadClusterConfig(cluster);
  assert.deepEqual(c.etcdEndpoints, ['http://10.0.0.1:2379', 'http://10.0.0.2:2379']);
  assert.equal(c.redisUrl, 'redis://10.0.0.3:6379');
  assert.deepEqual(c.s3, {
    endpoint: 'http://minio:9000',
    accessKeyId: 'k',
    secretAccessKey: 's',
    bucket: 'function-code',
    region: 'us-east-1',
  });
  assert.equal(c.leaseTtlS, 5);
  assert.equal(loadClusterConfig({ ...cluster, REDIS_ADDR: undefined, REDIS_URL: 'redis://r:1/2' }).redisUrl, 'redis://r:1/2');
  for (const name of ['ETCD_ENDPOINTS', 'MINIO_ENDPOINT', 'MINIO_ACCESS_KEY', 'MINIO_SECRET_KEY', 'AETHER_API_TOKEN', 'REDIS_ADDR']) {
    assert.throws(
      () => loadClusterConfig({ ...cluster, [name]: undefined }),
      new RegExp(`invalid configuration: ${name}: .*required`),
      name,
    );
  }
  assert.throws(() => loadClusterConfig({ ...cluster, ETCD_ENDPOINTS: 'not a url' }), /ETCD_ENDPOINTS/);
  assert.throws(() => loadClusterConfig({ ...cluster, REDIS_ADDR: 'nohost' }), /REDIS_ADDR: must be host:port/);
});

test('worker settings', () => {
  const w = loadWorkerConfig({ ...cluster, WORKER_IP: '10.0.0.9', AETHER_WORKER_ID: 'w-1', AETHER_WORKER_MAX_INSTANCES: '40' });
  assert.equal(w.workerIp, '10.0.0.9');
  assert.equal(w.workerId, 'w-1');
  assert.equal(w.maxInstances, 40);
  assert.throws(() => loadWorkerConfig({ ...cluster, AETHER_WORKER_ID: 'bad id!' }), /AETHER_WORKER_ID/);
});
