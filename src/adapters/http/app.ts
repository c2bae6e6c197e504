/**
 * The HTTP front door. All-in-one server and gateway: management API (token required) and
 * invocation routes. Worker: invocation routes and an internal instance listing, for gateways only.
 * Every role: /healthz, /api/system, /metrics and /api/openapi.json (system-routes.ts). With the
 * management API, the web dashboard at / (dashboard-routes.ts).
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { FunctionService } from '../../core/functions.js';
import type { WorkerInfo } from '../../core/ports.js';
import type { InstanceInfo } from '../../core/types.js';
import { apiRoutes } from './api-routes.js';
import { bearerAuth, clusterAuth } from './auth.js';
import { dashboardRoutes } from './dashboard-routes.js';
import { deadLetterRoutes } from './dead-letter-routes.js';
import { installErrorHandling } from './errors.js';
import type { InvokeDeps } from './invocation.js';
import { invokeRoutes } from './invoke-route.js';
import { logRoutes } from './logs-route.js';
import { lambdaApiRoutes } from './lambda/invoke-api.js';
import type { AccessKey } from './lambda/sigv4.js';
import { describedRoutes, requireAuth, type ZodTypeProvider } from './openapi.js';
import { FunctionParams, InstanceInfoSchema } from './schemas.js';
import { systemRoutes, type SystemDeps } from './system-routes.js';
import { versionRoutes } from './versions-routes.js';

export interface AppOptions {
  logger: FastifyBaseLogger;
  /** The API token: clients present it on /api (bearer); in a cluster, gateways present it to workers too. */
  token: string;
  system: SystemDeps;
  invoke: InvokeDeps;
  /** The Lambda Invoke API, signed with one of these keys; absent: no such routes. */
  lambdaKeys?: AccessKey[];
  api?: { functions: FunctionService; maxUploadBytes: number; workers?: () => WorkerInfo[] };
  /** Worker only: what gateways may ask about its instances. */
  internal?: { instances(functionId: string): InstanceInfo[] };
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
  const { routes } = describedRoutes(app);

  await systemRoutes(app, { ...opts.system, token: opts.token, routes });
  const { api, internal } = opts;
  if (api) {
    await app.register(async (scope) => {
      requireAuth(scope, 'token', bearerAuth(opts.token));
      await apiRoutes(scope, api);
      await logRoutes(scope, api.functions);
      await versionRoutes(scope, api.functions);
      if (opts.invoke.async) await deadLetterRoutes(scope, opts.invoke.async);
    });
    dashboardRoutes(app);
  }
  if (internal) {
    await app.register(async (scope) => {
      requireAuth(scope, 'cluster', clusterAuth(opts.token));
      scope.withTypeProvider<ZodTypeProvider>().get(
        '/internal/functions/:id/instances',
        {
          schema: {
            summary: "A worker's instances of a function (gateways only)",
            tags: ['cluster'],
            params: FunctionParams,
            response: { 200: InstanceInfoSchema.array() },
          },
        },
        async (req) => internal.instances(req.params.id),
      );
    });
  }
  const { lambdaKeys } = opts;
  if (lambdaKeys?.length && api) {
    await app.register(async (scope) => lambdaApiRoutes(scope, { invoke: opts.invoke, keys: lambdaKeys, logs: api.functions }));
  }
  await app.register(async (scope) => invokeRoutes(scope, opts.invoke));
  return app;
}
