/**
 * Configuration from environment variables (flags of `aether serve` override them).
 * Invalid values fail at start with one line naming the setting.
 */
import path from 'node:path';
import { z } from 'zod';

const MB = 1024 * 1024;
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const schema = z.object({
  PORT: int(0, 65535).default(8080),
  HOST: z.string().min(1).default('0.0.0.0'),
  AETHER_DATA_DIR: z.string().min(1).default('./.aether'),
  AETHER_API_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  AETHER_ISOLATION: z.enum(['auto', 'gvisor', 'bwrap', 'none']).default('auto'),
  AETHER_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  AETHER_MAX_UPLOAD_MB: int(1, 10_000).default(50),
  AETHER_MAX_UNPACKED_MB: int(1, 100_000).default(250),
  AETHER_MAX_ENTRIES: int(1, 1_000_000).default(10_000),
  AETHER_MAX_QUEUE: int(0, 100_000).default(1000),
  AETHER_SCALE_DOWN_GRACE_S: z.coerce.number().min(0).max(86_400).default(30),
  AETHER_START_TIMEOUT_MS: int(100, 600_000).default(10_000),
  AETHER_STOP_GRACE_MS: int(0, 600_000).default(2_000),
  AETHER_PIDS_LIMIT: int(16, 100_000).default(128),
  AETHER_TMP_MB: int(1, 100_000).default(64),
});

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  apiToken?: string;
  isolation: 'auto' | 'gvisor' | 'bwrap' | 'none';
  logLevel: string;
  limits: { maxCompressedBytes: number; maxUncompressedBytes: number; maxEntries: number };
  maxQueue: number;
  scaleDownGraceMs: number;
  startTimeoutMs: number;
  stopGraceMs: number;
  pidsLimit: number;
  tmpMb: number;
}

export class ConfigError extends Error {}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const result = schema.safeParse(env);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new ConfigError(`invalid configuration: ${issue.path.join('.')}: ${issue.message}`);
  }
  const c = result.data;
  return {
    port: c.PORT,
    host: c.HOST,
    dataDir: path.resolve(c.AETHER_DATA_DIR),
    apiToken: c.AETHER_API_TOKEN,
    isolation: c.AETHER_ISOLATION,
    logLevel: c.AETHER_LOG_LEVEL,
    limits: {
      maxCompressedBytes: c.AETHER_MAX_UPLOAD_MB * MB,
      maxUncompressedBytes: c.AETHER_MAX_UNPACKED_MB * MB,
      maxEntries: c.AETHER_MAX_ENTRIES,
    },
    maxQueue: c.AETHER_MAX_QUEUE,
    scaleDownGraceMs: c.AETHER_SCALE_DOWN_GRACE_S * 1000,
    startTimeoutMs: c.AETHER_START_TIMEOUT_MS,
    stopGraceMs: c.AETHER_STOP_GRACE_MS,
    pidsLimit: c.AETHER_PIDS_LIMIT,
    tmpMb: c.AETHER_TMP_MB,
  };
}
