/**
 * The routes every role serves about itself: /healthz (no token, no details), /api/system (the
 * details, token required) and /api/openapi.json.
 */
import type { FastifyInstance, RouteOptions } from 'fastify';
import { z } from 'zod';
import { AETHER_VERSION } from '../../version.js';
import { bearerAuth } from './auth.js';
import { openApiDocument, requireAuth } from './openapi.js';
import { Health, SystemInfo } from './schemas.js';

export interface SystemDeps {
  info(): SystemInfo | Promise<SystemInfo>;
}

export async function systemRoutes(app: FastifyInstance, deps: SystemDeps & { token: string; routes: RouteOptions[] }): Promise<void> {
  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness: 200 once the server takes requests (no token; no details)',
        tags: ['system'],
        response: { 200: Health },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  let document: object | undefined;
  await app.register(async (scope) => {
    requireAuth(scope, 'token', bearerAuth(deps.token));
    scope.get(
      '/api/system',
      {
        schema: {
          summary: 'This server: role, version, isolation driver, capacity',
          tags: ['system'],
          response: { 200: SystemInfo },
        },
      },
      async () => deps.info(),
    );
    scope.get(
      '/api/openapi.json',
      { schema: { summary: 'This API, described in OpenAPI 3.1', tags: ['system'], response: { 200: z.record(z.string(), z.unknown()) } } },
      async () => {
        document ??= openApiDocument(deps.routes, {
          title: 'Aether',
          version: AETHER_VERSION,
          description: 'Serverless functions in isolated sandboxes and microVMs',
        });
        return document;
      },
    );
  });
}
