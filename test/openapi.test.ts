/**
 * GET /api/openapi.json: generated from the zod schemas the routes validate with, checked by a real
 * OpenAPI 3.1 validator; real responses must match their documented schemas; and a route registered
 * without a description stops the server from starting, so that every route is described.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyRequest } from 'fastify';
import { z } from 'zod';
import { describedRoutes } from '../src/adapters/http/openapi.ts';
import { CodeUploadResult, FunctionView, InstanceInfoSchema, InvocationRecordSchema, SystemInfo } from '../src/adapters/http/schemas.ts';
import { HANDLER_CJS, startAether, type Aether } from './helpers/aether.ts';
import { assertValidOpenApi } from './helpers/openapi.ts';

describe('OpenAPI description', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap' });
  });
  after(() => a.stop());

  test('the document needs the token and is valid OpenAPI 3.1 describing the whole API', async () => {
    assert.equal((await fetch(`${a.url}/api/openapi.json`)).status, 401);
    const { status, body: doc } = await a.api('GET', '/api/openapi.json');
    assert.equal(status, 200);
    assert.equal(doc.openapi, '3.1.0');
    await assertValidOpenApi(doc);

    const ops = Object.entries(doc.paths as Record<string, Record<string, any>>).flatMap(([p, methods]) =>
      Object.entries(methods).map(([m, op]) => ({ key: `${m.toUpperCase()} ${p}`, op })),
    );
    const keys = ops.map((o) => o.key);
    for (const expected of [
      'GET /healthz',
      'GET /metrics',
      'GET /api/system',
      'GET /api/openapi.json',
      'POST /api/functions',
      'GET /api/functions',
      'GET /api/functions/{id}',
      'PUT /api/functions/{id}',
      'PATCH /api/functions/{id}',
      'DELETE /api/functions/{id}',
      'POST /api/functions/{id}/code',
      'GET /api/functions/{id}/instances',
      'GET /api/functions/{id}/invocations',
      'GET /api/functions/{id}/stats',
      'POST /functions/{id}/{path}',
      'GET /functions/{id}',
    ]) {
      assert.ok(keys.includes(expected), `${expected} is described`);
    }
    for (const { key, op } of ops) {
      assert.ok(op.summary, `${key} has a summary`);
      const needsToken = key.includes(' /api/') || key === 'GET /metrics';
      assert.deepEqual(op.security, needsToken ? [{ token: [] }] : [], `${key}: security`);
      const declared = op.parameters.filter((p: any) => p.in === 'path').map((p: any) => p.name);
      const inPath = [...key.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
      assert.deepEqual(declared.sort(), inPath.sort(), `${key}: path parameters`);
    }
    // Bodies come from the very schemas the core validates with.
    const create = doc.paths['/api/functions'].post.requestBody.content['application/json'].schema;
    assert.deepEqual(create.required.sort(), ['name', 'runtime']);
    assert.equal(create.properties.memory_mb.maximum, 8192);
    assert.equal(create.additionalProperties, false);
    assert.ok(doc.paths['/api/functions/{id}/code'].post.requestBody.content['multipart/form-data']);
  });

  test('real responses match their documented schemas', async () => {
    const created = await a.api('POST', '/api/functions', { name: 'described', runtime: 'node', env_vars: { SECRET: 'x' } });
    assert.equal(created.status, 201);
    FunctionView.parse(created.body);
    const up = await a.upload('described', { 'handler.js': HANDLER_CJS });
    CodeUploadResult.parse(up.body);
    assert.equal((await a.invoke('described')).status, 200);
    FunctionView.parse((await a.api('GET', '/api/functions/described')).body);
    z.array(FunctionView).parse((await a.api('GET', '/api/functions')).body);
    const instances = z.array(InstanceInfoSchema).parse((await a.api('GET', '/api/functions/described/instances')).body);
    assert.equal(instances.length, 1);
    const invocations = z.array(InvocationRecordSchema).parse((await a.api('GET', '/api/functions/described/invocations')).body);
    assert.equal(invocations.length, 1);
    SystemInfo.parse((await a.api('GET', '/api/system')).body);
  });
});

describe('every route is described', () => {
  const app = (register: (app: ReturnType<typeof Fastify>) => void) => {
    const f = Fastify();
    describedRoutes(f);
    register(f);
    return { ready: async () => void (await f.ready()), inject: f.inject.bind(f), close: () => f.close() };
  };

  test('a route without a summary or responses stops the start, naming the route', async () => {
    const bare = app((f) => f.get('/api/things', async () => []));
    await assert.rejects(bare.ready(), /GET \/api\/things: no schema\.summary/);
    const noResponse = app((f) => f.get('/api/things', { schema: { summary: 'things' } }, async () => []));
    await assert.rejects(noResponse.ready(), /\/api\/things: no schema\.response/);
  });

  test('a path parameter missing from schema.params stops the start', async () => {
    const f = app((f) =>
      f.get(
        '/api/things/:id/:part',
        { schema: { summary: 'a thing', params: z.object({ id: z.string() }), response: { 200: z.string() } } },
        async () => '',
      ),
    );
    await assert.rejects(f.ready(), /path parameters part missing from schema\.params/);
  });

  test('a described route starts, and validates its params and query with its zod schemas', async () => {
    const f = app((f) =>
      f.get(
        '/api/things/:id',
        {
          schema: {
            summary: 'a thing',
            params: z.object({ id: z.string().regex(/^\d+$/) }),
            querystring: z.object({ limit: z.coerce.number().int().max(10).optional() }),
            response: { 200: z.object({ id: z.string() }) },
          },
        },
        async (req: FastifyRequest) => ({ id: (req.params as { id: string }).id }),
      ),
    );
    await f.ready();
    assert.equal((await f.inject('/api/things/7?limit=3')).statusCode, 200);
    const badParam = await f.inject('/api/things/x');
    assert.equal(badParam.statusCode, 400);
    assert.match(badParam.json().message, /^path parameter id: /);
    const badQuery = await f.inject('/api/things/7?limit=50');
    assert.equal(badQuery.statusCode, 400);
    assert.match(badQuery.json().message, /^query parameter limit: Too big/);
    await f.close();
  });
});
