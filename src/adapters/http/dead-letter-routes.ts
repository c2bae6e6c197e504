/** A function's dead-letter list: async invocations that failed every attempt or grew too old. */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { AsyncInvocations } from '../../core/async-invocations.js';
import type { ZodTypeProvider } from './openapi.js';
import { FunctionParams } from './schemas.js';

export const DeadLetterSchema = z.strictObject({
  id: z.string().describe('the event id: what the 202 (Invoke API: x-amzn-RequestId) answered with'),
  request_id: z.string().describe('the request id of its attempts in the invocation records'),
  function_id: z.string(),
  source: z.enum(['invoke', 'http']).describe('invoke: the Lambda Invoke API; http: a request to /functions/{id}/*'),
  method: z.string(),
  path: z.string().describe('the path and query the function was sent'),
  payload: z.string().nullable().describe("the Invoke API's JSON event as text; null for HTTP requests"),
  payload_bytes: z.number().int().min(0),
  accepted_at: z.iso.datetime().describe('when it was accepted (or last redriven)'),
  failed_at: z.iso.datetime(),
  attempts: z.number().int().min(0),
  reason: z.enum(['retries_exhausted', 'expired']).describe("expired: older than the function's max_event_age_s"),
  error: z.string().nullable().describe('why the last attempt failed'),
});

const LetterParams = FunctionParams.extend({ eventId: z.string().min(1).max(128).describe('a dead letter id') });
const Redriven = z.strictObject({ redriven: z.number().int().min(0).describe('events queued again') });

export async function deadLetterRoutes(scope: FastifyInstance, async: AsyncInvocations): Promise<void> {
  const app = scope.withTypeProvider<ZodTypeProvider>();
  const tags = ['async'];
  app.get(
    '/api/functions/:id/dead-letters',
    {
      schema: {
        summary: 'Async invocations that failed every attempt or expired, newest first',
        tags,
        params: FunctionParams,
        querystring: z.strictObject({ limit: z.coerce.number().int().min(1).max(1000).default(100) }),
        response: { 200: DeadLetterSchema.array() },
      },
    },
    async (req) => async.deadLetters(req.params.id, req.query.limit),
  );
  app.post(
    '/api/functions/:id/dead-letters/redrive',
    { schema: { summary: 'Queue every dead letter again, as new events', tags, params: FunctionParams, response: { 200: Redriven } } },
    async (req) => ({ redriven: await async.redrive(req.params.id) }),
  );
  app.post(
    '/api/functions/:id/dead-letters/:eventId/redrive',
    { schema: { summary: 'Queue one dead letter again, as a new event', tags, params: LetterParams, response: { 200: Redriven } } },
    async (req) => ({ redriven: await async.redrive(req.params.id, req.params.eventId) }),
  );
  app.delete(
    '/api/functions/:id/dead-letters',
    {
      schema: {
        summary: 'Delete every dead letter',
        tags,
        params: FunctionParams,
        response: { 200: z.strictObject({ deleted: z.number().int().min(0) }) },
      },
    },
    async (req) => ({ deleted: await async.remove(req.params.id) }),
  );
  app.delete(
    '/api/functions/:id/dead-letters/:eventId',
    { schema: { summary: 'Delete one dead letter', tags, params: LetterParams, response: { 204: { description: 'deleted' } } } },
    async (req, reply) => {
      await async.remove(req.params.id, req.params.eventId);
      return reply.status(204).send();
    },
  );
}
