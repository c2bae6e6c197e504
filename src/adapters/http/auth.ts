/** Bearer-token check for the management API, in constant time. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { AetherError } from '../../core/errors.js';

const digest = (s: string) => createHash('sha256').update(s).digest();
/** Constant time: both sides are hashed to the same length first. */
const matches = (given: string, expected: Buffer) => timingSafeEqual(digest(given), expected);

export function bearerAuth(token: string) {
  const expected = digest(token);
  return async (req: FastifyRequest): Promise<void> => {
    const header = req.headers.authorization ?? '';
    const match = /^Bearer\s+(.+)$/i.exec(header);
    if (!match) throw new AetherError('unauthorized', 'missing bearer token: send Authorization: Bearer <token>');
    if (!matches(match[1]!.trim(), expected)) throw new AetherError('unauthorized', 'invalid token');
  };
}

/** Gateways present the shared cluster token to workers in this header (never passed to functions). */
export const CLUSTER_TOKEN_HEADER = 'x-aether-cluster-token';

export function clusterAuth(token: string) {
  const expected = digest(token);
  return async (req: FastifyRequest): Promise<void> => {
    const given = req.headers[CLUSTER_TOKEN_HEADER];
    if (typeof given !== 'string' || !matches(given, expected)) {
      throw new AetherError('unauthorized', `workers take invocations from gateways only (${CLUSTER_TOKEN_HEADER})`);
    }
  };
}
