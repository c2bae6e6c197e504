/** Maps any error onto Aether's JSON error shape: { "error": { "code", "message" } }. */
import type { FastifyError, FastifyInstance } from 'fastify';
import { AetherError, type ErrorCode } from '../../core/errors.js';

/** Fastify's own errors (parsing, limits) as Aether's codes; the status comes with the code. */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_BODY_TOO_LARGE: 'too_large',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_request',
  FST_REQ_FILE_TOO_LARGE: 'too_large',
  FST_INVALID_MULTIPART_CONTENT_TYPE: 'invalid_request',
};

/** Any error as an AetherError; what it wraps stays its cause (an internal error's details reach the log, never the client). */
export function toAetherError(err: unknown): AetherError {
  if (err instanceof AetherError) return err;
  const e = err as FastifyError;
  const known = e.code ? FASTIFY_CODES[e.code] : undefined;
  if (known) return new AetherError(known, e.message, { cause: err });
  if (e instanceof SyntaxError || e.statusCode === 400) return new AetherError('invalid_request', e.message, { cause: err });
  if (e.statusCode === 413) return new AetherError('too_large', e.message, { cause: err });
  return new AetherError('internal', 'internal error', { cause: err });
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err, req, reply) => {
    const ae = toAetherError(err);
    if (ae.code === 'internal') req.log.error({ err: ae }, 'unhandled error');
    void reply.status(ae.status).send({ error: { code: ae.code, message: ae.message } });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: { code: 'not_found', message: `no route for ${req.method} ${req.url.split('?')[0]}` } });
  });
}
