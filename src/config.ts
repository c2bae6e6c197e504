/**
 * Configuration from environment variables (flags of `aether serve` override them).
 * Invalid values fail at start with one line naming the setting.
 */
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { ISOLATION_MODES, type IsolationMode } from './adapters/isolation/drivers.js';

const MB = 1024 * 1024;
/** Where `aether serve` keeps its data and listens unless told otherwise (the CLI looks for it there too). */
const DEFAULT_DATA_DIR = './.aether';
const DEFAULT_PORT = 8080;
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const schema = z.object({
  PORT: int(0, 65535).default(DEFAULT_PORT),
  HOST: z.string().min(1).default('0.0.0.0'),
  AETHER_DATA_DIR: z.string().min(1).default(DEFAULT_DATA_DIR),
  AETHER_API_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  AETHER_ISOLATION: z.enum(ISOLATION_MODES).default('auto'),
  AETHER_VM_CACHE: z.string().min(1).optional(),
  KERNEL_PATH: z.string().min(1).optional(),
  KERNEL_MODULES_DIR: z.string().min(1).optional(),
  FIRECRACKER_JAILER: z.string().min(1).optional(),
  AETHER_VM_SNAPSHOTS: z
    .enum(['0', '1', 'false', 'true'], { error: 'must be 1 or 0' })
    .default('1')
    .transform((v) => v === '1' || v === 'true'),
  AETHER_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  AETHER_MAX_UPLOAD_MB: int(1, 10_000).default(50),
  AETHER_MAX_UNPACKED_MB: int(1, 100_000).default(250),
  AETHER_MAX_ENTRIES: int(1, 1_000_000).default(10_000),
  AETHER_MAX_QUEUE: int(0, 100_000).default(1000),
  AETHER_VERSIONS_KEPT: int(1, 10_000).default(10),
  AETHER_BODY_BUFFER_KB: int(1, 1024 * 1024).default(1024),
  AETHER_BODY_TIMEOUT_MS: int(100, 3_600_000).default(30_000),
  AETHER_BODY_IDLE_TIMEOUT_MS: int(100, 3_600_000).default(10_000),
  AETHER_SCALE_DOWN_GRACE_S: z.coerce.number().min(0).max(86_400).default(30),
  AETHER_START_TIMEOUT_MS: int(100, 600_000).default(10_000),
  AETHER_STARTS_AT_ONCE: int(1, 10_000).default(os.availableParallelism()),
  AETHER_START_BACKOFF_MS: int(10, 600_000).default(1000),
  AETHER_START_BACKOFF_MAX_MS: int(10, 3_600_000).default(60_000),
  AETHER_STOP_GRACE_MS: int(0, 600_000).default(2_000),
  AETHER_PIDS_LIMIT: int(16, 100_000).default(128),
  AETHER_INSTANCE_OPEN_FILES: int(64, 1_048_576).default(1024),
  AETHER_TMP_MB: int(1, 100_000).default(64),
  AETHER_FAST_START: z
    .enum(['0', '1', 'false', 'true'], { error: 'must be 1 or 0' })
    .default('1')
    .transform((v) => v === '1' || v === 'true'),
  AETHER_WARM_POOL_MB: int(0, 10_000_000).default(512),
  AETHER_WARM_POOL_WINDOW_S: int(1, 86_400).default(60),
  AETHER_LOG_RETENTION_H: z.coerce.number().min(0.01).max(87_600).default(72),
  AETHER_LOG_MAX_MB: int(1, 10_000_000).default(256),
  AETHER_LOG_MAX_LINES: int(10, 100_000_000).default(50_000),
  AETHER_LOG_LINES_PER_S: int(1, 10_000_000).default(1000),
  AETHER_LOG_KB_PER_S: int(1, 10_000_000).default(1024),
  AETHER_ASYNC_CONCURRENCY: int(1, 10_000).default(4),
  AETHER_ASYNC_RETRY_BASE_MS: int(10, 3_600_000).default(1000),
  AETHER_FUNCTION_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'silent']).default('debug'),
  AETHER_LAMBDA_ACCESS_KEY_ID: z
    .string()
    .regex(/^\w{16,128}$/, 'must be 16-128 letters, digits or "_" (like an AWS access key id)')
    .optional(),
  AETHER_LAMBDA_SECRET_ACCESS_KEY: z.string().min(16, 'must be at least 16 characters').optional(),
  AETHER_METRICS_PUBLIC: z
    .enum(['0', '1', 'false', 'true'], { error: 'must be 1 or 0' })
    .default('0')
    .transform((v) => v === '1' || v === 'true'),
  AETHER_METRICS_LISTEN: z
    .string()
    .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:9464')
    .transform((s) => {
      const at = s.lastIndexOf(':');
      return { host: s.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port: Number(s.slice(at + 1)) };
    })
    .refine((a) => a.port <= 65535, 'port must be at most 65535')
    .optional(),
});

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  apiToken?: string;
  isolation: IsolationMode;
  /** Guest kernels and images, shared by every Aether on the host. */
  vmCacheDir: string;
  /** A guest kernel of your own (default: Debian's cloud kernel), with its `lib/modules/<version>` if it has modules. */
  kernel: { path?: string; modulesDir?: string };
  /** QEMU: resume microVMs from snapshots (built in the background per machine size) instead of booting. */
  vmSnapshots: boolean;
  /** Run Firecracker through its jailer at this path. */
  firecrackerJailer?: string;
  logLevel: string;
  limits: { maxCompressedBytes: number; maxUncompressedBytes: number; maxEntries: number };
  maxQueue: number;
  /** The newest versions of a function whose code is kept (besides those an alias runs). */
  versionsKept: number;
  /** How invocation request bodies are read before (and after) the request takes a slot. */
  body: { bufferBytes: number; timeoutMs: number; idleTimeoutMs: number };
  scaleDownGraceMs: number;
  startTimeoutMs: number;
  /** Instances of one function that start at once at most; more wait for those to be ready. */
  startsAtOnce: number;
  /** Between start attempts of a function whose instances fail to start: doubling from initialMs up to maxMs. */
  startBackoff: { initialMs: number; maxMs: number };
  stopGraceMs: number;
  pidsLimit: number;
  /** RLIMIT_NOFILE of every sandboxed instance: what it can hold open, host sockets included. */
  openFilesLimit: number;
  tmpMb: number;
  /** Sandbox drivers prepare each function's code at deploy time for faster starts (adapters/isolation/fast-start.ts). */
  fastStart: boolean;
  /** Pre-started generic instances (bwrap, gVisor): the memory their idle instances may reserve (0: no pool), and how far back cold starts count. */
  warmPool: { budgetMb: number; windowMs: number };
  /** The access key the Lambda Invoke API checks signatures against; no key, no Invoke API. */
  lambdaKey?: { accessKeyId: string; secretAccessKey: string };
  functionLogs: FunctionLogSettings;
  /** Async invocations: attempts of one function a server (or gateway) runs at once; the first retry's delay (doubling). */
  async: { perFunction: number; retryBaseMs: number };
  /** GET /metrics without the token on the main port. */
  metricsPublic: boolean;
  /** A listener of its own that serves /metrics without the token (bind it where only scrapers reach). */
  metricsListen?: { host: string; port: number };
}

