/** The management API under /api: functions, their code, instances and invocation history. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import { z } from 'zod';
import { badRequest, AetherError } from '../../core/errors.js';
import type { FunctionService } from '../../core/functions.js';
import { INVOCATIONS_KEPT } from '../../core/invocations.js';
import type { ArchiveFormat, WorkerInfo } from '../../core/ports.js';
import { validate } from '../../core/validate.js';

type IdParams = { Params: { id: string } };

const flag = z.enum(['true', 'false'], { error: 'must be true or false' }).transform((v) => v === 'true');

/** GET /api/functions/{id}/invocations: one page, newest first; `before` is the last id of the previous page. */
export const invocationsQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(INVOCATIONS_KEPT).default(100),
  before: z
    .uuid({ error: 'must be the id of an invocation record (the last id of the previous page)' })
    .transform((id) => id.toLowerCase())
    .optional(),
  status: z.enum(['ok', 'error'], { error: 'must be ok or error' }).optional(),
  cold_start: flag.optional(),
});

export async function apiRoutes(
  app: FastifyInstance,
  opts: { functions: FunctionService; maxUploadBytes: number; workers?: () => WorkerInfo[] },
): Promise<void> {
  const fns = opts.functions;
  const workers = opts.workers;
  if (workers) app.get('/api/workers', async () => workers());

  app.post('/api/functions', async (req, reply) => reply.status(201).send(fns.view(await fns.create(req.body))));
  app.get('/api/functions', async () => (await fns.list()).map((fn) => fns.view(fn)));
  app.get<IdParams>('/api/functions/:id', async (req) => fns.view(await fns.get(req.params.id)));
  app.put<IdParams>('/api/functions/:id', async (req) => fns.view(await fns.change(req.params.id, req.body, 'replace')));
  app.patch<IdParams>('/api/functions/:id', async (req) => fns.view(await fns.change(req.params.id, req.body, 'patch')));
  app.delete<IdParams>('/api/functions/:id', async (req, reply) => {
    await fns.delete(req.params.id);
    return reply.status(204).send();
  });
  app.get<IdParams>('/api/functions/:id/instances', async (req) => fns.instances(req.params.id));
  app.get<IdParams>('/api/functions/:id/invocations', async (req) => {
    const q = validate(invocationsQuery, req.query);
    const failed = q.status === undefined ? undefined : q.status === 'error';
    return fns.invocations(req.params.id, { limit: q.limit, before: q.before, failed, coldStart: q.cold_start });
  });

  // Code upload: a multipart field "file" or the archive as the raw body; streamed, never buffered.
  await app.register(async (scope) => {
    await scope.register(multipart, { limits: { fileSize: opts.maxUploadBytes, files: 1, fields: 10 } });
    for (const type of [
      'application/zip',
      'application/x-zip-compressed',
      'application/gzip',
      'application/x-gzip',
      'application/x-tar+gzip',
      'application/octet-stream',
    ]) {
      scope.addContentTypeParser(type, (_req, payload, done) => done(null, payload));
    }
    scope.post<IdParams>('/api/functions/:id/code', async (req, reply) => {
      const { stream, format } = await archiveFrom(req, opts.maxUploadBytes);
      const fn = await fns.uploadCode(req.params.id, stream, format);
      return reply.status(200).send({ id: fn.id, code_hash: fn.code_hash, code_size: fn.code_size, version: fn.version });
    });
  });
}

async function archiveFrom(req: FastifyRequest, maxBytes: number): Promise<{ stream: NodeJS.ReadableStream; format: ArchiveFormat }> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'multipart/form-data') {
    const part = await req.file();
    if (part?.fieldname !== 'file') throw badRequest('expected the archive in a multipart field named "file"');
    const gz = /\.(tar\.gz|tgz)$/i.test(part.filename) || /gzip/.test(part.mimetype);
    // Surface the multipart size limit as our 413 rather than a truncated archive.
    part.file.on('limit', () =>
      part.file.destroy(new AetherError('too_large', `archive is larger than ${Math.round(maxBytes / 2 ** 20)} MB`)),
    );
    return { stream: part.file, format: gz ? 'tar.gz' : 'zip' };
  }
  if (!req.body || typeof (req.body as NodeJS.ReadableStream).pipe !== 'function') {
    throw new AetherError(
      'unsupported_media_type',
      'send the archive as multipart field "file", or as a raw body with Content-Type application/zip or application/gzip',
    );
  }
  return { stream: req.body as NodeJS.ReadableStream, format: /gzip/.test(type) ? 'tar.gz' : 'zip' };
}
