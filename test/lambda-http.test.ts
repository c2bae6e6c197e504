/**
 * Lambda handlers behind HTTP, end to end: a real Aether with real sandboxes, real HTTP clients, and
 * unchanged Lambda code — hand-written handlers per event format, and Express apps wrapped by the
 * adapters people deploy to Lambda (serverless-http, @codegenie/serverless-express), bundled from
 * node_modules with esbuild into the zip exactly as one would for AWS.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { build } from 'esbuild';
import { storedRecord } from '../src/core/function-spec.ts';
import { ROOT, sandboxDrivers, startAether, type Aether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

const BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** One Express app, exported as a Lambda handler through the adapter named in ADAPTER. */
const EXPRESS_APP = `
const crypto = require('node:crypto');
const express = require('express');
const app = express();
app.get('/hello', (req, res) => res.json({ hello: req.query.name, tags: req.query.tag, method: req.method, cookie: req.headers.cookie ?? null }));
app.post('/echo', express.json(), (req, res) => res.status(201).json({ got: req.body }));
app.post('/upload', express.raw({ type: '*/*', limit: '5mb' }), (req, res) => res.json({ sha: crypto.createHash('sha256').update(req.body).digest('hex'), length: req.body.length }));
app.get('/bytes', (req, res) => res.type('image/png').send(Buffer.from(Array.from({ length: 256 }, (_, i) => i))));
app.get('/cookies', (req, res) => { res.cookie('a', '1'); res.cookie('b', '2', { httpOnly: true }); res.set('x-app', 'express').send('set'); });
// Express 5's default 404 crashes @codegenie/serverless-express >= 4.16 on AWS too (its issue #698): an explicit one.
app.use((req, res) => res.status(404).send('no route'));
ADAPTER
`;

const bundles = new Map<string, Promise<string>>();
function bundle(source: string): Promise<string> {
  let bundled = bundles.get(source);
  if (!bundled) bundles.set(source, (bundled = esbuild(source)));
  return bundled;
}

async function esbuild(source: string): Promise<string> {
  const out = await build({
    stdin: { contents: source, resolveDir: ROOT, loader: 'js' },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    write: false,
    logLevel: 'error',
  });
  return out.outputFiles[0]!.text;
}

