/**
 * The etcd client every adapter here uses, and how its failures reach users. Unary calls carry a
 * short deadline, so that with etcd unreachable a write fails in seconds (the client's circuit
 * breaker then fails the next ones at once, for up to 5 s after etcd is back) instead of hanging a
 * user's request. Streams (watch, lease keepalive) have no deadline.
 */
import { Etcd3 } from 'etcd3';
import { AetherError, type CodeWithStatus, errorMessage, unavailable } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';

const CALL_TIMEOUT_MS = 2000;

/** `endpoints` as in ETCD_ENDPOINTS: one URL or a comma-separated list. */
export function connectEtcd(endpoints: string | string[]): Etcd3 {
  const hosts =
    typeof endpoints === 'string'
      ? endpoints
          .split(',')
          .map((h) => h.trim())
          .filter(Boolean)
      : endpoints;
  return new Etcd3({
    hosts,
    dialTimeout: CALL_TIMEOUT_MS,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
  });
}

/** Maps a failed etcd call to the 503 users see; AetherErrors raised on the way pass unchanged. */
export function asUnavailable(err: unknown, what: string, code: CodeWithStatus<503>): AetherError {
  if (err instanceof AetherError) return err;
  return unavailable(`${what} (etcd) is unavailable: ${errorMessage(err)}`, code, { cause: err });
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
