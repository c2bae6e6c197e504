/**
 * Redis clients that fail fast: while Redis is unreachable a command rejects at once (or within
 * a second on a hung server) instead of waiting in ioredis' offline queue and running much later,
 * when nobody waits for its result any more. The client itself keeps reconnecting in the background.
 */
import { Redis, ReplyError, type RedisOptions } from 'ioredis';
import { AetherError, errorMessage, unavailable } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';

const FAIL_FAST: RedisOptions = {
  enableOfflineQueue: false, // commands issued while disconnected reject immediately
  maxRetriesPerRequest: 0, // commands in flight when the connection drops reject immediately too
  connectTimeout: 1000,
  commandTimeout: 1000, // a server that accepts but does not answer fails a command within a second
  retryStrategy: (attempt: number) => Math.min(attempt * 100, 1000), // reconnect forever, at most 1 s apart
};

/** `host:port`, `[ipv6]:port` or a `redis://` URL (REDIS_ADDR). */
export function createRedis(addr: string): Redis {
  const client = addr.includes('://') ? new Redis(addr, FAIL_FAST) : new Redis({ ...parseHostPort(addr), ...FAIL_FAST });
  return quiet(client);
}

/**
 * Creates a client and waits up to `waitMs` for its first connection, so that a process starting
 * next to a healthy Redis does not fail its first commands. Resolves either way: a process must
 * start (and report the outage per request) while Redis is down.
 */
export async function connectRedis(addr: string, waitMs = 2000): Promise<Redis> {
  const client = createRedis(addr);
  await ready(client, waitMs);
  return client;
}

/**
 * A second connection for blocking reads (XREADGROUP BLOCK holds its connection until it answers).
 * No command timeout (a read legitimately waits `blockMs`); a socket silent for longer than that is
 * considered dead and reconnected.
 */
export function blockingDuplicate(client: Redis, blockMs: number): Redis {
  return quiet(client.duplicate({ commandTimeout: undefined, socketTimeout: blockMs + 2000 }));
}

/** Resolves when the client is ready, closed for good, or after `waitMs`, whichever comes first. */
export function ready(client: Redis, waitMs: number): Promise<void> {
  if (client.status === 'ready' || client.status === 'end') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      client.off('ready', done).off('end', done);
      resolve();
    };
    const timer = setTimeout(done, waitMs);
    client.once('ready', done).once('end', done);
  });
}

/**
 * Maps a failed command to the 503 users see. A reply error (Redis answered, e.g. a script bug)
 * is not an outage and is passed on unchanged.
 */
export function asUnavailable(err: unknown, message: string): unknown {
  if (err instanceof ReplyError || err instanceof AetherError) return err;
  return unavailable(message, 'queue_unavailable', { cause: err });
}

/** Logs the first failure of an outage and its end, not every failed command in between. */
export class OutageWarner {
  private down = false;
  constructor(
    private readonly logger: Logger,
    private readonly what: string,
  ) {}

  failed(err: unknown): void {
    if (this.down) return;
    this.down = true;
    this.logger.warn({ err: errorMessage(err) }, `${this.what}: Redis is unreachable`);
  }

  succeeded(): void {
    if (!this.down) return;
    this.down = false;
    this.logger.info({}, `${this.what}: Redis is reachable again`);
  }
}

function parseHostPort(addr: string): { host: string; port: number } {
  const colon = addr.lastIndexOf(':');
  const host = colon > 0 ? addr.slice(0, colon) : addr;
  const port = colon > 0 ? Number(addr.slice(colon + 1)) : 6379;
  if (!host || !Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`invalid Redis address "${addr}"`);
  return { host: host.replace(/^\[(.*)\]$/, '$1'), port };
}

/**
 * Connection errors surface as rejected commands, which the adapters report once per outage;
 * without a listener ioredis would print every failed reconnect attempt.
 */
function quiet(client: Redis): Redis {
  client.on('error', () => {});
  return client;
}
