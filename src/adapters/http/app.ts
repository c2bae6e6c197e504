/**
 * The HTTP front door. All-in-one server and gateway: management API (token required) and
 * invocation routes. Worker: invocation routes and an internal instance listing, for gateways only.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { FunctionService } from '../../core/functions.js';
import type { WorkerInfo } from '../../core/ports.js';
import type { InstanceInfo } from '../../core/types.js';
import { apiRoutes } from './api-routes.js';
import { bearerAuth, clusterAuth } from './auth.js';
import { installErrorHandling } from './errors.js';
import type { InvokeDeps } from './invocation.js';
import { invokeRoutes } from './invoke-route.js';
import { logRoutes } from './logs-route.js';
import { lambdaApiRoutes } from './lambda/invoke-api.js';
import type { AccessKey } from './lambda/sigv4.js';

export interface AppOptions {
  logger: FastifyBaseLogger;
  /** Extra facts for /healthz, e.g. the isolation driver in use. */
  health: () => object;
  invoke: InvokeDeps;
  /** The Lambda Invoke API, signed with one of these keys; absent: no such routes. */
  lambdaKeys?: AccessKey[];
  api?: { token: string; functions: FunctionService; maxUploadBytes: number; workers?: () => WorkerInfo[] };
  /** Worker only: what gateways may ask about its instances. */
  internal?: { token: string; instances(functionId: string): InstanceInfo[] };
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

  const { api, internal } = opts;
  if (api) {
    await app.register(async (scope) => {
      scope.addHook('onRequest', bearerAuth(api.token));
      await apiRoutes(scope, api);
      await logRoutes(scope, api.functions);
    });
  }
  if (internal) {
    await app.register(async (scope) => {
      scope.addHook('onRequest', clusterAuth(internal.token));
      scope.get<{ Params: { id: string } }>('/internal/functions/:id/instances', async (req) => internal.instances(req.params.id));
    });
  }
  const { lambdaKeys } = opts;
  if (lambdaKeys?.length && api) {
    await app.register(async (scope) => lambdaApiRoutes(scope, { invoke: opts.invoke, keys: lambdaKeys, logs: api.functions }));
  }
  await app.register(async (scope) => invokeRoutes(scope, opts.invoke));
  return app;
}