/** Function log lines: storage bounds, the per-function rate limit, echo into the server's own log. */
export interface FunctionLogSettings {
  retentionMs: number;
  /** Single node: the log database's size cap. */
  maxBytes: number;
  /** Per function (single node and cluster: the Redis Stream's MAXLEN). */
  maxLinesPerFunction: number;
  linesPerSecond: number;
  bytesPerSecond: number;
  /** The server log level at which function lines are echoed ('silent': never). */
  echoLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';
}

export class ConfigError extends Error {}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const c = parseOrThrow(schema, env);
  const keyId = c.AETHER_LAMBDA_ACCESS_KEY_ID;
  const secret = c.AETHER_LAMBDA_SECRET_ACCESS_KEY;
  if (!keyId !== !secret) {
    throw new ConfigError(
      'invalid configuration: AETHER_LAMBDA_ACCESS_KEY_ID, AETHER_LAMBDA_SECRET_ACCESS_KEY: set both (Lambda Invoke API on) or neither',
    );
  }
  return {
    port: c.PORT,
    host: c.HOST,
    dataDir: path.resolve(c.AETHER_DATA_DIR),
    apiToken: c.AETHER_API_TOKEN,
    isolation: c.AETHER_ISOLATION,
    vmCacheDir: path.resolve(c.AETHER_VM_CACHE ?? (process.getuid?.() === 0 ? '/var/cache/aether/vm' : path.join(c.AETHER_DATA_DIR, 'vm'))),
    kernel: {
      path: c.KERNEL_PATH && path.resolve(c.KERNEL_PATH),
      modulesDir: c.KERNEL_MODULES_DIR && path.resolve(c.KERNEL_MODULES_DIR),
    },
    firecrackerJailer: c.FIRECRACKER_JAILER && path.resolve(c.FIRECRACKER_JAILER),
    vmSnapshots: c.AETHER_VM_SNAPSHOTS,
    logLevel: c.AETHER_LOG_LEVEL,
    limits: {
      maxCompressedBytes: c.AETHER_MAX_UPLOAD_MB * MB,
      maxUncompressedBytes: c.AETHER_MAX_UNPACKED_MB * MB,
      maxEntries: c.AETHER_MAX_ENTRIES,
    },
    maxQueue: c.AETHER_MAX_QUEUE,
    versionsKept: c.AETHER_VERSIONS_KEPT,
    body: {
      bufferBytes: c.AETHER_BODY_BUFFER_KB * 1024,
      timeoutMs: c.AETHER_BODY_TIMEOUT_MS,
      idleTimeoutMs: c.AETHER_BODY_IDLE_TIMEOUT_MS,
    },
    scaleDownGraceMs: c.AETHER_SCALE_DOWN_GRACE_S * 1000,
    startTimeoutMs: c.AETHER_START_TIMEOUT_MS,
    startsAtOnce: c.AETHER_STARTS_AT_ONCE,
    startBackoff: { initialMs: c.AETHER_START_BACKOFF_MS, maxMs: Math.max(c.AETHER_START_BACKOFF_MS, c.AETHER_START_BACKOFF_MAX_MS) },
    stopGraceMs: c.AETHER_STOP_GRACE_MS,
    pidsLimit: c.AETHER_PIDS_LIMIT,
    openFilesLimit: c.AETHER_INSTANCE_OPEN_FILES,
    tmpMb: c.AETHER_TMP_MB,
    fastStart: c.AETHER_FAST_START,
    warmPool: { budgetMb: c.AETHER_WARM_POOL_MB, windowMs: c.AETHER_WARM_POOL_WINDOW_S * 1000 },
    functionLogs: {
      retentionMs: Math.round(c.AETHER_LOG_RETENTION_H * 3_600_000),
      maxBytes: c.AETHER_LOG_MAX_MB * MB,
      maxLinesPerFunction: c.AETHER_LOG_MAX_LINES,
      linesPerSecond: c.AETHER_LOG_LINES_PER_S,
      bytesPerSecond: c.AETHER_LOG_KB_PER_S * 1024,
      echoLevel: c.AETHER_FUNCTION_LOG_LEVEL,
    },
    async: { perFunction: c.AETHER_ASYNC_CONCURRENCY, retryBaseMs: c.AETHER_ASYNC_RETRY_BASE_MS },
    lambdaKey: keyId && secret ? { accessKeyId: keyId, secretAccessKey: secret } : undefined,
    metricsPublic: c.AETHER_METRICS_PUBLIC,
    metricsListen: c.AETHER_METRICS_LISTEN,
  };
}

