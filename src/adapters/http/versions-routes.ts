/** The management API's versions and aliases of a function (see core/versions.ts). */
import type { FastifyInstance } from 'fastify';
import type { FunctionService } from '../../core/functions.js';
import { aliasNameSchema, putAliasSchema, versionView } from '../../core/versions.js';
import type { ZodTypeProvider } from './openapi.js';
import { AliasSchema, FunctionParams, VersionSchema } from './schemas.js';
import { z } from 'zod';

export async function versionRoutes(scope: FastifyInstance, fns: FunctionService): Promise<void> {
  const app = scope.withTypeProvider<ZodTypeProvider>();
  const tags = ['versions'];
  const aliasParams = FunctionParams.extend({ alias: aliasNameSchema });

  app.get(
    '/api/functions/:id/versions',
    {
      schema: {
        summary: "A function's versions, newest first: one per deploy (code upload or configuration change)",
        tags,
        params: FunctionParams,
        response: { 200: VersionSchema.array() },
      },
    },
    async (req) => (await fns.versions(req.params.id)).map(versionView),
  );
  app.get(
    '/api/functions/:id/versions/:version',
    {
      schema: {
        summary: 'One version: its code and configuration (env var values masked)',
        tags,
        params: FunctionParams.extend({ version: z.coerce.number().int().min(1) }),
        response: { 200: VersionSchema },
      },
    },
    async (req) => versionView(await fns.version(req.params.id, req.params.version)),
  );
  app.get(
    '/api/functions/:id/aliases',
    { schema: { summary: "A function's aliases, by name", tags, params: FunctionParams, response: { 200: AliasSchema.array() } } },
    async (req) => fns.aliases(req.params.id),
  );
  app.get(
    '/api/functions/:id/aliases/:alias',
    { schema: { summary: 'One alias', tags, params: aliasParams, response: { 200: AliasSchema } } },
    async (req) => fns.alias(req.params.id, req.params.alias),
  );
  app.put(
    '/api/functions/:id/aliases/:alias',
    {
      schema: {
        summary: 'Create or move an alias (a rollback is moving it back: instant, nothing to upload)',
        description:
          "Invocations through the alias (`/functions/{name}:{alias}/...`, the Invoke API's Qualifier) run `version`, " +
          'or with additional_version_weights a share of them another version, e.g. {"version": 7, "additional_version_weights": {"8": 0.1}}.',
        tags,
        params: aliasParams,
        body: putAliasSchema,
        response: { 200: AliasSchema },
      },
    },
    async (req) => fns.putAlias(req.params.id, req.params.alias, req.body),
  );
  app.delete(
    '/api/functions/:id/aliases/:alias',
    { schema: { summary: 'Delete an alias', tags, params: aliasParams, response: { 204: { description: 'deleted' } } } },
    async (req, reply) => {
      await fns.deleteAlias(req.params.id, req.params.alias);
      return reply.status(204).send();
    },
  );
}
