/** The management API under /api: functions, their code, instances and invocation history. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import { z } from 'zod';
import { badRequest, AetherError } from '../../core/errors.js';
import { createFunctionSchema, patchFunctionSchema, replaceFunctionSchema } from '../../core/function-spec.js';
import type { FunctionService } from '../../core/functions.js';
import { INVOCATIONS_KEPT } from '../../core/invocations.js';
import type { ArchiveFormat, WorkerInfo } from '../../core/ports.js';
import type { ZodTypeProvider } from './openapi.js';
import {
  CodeUploadResult,
  FunctionParams,
  FunctionView,
  InstanceInfoSchema,
  InvocationRecordSchema,
  InvocationStatsSchema,
  WorkerInfoSchema,
} from './schemas.js';

const ARCHIVE_TYPES = [
  'application/zip',
  'application/x-zip-compressed',
  'application/gzip',
  'application/x-gzip',
  'application/x-tar+gzip',
  'application/octet-stream',
];
const archive = z.file().describe('a zip, or a gzipped tar (.tar.gz)');

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

/** GET /api/functions/{id}/stats: at most MAX_BUCKETS buckets, so that a response stays small. */
const MAX_BUCKETS = 1440;
export const statsQuery = z
  .strictObject({
    window: z.coerce
      .number()
      .int()
      .min(60)
      .max(7 * 86_400)
      .default(3600)
      .describe('seconds back from now'),
    step: z.coerce.number().int().min(1).max(86_400).default(60).describe('seconds per bucket'),
  })
  .refine((q) => q.window / q.step <= MAX_BUCKETS, {
    path: ['step'],
    error: `window / step must be at most ${MAX_BUCKETS} buckets: use a larger step`,
  });

export async function apiRoutes(
  scope: FastifyInstance,
  opts: { functions: FunctionService; maxUploadBytes: number; workers?: () => WorkerInfo[] },
): Promise<void> {
  const app = scope.withTypeProvider<ZodTypeProvider>();
  const fns = opts.functions;
  const workers = opts.workers;
  const tags = ['functions'];
  const params = FunctionParams;
  if (workers) {
    app.get(
      '/api/workers',
      {
        schema: {
          summary: 'Cluster mode: the live workers, their capacity and driver',
          tags: ['cluster'],
          response: { 200: WorkerInfoSchema.array() },
        },
      },
      async () => workers(),
    );
  }

  app.post(
    '/api/functions',
    { schema: { summary: 'Create a function', tags, body: createFunctionSchema, response: { 201: FunctionView } } },
    async (req, reply) => reply.status(201).send(fns.view(await fns.create(req.body))),
  );
  app.get(
    '/api/functions',
    { schema: { summary: 'List functions (env var values masked)', tags, response: { 200: FunctionView.array() } } },
    async () => (await fns.list()).map((fn) => fns.view(fn)),
  );
  app.get(
    '/api/functions/:id',
    { schema: { summary: 'A function (env var values masked)', tags, params, response: { 200: FunctionView } } },
    async (req) => fns.view(await fns.get(req.params.id)),
  );
  app.put(
    '/api/functions/:id',
    {
      schema: {
        summary: 'Replace the configuration (omitted fields return to defaults); new instances get it, old ones drain',
        tags,
        params,
        body: replaceFunctionSchema,
        response: { 200: FunctionView },
      },
    },
    async (req) => fns.view(await fns.change(req.params.id, req.body, 'replace')),
  );
  app.patch(
    '/api/functions/:id',
    {
      schema: {
        summary: 'Change the fields given; new instances get them, old ones drain',
        tags,
        params,
        body: patchFunctionSchema,
        response: { 200: FunctionView },
      },
    },
    async (req) => fns.view(await fns.change(req.params.id, req.body, 'patch')),
  );
  app.delete(
    '/api/functions/:id',
    {
      schema: {
        summary: 'Delete a function: stops its instances, removes its code',
        tags,
        params,
        response: { 204: { description: 'deleted' } },
      },
    },
    async (req, reply) => {
      await fns.delete(req.params.id);
      return reply.status(204).send();
    },
  );
  app.get(
    '/api/functions/:id/instances',
    { schema: { summary: "A function's instances", tags, params, response: { 200: InstanceInfoSchema.array() } } },
    async (req) => fns.instances(req.params.id),
  );
  app.get(
    '/api/functions/:id/invocations',
    {
      schema: {
        summary: 'Invocation records, newest first, paged and filtered',
        tags,
        params,
        querystring: invocationsQuery,
        response: { 200: InvocationRecordSchema.array() },
      },
    },
    async (req) => {
      const q = req.query;
      const failed = q.status === undefined ? undefined : q.status === 'error';
      return fns.invocations(req.params.id, { limit: q.limit, before: q.before, failed, coldStart: q.cold_start });
    },
  );

  app.get(
    '/api/functions/:id/stats',
    {
      schema: {
        summary: 'Request rate, errors and p50/p99 latency over a recent window, in buckets, from the kept invocation records',
        tags,
        params,
        querystring: statsQuery,
        response: { 200: InvocationStatsSchema },
      },
    },
    async (req) => fns.stats(req.params.id, { window_s: req.query.window, step_s: req.query.step }),
  );

  // Code upload: a multipart field "file" or the archive as the raw body; streamed, never buffered.
  await app.register(async (upload) => {
    await upload.register(multipart, { limits: { fileSize: opts.maxUploadBytes, files: 1, fields: 10 } });
    for (const type of ARCHIVE_TYPES) upload.addContentTypeParser(type, (_req, payload, done) => done(null, payload));
    upload.withTypeProvider<ZodTypeProvider>().post(
      '/api/functions/:id/code',
      {
        schema: {
          summary: "Upload the function's code; a rejected archive leaves the old code serving",
          tags,
          params,
          consumes: {
            'multipart/form-data': z.object({ file: archive }),
            ...Object.fromEntries(ARCHIVE_TYPES.map((type) => [type, archive])),
          },
          response: { 200: CodeUploadResult },
        },
      },
      async (req, reply) => {
        const { stream, format } = await archiveFrom(req, opts.maxUploadBytes);
        const fn = await fns.uploadCode(req.params.id, stream, format);
        return reply.status(200).send({ id: fn.id, code_hash: fn.code_hash!, code_size: fn.code_size!, version: fn.version });
      },
    );
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
