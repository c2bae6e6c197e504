/** Maps any error onto Aether's JSON error shape: { "error": { "code", "message" } }. */
import type { FastifyError, FastifyInstance } from 'fastify';
import { AetherError } from '../../core/errors.js';

const FASTIFY_CODES: Record<string, [number, string]> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type'],
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'too_large'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'invalid_request'],
  FST_REQ_FILE_TOO_LARGE: [413, 'too_large'],
  FST_INVALID_MULTIPART_CONTENT_TYPE: [400, 'invalid_request'],
};

export function toAetherError(err: unknown): AetherError {
  if (err instanceof AetherError) return err;
  const e = err as FastifyError;
  const known = e.code && FASTIFY_CODES[e.code];
  if (known) return new AetherError(known[0], known[1], e.message);
  if (e instanceof SyntaxError || e.statusCode === 400) return new AetherError(400, 'invalid_request', e.message);
  if (e.statusCode === 413) return new AetherError(413, 'too_large', e.message);
  return new AetherError(500, 'internal', 'internal error');
}

export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err, req, reply) => {
    const ae = toAetherError(err);
    if (ae.status >= 500 && ae.code === 'internal') req.log.error({ err }, 'unhandled error');
    void reply.status(ae.status).send({ error: { code: ae.code, message: ae.message } });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: { code: 'not_found', message: `no route for ${req.method} ${req.url.split('?')[0]}` } });
  });
}
