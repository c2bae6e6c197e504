/**
 * Routes described once, by zod schemas given where they are registered: Fastify validates params,
 * querystring and body with them (the compilers below), and the OpenAPI 3.1 document is generated
 * from the same objects. Describing a route:
 *
 *   scope.get('/api/functions/:id/things', {
 *     schema: {
 *       summary: 'List things',
 *       params: FunctionParams,                       // validated; typed req.params
 *       querystring: z.object({ limit: z.coerce.number().int().min(1).max(100).default(100) }),
 *       response: { 200: z.array(Thing) },           // documented (not enforced at run time)
 *     },
 *   }, handler);
 *
 * Every route must have a summary and at least one response, and declare its path parameters:
 * otherwise the app refuses to start, naming the route. Non-JSON bodies are documented with
 * `consumes` (content type -> zod schema; the route reads the body itself), non-JSON responses with
 * `{ description, content: { type: { schema } } }`. Security comes from `requireAuth` on the scope.
 */
import { STATUS_CODES } from 'node:http';
import type { FastifyInstance, FastifyRequest, FastifyTypeProvider, RouteOptions } from 'fastify';
import { z } from 'zod';
import { validationError } from '../../core/validate.js';
import { ErrorBody } from './schemas.js';

export type Security = 'token' | 'cluster' | 'sigv4' | 'public';

declare module 'fastify' {
  interface FastifySchema {
    summary?: string;
    description?: string;
    tags?: string[];
    /** A body the route reads itself (a stream, an upload): its content types, documented only. */
    consumes?: Record<string, z.ZodType>;
  }
  interface FastifyContextConfig {
    /** Set by requireAuth for every route of its scope. */
    security?: Security;
  }
}

/** Typed `req.params`, `req.query` and `req.body` from the zod schemas (`app.withTypeProvider<ZodTypeProvider>()`). */
export interface ZodTypeProvider extends FastifyTypeProvider {
  validator: this['schema'] extends z.ZodType ? z.output<this['schema']> : unknown;
  serializer: this['schema'] extends z.ZodType ? z.input<this['schema']> : unknown;
}

const PART_NAMES: Record<string, string> = { params: 'path parameter', querystring: 'query parameter', headers: 'header' };

/**
 * Validation by zod, failing with Aether's own 400; responses serialized as plain JSON (their
 * schemas document them). Also collects every route for the document and the start-up check.
 */
export function describedRoutes(app: FastifyInstance): { routes: RouteOptions[] } {
  app.setValidatorCompiler(({ schema, httpPart }) => {
    const zod = schema as z.ZodType;
    return (data) => {
      const result = zod.safeParse(data);
      return result.success ? { value: result.data } : { error: validationError(result.error, PART_NAMES[httpPart ?? ''] ?? '') };
    };
  });
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  const routes: RouteOptions[] = [];
  app.addHook('onRoute', (route) => {
    routes.push(route);
  });
  app.addHook('onReady', async () => {
    const problems = routes.flatMap(undescribed);
    if (problems.length > 0) {
      throw new Error(
        `routes without a complete description (see docs/architecture.md, "Describing a route"):\n  ${problems.join('\n  ')}`,
      );
    }
  });
  return { routes };
}

/**
 * The routes registered in `scope` (and below) need this check; the document says so. `preHandler`:
 * for a check that needs the parsed body (a request signature).
 */
export function requireAuth(
  scope: FastifyInstance,
  security: Exclude<Security, 'public'>,
  check: (req: FastifyRequest) => Promise<void>,
  stage: 'onRequest' | 'preHandler' = 'onRequest',
): void {
  if (stage === 'onRequest') scope.addHook('onRequest', check);
  else scope.addHook('preHandler', check);
  scope.addHook('onRoute', (route) => {
    route.config = { ...route.config, security };
  });
}

const OPENAPI_METHODS = new Set(['get', 'put', 'post', 'delete', 'options', 'patch', 'trace']);

/** HEAD is left out: Fastify answers it for every GET, and so does the invocation route. */
function methodsOf(route: RouteOptions): string[] {
  return [route.method]
    .flat()
    .map((m) => m.toLowerCase())
    .filter((m) => OPENAPI_METHODS.has(m));
}

function pathParams(url: string): string[] {
  return [...url.matchAll(/:([A-Za-z0-9_]+)|(\*)/g)].map((m) => m[1] ?? '*');
}

