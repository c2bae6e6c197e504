/** The HTTP front door: management API (token required), invocation routes and health. */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { apiRoutes } from './api-routes.js';
import { bearerAuth } from './auth.js';
import { installErrorHandling } from './errors.js';
import { invokeRoutes, type InvokeDeps } from './invoke-route.js';

export interface AppOptions extends InvokeDeps {
  logger: FastifyBaseLogger;
  apiToken: string;
  maxUploadBytes: number;
  /** Extra facts for /healthz, e.g. the isolation driver in use. */
  health: () => object;
}

export async function buildApp(opts: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: opts.logger,
    // Invocations are recorded separately; per-request log lines would cost throughput.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    keepAliveTimeout: 65_000,
    forceCloseConnections: true,
  });
  installErrorHandling(app);

  app.get('/healthz', async () => ({ status: 'ok', ...opts.health() }));

  await app.register(async (api) => {
    api.addHook('onRequest', bearerAuth(opts.apiToken));
    await apiRoutes(api, { functions: opts.functions, maxUploadBytes: opts.maxUploadBytes });
  });
  await app.register(async (scope) => invokeRoutes(scope, opts));
  return app;
}