describe('Lambda handlers behind HTTP', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: sandboxDrivers()[0] });
  });
  after(() => a.stop());

  test('default event (payload 2.0 plus the first fields) and the Lambda context; the request id is the invocation record', async () => {
    await a.deploy(
      { name: 'v2-echo', memory_mb: 256, timeout_ms: 20_000 },
      {
        'handler.js': `exports.handler = async (event, context) => ({ event, context: { ...context, remaining: context.getRemainingTimeInMillis() } });`,
      },
    );
    const res = await a.invoke('v2-echo', '/some/path?x=1&x=2&y=%C3%A4', {
      method: 'PUT',
      headers: { cookie: 'session=abc; theme=dark', 'content-type': 'application/octet-stream', 'x-custom': 'yes' },
      body: BYTES,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/json');
    const { event, context } = await res.json();
    assert.equal(event.version, '2.0');
    assert.equal(event.routeKey, '$default');
    assert.equal(event.rawPath, '/some/path');
    assert.equal(event.rawQueryString, 'x=1&x=2&y=%C3%A4');
    assert.deepEqual(event.queryStringParameters, { x: '1,2', y: 'ä' });
    assert.deepEqual(event.cookies, ['session=abc', 'theme=dark']);
    assert.equal(event.headers['x-custom'], 'yes');
    assert.equal(event.headers.cookie, undefined);
    assert.ok(Object.keys(event.headers).every((h) => h === h.toLowerCase() && !h.startsWith('x-aether-')));
    assert.equal(event.requestContext.http.method, 'PUT');
    assert.equal(event.requestContext.http.path, '/some/path');
    assert.equal(event.requestContext.http.sourceIp, '127.0.0.1');
    assert.ok(event.requestContext.timeEpoch <= Date.now());
    assert.equal(event.isBase64Encoded, true);
    assert.deepEqual(Buffer.from(event.body, 'base64'), BYTES);
    // Aether's first fields are still there: today's handlers keep working without settings.
    assert.equal(event.method, 'PUT');
    assert.equal(event.path, '/some/path');
    assert.deepEqual(event.query, { x: '1,2', y: 'ä' });

    assert.equal(context.functionName, 'v2-echo');
    assert.equal(context.functionVersion, '$LATEST');
    assert.equal(context.memoryLimitInMB, '256');
    assert.equal(context.invokedFunctionArn, 'arn:aether:lambda:local:000000000000:function:v2-echo');
    assert.equal(context.callbackWaitsForEmptyEventLoop, true);
    assert.ok(context.remaining > 0 && context.remaining <= 20_000, `remaining ${context.remaining}`);
    assert.equal(event.requestContext.requestId, context.awsRequestId);
    const records = (await a.api('GET', '/api/functions/v2-echo/invocations')).body;
    assert.equal(records[0].id, context.awsRequestId);
  });

  test('payload 2.0 results: cookies, multiValueHeaders, binary bodies byte for byte, plain values as JSON', async () => {
    await a.deploy(
      { name: 'v2-results' },
      {
        'handler.js': `
          const BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
          exports.handler = async (event) => {
            switch (event.rawPath) {
              case '/binary': return { statusCode: 200, headers: { 'content-type': 'image/png' }, body: BYTES.toString('base64'), isBase64Encoded: true };
              case '/cookies': return { statusCode: 302, headers: { location: '/next' }, multiValueHeaders: { 'x-multi': ['a', 'b'] }, cookies: ['a=1; Path=/', 'b=2; HttpOnly'] };
              case '/string': return 'Hello from Lambda!';
              case '/object': return { message: 'hi' };
              case '/throw': throw new Error('boom');
              case '/malformed': return { statusCode: 'teapot' };
            }
          };`,
      },
    );
    const bin = await a.invoke('v2-results', '/binary');
    assert.equal(bin.headers.get('content-type'), 'image/png');
    assert.deepEqual(Buffer.from(await bin.arrayBuffer()), BYTES);

    const cookies = await a.invoke('v2-results', '/cookies', { redirect: 'manual' });
    assert.equal(cookies.status, 302);
    assert.equal(cookies.headers.get('location'), '/next');
    assert.deepEqual(cookies.headers.getSetCookie(), ['a=1; Path=/', 'b=2; HttpOnly']);
    assert.equal(cookies.headers.get('x-multi'), 'a, b');

    const text = await a.invoke('v2-results', '/string');
    assert.equal(text.headers.get('content-type'), 'application/json');
    assert.equal(await text.text(), 'Hello from Lambda!');
    assert.deepEqual(await (await a.invoke('v2-results', '/object')).json(), { message: 'hi' });

    const thrown = await a.invoke('v2-results', '/throw');
    assert.equal(thrown.status, 500);
    assert.deepEqual(await thrown.json(), { message: 'Internal Server Error' });
    const record = (await a.api('GET', '/api/functions/v2-results/invocations?limit=1')).body[0];
    assert.deepEqual([record.status, record.error], [500, 'boom']);
    const malformed = await a.invoke('v2-results', '/malformed');
    assert.equal(malformed.status, 500);
    // Why, in the function's log under each invocation's request id (it arrives a moment after the answer).
    const logged = async (res: Response, text: string) => {
      const path = `/api/functions/v2-results/logs?request_id=${res.headers.get('x-request-id')}`;
      await until(async () => (await a.api('GET', path)).body.lines.some((l: { message: string }) => l.message.includes(text)), 5000, text);
    };
    await logged(thrown, 'Error: boom');
    await logged(malformed, 'a result API Gateway would reject: statusCode teapot');
  });

  test('REST payload 1.0 (event_format apigw-v1): the event, strict results, 502 on errors', async () => {
    await a.deploy(
      { name: 'v1', event_format: 'apigw-v1' },
      {
        'handler.js': `exports.handler = (event, context, callback) => {
          if (event.path === '/bad') return callback(null, 'not a REST API result');
          if (event.path === '/fail') return callback(new Error('nope'));
          setTimeout(() => callback(null, { statusCode: 200, headers: { 'Content-Type': 'application/json' }, multiValueHeaders: { 'Set-Cookie': ['a=1', 'b=2'] },
            body: JSON.stringify({ httpMethod: event.httpMethod, path: event.path, resource: event.resource, proxy: event.pathParameters.proxy,
              headers: event.headers, multiValueHeaders: event.multiValueHeaders, mq: event.multiValueQueryStringParameters, q: event.queryStringParameters,
              body: event.body, isBase64Encoded: event.isBase64Encoded, ip: event.requestContext.identity.sourceIp, id: context.awsRequestId }) }), 5);
        };`,
      },
    );
    const res = await a.invoke('v1', '/items/7?tag=a&tag=b', { method: 'POST', headers: { 'X-Mixed-Case': 'v' }, body: '{"n":1}' });
    assert.equal(res.status, 200);
    assert.deepEqual(res.headers.getSetCookie(), ['a=1', 'b=2']);
    const got = await res.json();
    assert.equal(got.httpMethod, 'POST');
    assert.equal(got.path, '/items/7');
    assert.equal(got.resource, '/{proxy+}');
    assert.equal(got.proxy, 'items/7');
    // Header names arrive as Aether's front door passes them on: lower-case.
    assert.equal(got.headers['x-mixed-case'], 'v');
    assert.deepEqual(got.multiValueHeaders['x-mixed-case'], ['v']);
    assert.deepEqual(got.mq, { tag: ['a', 'b'] });
    assert.deepEqual(got.q, { tag: 'b' });
    assert.equal(got.body, '{"n":1}');
    assert.equal(got.isBase64Encoded, false);
    assert.equal(got.ip, '127.0.0.1');

    for (const path of ['/bad', '/fail']) {
      const failed = await a.invoke('v1', path);
      assert.equal(failed.status, 502, path);
      assert.deepEqual(await failed.json(), { message: 'Internal server error' });
    }
  });

  test('event_format: apigw-v2 unless set, one of three, and records written before it existed get the default', async () => {
    const created = await a.api('POST', '/api/functions', { name: 'fmt', runtime: 'node' });
    assert.equal(created.body.event_format, 'apigw-v2');
    const bad = await a.api('PATCH', '/api/functions/fmt', { event_format: 'apigw-v3' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /event_format must be one of: apigw-v2, apigw-v1, aether/);
    const { event_format: _, ...old } = created.body;
    assert.equal(storedRecord(JSON.stringify(old)).event_format, 'apigw-v2');
  });

  test('without an access key configured there is no Lambda Invoke API', async () => {
    const res = await fetch(`${a.url}/2015-03-31/functions/fmt/invocations`, { method: 'POST', body: '{}' });
    assert.equal(res.status, 404);
    assert.equal((await res.json()).error.code, 'not_found');
  });

  test("today's event format stays available (event_format aether)", async () => {
    await a.deploy(
      { name: 'first', event_format: 'aether' },
      { 'handler.js': `exports.handler = async (event) => event.query.name + ' via ' + event.method;` },
    );
    const res = await a.invoke('first', '/?name=ada');
    assert.equal(res.headers.get('content-type'), 'text/plain; charset=utf-8');
    assert.equal(await res.text(), 'ada via GET');
  });

  const adapters = [
    {
      name: 'sls-http-v2',
      format: 'apigw-v2',
      adapter: `module.exports.handler = require('serverless-http')(app, { binary: ['image/*', 'application/octet-stream'] });`,
    },
    {
      name: 'sls-http-v1',
      format: 'apigw-v1',
      adapter: `module.exports.handler = require('serverless-http')(app, { binary: ['image/*', 'application/octet-stream'] });`,
    },
    { name: 'sls-express-v2', format: 'apigw-v2', adapter: `module.exports.handler = require('@codegenie/serverless-express')({ app });` },
    { name: 'sls-express-v1', format: 'apigw-v1', adapter: `module.exports.handler = require('@codegenie/serverless-express')({ app });` },
  ];
  for (const { name, format, adapter } of adapters) {
    test(`an unchanged Express app through ${name.replace(/-v\d$/, '')} (${format})`, async () => {
      await a.deploy({ name, event_format: format }, { 'handler.js': await bundle(EXPRESS_APP.replace('ADAPTER', adapter)) });

      const hello = await a.invoke(name, '/hello?name=ada&tag=x&tag=y', { headers: { cookie: 'k=v; l=w' } });
      assert.equal(hello.status, 200);
      assert.deepEqual(await hello.json(), { hello: 'ada', tags: ['x', 'y'], method: 'GET', cookie: 'k=v; l=w' });

      const echo = await a.invoke(name, '/echo', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":[1,2]}' });
      assert.equal(echo.status, 201);
      assert.deepEqual(await echo.json(), { got: { a: [1, 2] } });

      const upload = Buffer.concat([BYTES, Buffer.from(BYTES).reverse(), Buffer.alloc(100_000, 7)]);
      const up = await a.invoke(name, '/upload', { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: upload });
      assert.deepEqual(await up.json(), { sha: sha(upload), length: upload.length });

      const bytes = await a.invoke(name, '/bytes');
      assert.equal(bytes.headers.get('content-type'), 'image/png');
      assert.equal(sha(Buffer.from(await bytes.arrayBuffer())), sha(Buffer.from(Array.from({ length: 256 }, (_, i) => i))));

      const cookies = await a.invoke(name, '/cookies');
      assert.equal(cookies.headers.get('x-app'), 'express');
      assert.deepEqual(cookies.headers.getSetCookie(), ['a=1; Path=/', 'b=2; Path=/; HttpOnly']);
      assert.equal(await cookies.text(), 'set');

      assert.equal((await a.invoke(name, '/nowhere')).status, 404);
    });
  }
});