/** The engines a cluster runs on; names follow the original prototype's where it had them. */
const clusterSchema = z
  .object({
    ETCD_ENDPOINTS: z
      .string({ error: 'is required in cluster mode (comma-separated URLs, e.g. http://10.0.0.5:2379)' })
      .transform((s) =>
        s
          .split(',')
          .map((u) => u.trim())
          .filter(Boolean),
      )
      .pipe(z.array(z.url({ error: 'must be comma-separated URLs' })).min(1)),
    REDIS_ADDR: z
      .string()
      .regex(/^[^:\s]+:\d+$/, 'must be host:port')
      .optional(),
    REDIS_URL: z.url().optional(),
    MINIO_ENDPOINT: z.url({ error: 'is required in cluster mode (the S3 endpoint URL, e.g. http://minio:9000)' }),
    MINIO_ACCESS_KEY: z.string({ error: 'is required in cluster mode' }).min(1),
    MINIO_SECRET_KEY: z.string({ error: 'is required in cluster mode' }).min(1),
    MINIO_BUCKET: z.string().min(3).max(63).default('function-code'),
    MINIO_REGION: z.string().min(1).default('us-east-1'),
    AETHER_API_TOKEN: z
      .string({ error: 'is required in cluster mode: gateways and workers share it' })
      .min(16, 'must be at least 16 characters'),
    AETHER_LEASE_TTL_S: int(2, 60).default(5),
    AETHER_ASYNC_LEASE_S: int(1, 3600).default(30),
  })
  .refine((c) => c.REDIS_ADDR || c.REDIS_URL, { message: 'is required in cluster mode (host:port, or REDIS_URL)', path: ['REDIS_ADDR'] });