function undescribed(route: RouteOptions): string[] {
  if (methodsOf(route).length === 0) return [];
  const where = `${[route.method].flat().join(',')} ${route.url}`;
  const s = route.schema;
  if (!s?.summary) return [`${where}: no schema.summary`];
  if (!s.response || Object.keys(s.response).length === 0) return [`${where}: no schema.response`];
  const declared = s.params instanceof z.ZodObject ? Object.keys(s.params.shape) : [];
  const missing = pathParams(route.url).filter((p) => !declared.includes(p));
  return missing.length > 0 ? [`${where}: path parameters ${missing.join(', ')} missing from schema.params (a z.object)`] : [];
}

/** The rest of the path in a wildcard route, as OpenAPI names it. */
const WILDCARD = 'path';
const toOpenApiPath = (url: string) => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}').replace('*', `{${WILDCARD}}`);

type JsonSchema = Record<string, unknown>;

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  const { $schema: _, ...rest } = z.toJSONSchema(schema, { target: 'draft-2020-12', io, unrepresentable: 'any' }) as JsonSchema;
  return rest;
}

function parameters(schema: unknown, where: 'path' | 'query'): object[] {
  if (!(schema instanceof z.ZodObject)) return [];
  const json = jsonSchema(schema, 'input') as { properties?: Record<string, JsonSchema>; required?: string[] };
  return Object.entries(json.properties ?? {}).map(([name, prop]) => {
    const { description, ...rest } = prop;
    return {
      name: name === '*' ? WILDCARD : name,
      in: where,
      required: where === 'path' || (json.required ?? []).includes(name),
      ...(description ? { description } : {}),
      schema: rest,
    };
  });
}

type ResponseSpec = z.ZodType | { description?: string; content?: Record<string, { schema: z.ZodType }> };

function response(status: string, spec: ResponseSpec): object {
  const description = STATUS_CODES[Number(status)] ?? 'response';
  if (spec instanceof z.ZodType) {
    return { description: spec.description ?? description, content: { 'application/json': { schema: jsonSchema(spec, 'output') } } };
  }
  const content = Object.entries(spec.content ?? {}).map(([type, { schema }]) => [type, { schema: jsonSchema(schema, 'output') }]);
  return { description: spec.description ?? description, ...(content.length > 0 ? { content: Object.fromEntries(content) } : {}) };
}

function operation(route: RouteOptions): object {
  const s = route.schema!;
  const security = route.config?.security ?? 'public';
  const responses: Record<string, object> = Object.fromEntries(
    Object.entries((s.response ?? {}) as Record<string, ResponseSpec>).map(([status, spec]) => [status, response(status, spec)]),
  );
  responses.default ??= { description: 'an error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
  const body = s.body instanceof z.ZodType ? { 'application/json': s.body } : s.consumes;
  return {
    summary: s.summary,
    ...(s.description ? { description: s.description } : {}),
    ...(s.tags ? { tags: s.tags } : {}),
    security: security === 'public' ? [] : [{ [security]: [] }],
    parameters: [...parameters(s.params, 'path'), ...parameters(s.querystring, 'query')],
    ...(body
      ? {
          requestBody: {
            required: true,
            content: Object.fromEntries(Object.entries(body).map(([type, schema]) => [type, { schema: jsonSchema(schema, 'input') }])),
          },
        }
      : {}),
    responses,
  };
}

/** The OpenAPI 3.1 document of the given routes. */
export function openApiDocument(routes: RouteOptions[], info: { title: string; version: string; description?: string }): object {
  const paths: Record<string, Record<string, object>> = {};
  for (const route of routes) {
    for (const method of methodsOf(route)) {
      const path = toOpenApiPath(route.url);
      paths[path] ??= {};
      paths[path][method] = operation(route);
    }
  }
  return {
    openapi: '3.1.0',
    info,
    paths,
    components: {
      schemas: { Error: jsonSchema(ErrorBody, 'output') },
      securitySchemes: {
        token: { type: 'http', scheme: 'bearer', description: 'the API token (AETHER_API_TOKEN, or <data dir>/api-token)' },
        cluster: { type: 'apiKey', in: 'header', name: 'x-aether-cluster-token', description: 'gateways to workers: the shared token' },
        sigv4: {
          type: 'apiKey',
          in: 'header',
          name: 'Authorization',
          description: 'AWS Signature Version 4 (service lambda), with the access key Aether is configured with',
        },
      },
    },
  };
}
