/**
 * GET /api/functions/{id}/logs: a page of a function's log lines as JSON, or with `?follow=1` new
 * lines as Server-Sent Events (`id:` the line's cursor, `data:` the line as JSON) until the client
 * leaves. A reconnecting EventSource sends Last-Event-ID and continues where it stopped.
 */
import { fastifySSE } from '@fastify/sse';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { badRequest, unavailable } from '../../core/errors.js';
import type { FunctionService } from '../../core/functions.js';
import { isCursor, type LogLine, logQuerySchema, logRequest } from '../../core/logs.js';
import type { ZodTypeProvider } from './openapi.js';
import { FunctionParams, LogPageSchema } from './schemas.js';

/** Each follower holds a connection (and in a cluster a Redis connection): bounded per process. */
const MAX_FOLLOWERS = 200;
const HEARTBEAT_MS = 15_000;

export async function logRoutes(app: FastifyInstance, fns: Pick<FunctionService, 'logs' | 'followLogs'>): Promise<void> {
  await app.register(fastifySSE, { heartbeatInterval: HEARTBEAT_MS });
  let followers = 0;

  const schema = {
    summary: "A function's log lines, paged; with follow=1 new lines as Server-Sent Events until the client leaves",
    tags: ['functions'],
    params: FunctionParams,
    querystring: logQuerySchema,
    response: {
      200: {
        description: 'a page of lines; with follow=1 an event stream (id: the cursor, data: a line as JSON)',
        content: { 'application/json': { schema: LogPageSchema }, 'text/event-stream': { schema: z.string() } },
      },
    },
  };
  app.withTypeProvider<ZodTypeProvider>().get('/api/functions/:id/logs', { sse: 'manual', schema }, async (req, reply) => {
    const { query, follow } = logRequest(req.query);
    if (!follow) return fns.logs(req.params.id, query);

    const lastEventId = req.headers['last-event-id'] as string | undefined;
    if (lastEventId !== undefined && !isCursor(lastEventId)) throw badRequest('Last-Event-ID must be the id of a line from this stream');
    if (query.until !== undefined || query.before !== undefined) {
      throw badRequest('follow streams new lines: until and before do not apply (use since or after to start earlier)');
    }
    if (followers >= MAX_FOLLOWERS)
      throw unavailable(`too many clients follow logs on this server (${MAX_FOLLOWERS})`, 'too_many_followers');
    followers++;
    const abort = new AbortController();
    try {
      const batches = await fns.followLogs(req.params.id, query, { after: lastEventId ?? query.after, since: query.since }, abort.signal);
      reply.sse.onClose(() => abort.abort());
      reply.sse.sendHeaders();
      reply.raw.flushHeaders(); // the client knows it is connected before the first line arrives
      await reply.sse.send(events(batches));
    } finally {
      abort.abort();
      followers--;
    }
  });
}

async function* events(batches: AsyncIterable<LogLine[]>): AsyncIterable<{ id: string; data: LogLine }> {
  for await (const batch of batches) for (const line of batch) yield { id: line.id, data: line };
}
