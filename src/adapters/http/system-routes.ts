/**
 * The routes every role serves about itself: /healthz (no token, no details), /api/system (the
 * details, token required), /metrics (Prometheus; token unless made public) and /api/openapi.json.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type RouteOptions } from 'fastify';
import { z } from 'zod';
import { AETHER_VERSION } from '../../version.js';
import { bearerAuth } from './auth.js';
import { installErrorHandling } from './errors.js';
import { describedRoutes, openApiDocument, requireAuth } from './openapi.js';
import { Health, SystemInfo } from './schemas.js';

export interface MetricsSource {
  /** The metrics in Prometheus' text format. */
  render(): Promise<{ contentType: string; body: string }>;
}

export interface SystemDeps {
  info(): SystemInfo | Promise<SystemInfo>;
  metrics: MetricsSource;
  /** AETHER_METRICS_PUBLIC: /metrics without the token. */
  metricsPublic: boolean;
}

const metricsSchema = {
  summary: 'Metrics in Prometheus text format',
  tags: ['system'],
  response: { 200: { description: 'Prometheus text exposition format 0.0.4', content: { 'text/plain': { schema: z.string() } } } },
};

function metricsRoute(app: FastifyInstance, metrics: MetricsSource): void {
  app.get('/metrics', { schema: metricsSchema }, async (_req, reply) => {
    const { contentType, body } = await metrics.render();
    return reply.type(contentType).send(body);
  });
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
  if (deps.metricsPublic) metricsRoute(app, deps.metrics);

  let document: object | undefined;
  await app.register(async (scope) => {
    requireAuth(scope, 'token', bearerAuth(deps.token));
    if (!deps.metricsPublic) metricsRoute(scope, deps.metrics);
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

/** A listener of its own for scrapers (AETHER_METRICS_LISTEN): /metrics only, without a token. */
export async function startMetricsListener(
  address: { host: string; port: number },
  metrics: MetricsSource,
  logger: FastifyBaseLogger,
): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: logger,
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: true,
  });
  installErrorHandling(app);
  describedRoutes(app);
  metricsRoute(app, metrics);
  await app.listen(address);
  return app;
}