const workerSchema = z.object({
  WORKER_IP: z.string().min(1).optional(),
  AETHER_WORKER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'must be 1-64 letters, digits, "_", "." or "-"')
    .optional(),
  AETHER_WORKER_MAX_INSTANCES: int(1, 10_000).optional(),
});

export interface ClusterConfig extends Config {
  etcdEndpoints: string[];
  redisUrl: string;
  s3: { endpoint: string; accessKeyId: string; secretAccessKey: string; bucket: string; region: string };
  apiToken: string;
  leaseTtlS: number;
  /** Gateways: a dead gateway's async invocations are taken over once idle this long. */
  asyncLeaseMs: number;
}

export interface WorkerConfig extends ClusterConfig {
  workerIp?: string;
  workerId?: string;
  maxInstances?: number;
}

function parseOrThrow<T>(schema: z.ZodType<T>, env: NodeJS.ProcessEnv): T {
  const result = schema.safeParse(env);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ConfigError(`invalid configuration: ${issue.path.join('.')}: ${issue.message}`);
  }
  return result.data;
}

export function loadClusterConfig(env: NodeJS.ProcessEnv = process.env): ClusterConfig {
  const base = loadConfig(env);
  const c = parseOrThrow(clusterSchema, env);
  return {
    ...base,
    etcdEndpoints: c.ETCD_ENDPOINTS,
    redisUrl: c.REDIS_URL ?? `redis://${c.REDIS_ADDR}`,
    s3: {
      endpoint: c.MINIO_ENDPOINT,
      accessKeyId: c.MINIO_ACCESS_KEY,
      secretAccessKey: c.MINIO_SECRET_KEY,
      bucket: c.MINIO_BUCKET,
      region: c.MINIO_REGION,
    },
    apiToken: c.AETHER_API_TOKEN,
    leaseTtlS: c.AETHER_LEASE_TTL_S,
    asyncLeaseMs: c.AETHER_ASYNC_LEASE_S * 1000,
  };
}

export function loadWorkerConfig(env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  const w = parseOrThrow(workerSchema, env);
  return { ...loadClusterConfig(env), workerIp: w.WORKER_IP, workerId: w.AETHER_WORKER_ID, maxInstances: w.AETHER_WORKER_MAX_INSTANCES };
}

/** The client commands (`aether deploy`, `aether ls`, ...): which Aether, which token. Their flags override these. */
const clientSchema = z.object({
  AETHER_URL: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL, e.g. http://127.0.0.1:8080' }).optional(),
  AETHER_TOKEN: z.string().min(1).optional(),
  AETHER_DATA_DIR: z.string().min(1).default(DEFAULT_DATA_DIR),
  AETHER_API_TOKEN: z.string().min(1).optional(),
  XDG_CONFIG_HOME: z.string().optional(),
});

export interface ClientConfig {
  url?: string;
  token?: string;
  /** Where `aether login` keeps the URL and token: $XDG_CONFIG_HOME/aether/config.json, else ~/.config/aether/config.json. */
  loginFile: string;
  /** An `aether serve` on this machine with default settings: its URL, and its token (AETHER_API_TOKEN, else the file in its data dir). */
  local: { url: string; token?: string; dataDir: string };
}

export function loadClientConfig(env: NodeJS.ProcessEnv = process.env): ClientConfig {
  const c = parseOrThrow(clientSchema, env);
  // The XDG base directory spec: a relative XDG_CONFIG_HOME is invalid and ignored.
  const configHome = c.XDG_CONFIG_HOME && path.isAbsolute(c.XDG_CONFIG_HOME) ? c.XDG_CONFIG_HOME : path.join(os.homedir(), '.config');
  return {
    url: c.AETHER_URL,
    token: c.AETHER_TOKEN,
    loginFile: path.join(configHome, 'aether', 'config.json'),
    local: { url: `http://127.0.0.1:${DEFAULT_PORT}`, token: c.AETHER_API_TOKEN, dataDir: path.resolve(c.AETHER_DATA_DIR) },
  };
}
