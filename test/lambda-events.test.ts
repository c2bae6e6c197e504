/**
 * HTTP requests as Lambda events and handler results as HTTP answers, per event format (the pure
 * module the guest agent uses), checked field by field against API Gateway's payload formats.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EVENT_FORMATS as HOST_FORMATS } from '../src/core/types.ts';
import { EVENT_FORMATS, failureAnswer, type HttpFacts, MalformedResult, toAnswer, toEvent } from '../src/guest/agent/lambda-events.mts';

const TIME = Date.UTC(2026, 2, 12, 19, 3, 58, 390);
const BYTES = Buffer.from([0, 1, 2, 253, 254, 255]);

function facts(overrides: Partial<HttpFacts> = {}): HttpFacts {
  return {
    method: 'POST',
    url: '/my/path%20x?parameter1=value1&parameter1=value2&parameter2=a%20b',
    rawHeaders: [
      'Host',
      'fn.example.com',
      'Connection',
      'keep-alive',
      'Content-Type',
      'application/octet-stream',
      'X-Multi',
      'one',
      'x-multi',
      'two',
      'Cookie',
      'cookie1=1; cookie2=2',
      'User-Agent',
      'curl/8',
      'X-Aether-Deadline',
      '123',
    ],
    body: BYTES,
    sourceIp: '192.0.2.7',
    requestId: 'req-1',
    time: TIME,
    ...overrides,
  };
}

test('the agent implements exactly the event formats the host accepts', () => {
  assert.deepEqual([...EVENT_FORMATS], [...HOST_FORMATS]);
});

describe('events', () => {
  test('apigw-v2: payload 2.0, binary body base64, cookies apart, repeated values comma-joined, plus the convenience fields', () => {
    const event = toEvent('apigw-v2', facts());
    assert.deepEqual(event, {
      version: '2.0',
      routeKey: '$default',
      rawPath: '/my/path%20x',
      rawQueryString: 'parameter1=value1&parameter1=value2&parameter2=a%20b',
      cookies: ['cookie1=1', 'cookie2=2'],
      headers: { host: 'fn.example.com', 'content-type': 'application/octet-stream', 'x-multi': 'one,two', 'user-agent': 'curl/8' },
      queryStringParameters: { parameter1: 'value1,value2', parameter2: 'a b' },
      requestContext: {
        accountId: '000000000000',
        apiId: 'aether',
        domainName: 'fn.example.com',
        domainPrefix: 'fn',
        http: { method: 'POST', path: '/my/path%20x', protocol: 'HTTP/1.1', sourceIp: '192.0.2.7', userAgent: 'curl/8' },
        requestId: 'req-1',
        routeKey: '$default',
        stage: '$default',
        time: '12/Mar/2026:19:03:58 +0000',
        timeEpoch: TIME,
      },
      isBase64Encoded: true,
      body: BYTES.toString('base64'),
      method: 'POST',
      path: '/my/path x',
      query: { parameter1: 'value1,value2', parameter2: 'a b' },
      rawQuery: 'parameter1=value1&parameter1=value2&parameter2=a%20b',
      requestId: 'req-1',
    });
  });

  test('apigw-v2: a GET has no body, no query parameters and no cookies; text bodies stay text', () => {
    const get = toEvent('apigw-v2', facts({ method: 'GET', url: '/', rawHeaders: ['host', 'h'], body: Buffer.alloc(0) }));
    assert.equal('body' in get, false);
    assert.equal('queryStringParameters' in get, false);
    assert.equal('cookies' in get, false);
    assert.equal(get.isBase64Encoded, false);
    for (const type of ['application/json; charset=utf-8', 'text/html', 'application/x-www-form-urlencoded', 'application/vnd.api+json']) {
      const event = toEvent('apigw-v2', facts({ rawHeaders: ['content-type', type], body: Buffer.from('{"ä":1}') }));
      assert.equal(event.body, '{"ä":1}', type);
      assert.equal(event.isBase64Encoded, false, type);
    }
  });

  test('apigw-v1: REST payload 1.0 with header case kept, multi-value maps, nulls where API Gateway sends them', () => {
    const event = toEvent('apigw-v1', facts());
    assert.deepEqual(event, {
      resource: '/{proxy+}',
      path: '/my/path%20x',
      httpMethod: 'POST',
      headers: {
        Host: 'fn.example.com',
        'Content-Type': 'application/octet-stream',
        'X-Multi': 'one',
        'x-multi': 'two',
        Cookie: 'cookie1=1; cookie2=2',
        'User-Agent': 'curl/8',
      },
      multiValueHeaders: {
        Host: ['fn.example.com'],
        'Content-Type': ['application/octet-stream'],
        'X-Multi': ['one'],
        'x-multi': ['two'],
        Cookie: ['cookie1=1; cookie2=2'],
        'User-Agent': ['curl/8'],
      },
      queryStringParameters: { parameter1: 'value2', parameter2: 'a b' },
      multiValueQueryStringParameters: { parameter1: ['value1', 'value2'], parameter2: ['a b'] },
      pathParameters: { proxy: 'my/path x' },
      stageVariables: null,
      requestContext: {
        accountId: '000000000000',
        apiId: 'aether',
        domainName: 'fn.example.com',
        domainPrefix: 'fn',
        extendedRequestId: 'req-1',
        httpMethod: 'POST',
        identity: { sourceIp: '192.0.2.7', userAgent: 'curl/8' },
        path: '/my/path%20x',
        protocol: 'HTTP/1.1',
        requestId: 'req-1',
        requestTime: '12/Mar/2026:19:03:58 +0000',
        requestTimeEpoch: TIME,
        resourceId: 'aether',
        resourcePath: '/{proxy+}',
        stage: '$default',
      },
      body: BYTES.toString('base64'),
      isBase64Encoded: true,
    });
    const root = toEvent('apigw-v1', facts({ method: 'GET', url: '/', body: Buffer.alloc(0) }));
    assert.equal(root.resource, '/');
    assert.equal(root.pathParameters, null);
    assert.equal(root.queryStringParameters, null);
    assert.equal(root.multiValueQueryStringParameters, null);
    assert.equal(root.body, null);
  });

  test('aether: the first event shape, unchanged', () => {
    assert.deepEqual(
      toEvent('aether', facts({ rawHeaders: ['X-A', '1', 'x-a', '2', 'Connection', 'close', 'Content-Type', 'image/png'] })),
      {
        method: 'POST',
        path: '/my/path x',
        rawPath: '/my/path%20x',
        query: { parameter1: 'value1,value2', parameter2: 'a b' },
        rawQuery: 'parameter1=value1&parameter1=value2&parameter2=a%20b',
        headers: { 'x-a': '1, 2', 'content-type': 'image/png' },
        body: BYTES.toString('base64'),
        isBase64Encoded: true,
        requestId: 'req-1',
      },
    );
  });
});

describe('answers', () => {
  test('apigw-v2: a plain string or object is the body of a 200 application/json answer', () => {
    assert.deepEqual(toAnswer('apigw-v2', 'Hello from Lambda!'), {
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: Buffer.from('Hello from Lambda!'),
    });
    assert.deepEqual(toAnswer('apigw-v2', { message: 'hi' }), {
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: Buffer.from('{"message":"hi"}'),
    });
    assert.deepEqual(toAnswer('apigw-v2', [1, 2]).body, Buffer.from('[1,2]'));
    assert.deepEqual(toAnswer('apigw-v2', undefined), { status: 200, headers: {}, body: Buffer.alloc(0) });
  });

  test('apigw-v2: statusCode, headers, multiValueHeaders, cookies, a base64 body byte for byte', () => {
    const answer = toAnswer('apigw-v2', {
      statusCode: 201,
      headers: { 'Content-Type': 'image/png', 'X-Count': 3, 'X-Both': 'from-headers' },
      multiValueHeaders: { 'X-Both': ['m1', 'm2'] },
      cookies: ['a=1; Path=/', 'b=2'],
      body: BYTES.toString('base64'),
      isBase64Encoded: true,
    });
    assert.deepEqual(answer, {
      status: 201,
      headers: { 'content-type': 'image/png', 'x-count': '3', 'x-both': ['m1', 'm2'], 'set-cookie': ['a=1; Path=/', 'b=2'] },
      body: BYTES,
    });
  });

  test('apigw-v1: only a structured result is an answer; headers and multiValueHeaders merge', () => {
    assert.deepEqual(
      toAnswer('apigw-v1', { statusCode: 200, headers: { A: '1', B: 'x' }, multiValueHeaders: { b: ['y', 'z'], C: ['c'] }, body: 'ok' }),
      { status: 200, headers: { a: '1', b: ['y', 'z'], c: ['c'] }, body: Buffer.from('ok') },
    );
    assert.throws(() => toAnswer('apigw-v1', 'text'), MalformedResult);
    assert.throws(() => toAnswer('apigw-v1', { body: 'no status' }), MalformedResult);
    assert.throws(() => toAnswer('apigw-v1', { statusCode: 200, body: { not: 'a string' } }), MalformedResult);
  });

  test('results API Gateway would reject are MalformedResult', () => {
    for (const format of ['apigw-v2', 'apigw-v1', 'aether'] as const) {
      assert.throws(() => toAnswer(format, { statusCode: 'teapot' }), MalformedResult, format);
      assert.throws(() => toAnswer(format, { statusCode: 700 }), MalformedResult, format);
      assert.throws(() => toAnswer(format, { statusCode: 200, headers: { 'bad name': 'x' } }), MalformedResult, format);
      assert.throws(() => toAnswer(format, { statusCode: 200, headers: { ok: 'line\nbreak' } }), MalformedResult, format);
      assert.throws(() => toAnswer(format, { statusCode: 200, multiValueHeaders: { a: 'not a list' } }), MalformedResult, format);
    }
    assert.throws(() => toAnswer('apigw-v2', { statusCode: 200, cookies: 'a=1' }), MalformedResult);
  });

  test('aether: a string is text/plain, other values JSON, bytes as they are', () => {
    assert.deepEqual(toAnswer('aether', 'hi'), {
      status: 200,
      headers: { 'content-type': 'text/plain; charset=utf-8' },
      body: Buffer.from('hi'),
    });
    assert.deepEqual(toAnswer('aether', { a: 1 }).body, Buffer.from('{"a":1}'));
    assert.deepEqual(toAnswer('aether', { statusCode: 200, body: BYTES }).body, BYTES);
  });

  test('a failed handler: what API Gateway answers for the format (Aether says why in its own format)', () => {
    const body = (format: 'apigw-v2' | 'apigw-v1' | 'aether') => {
      const a = failureAnswer(format, 'boom');
      return [a.status, JSON.parse(a.body.toString())];
    };
    assert.deepEqual(body('apigw-v2'), [500, { message: 'Internal Server Error' }]);
    assert.deepEqual(body('apigw-v1'), [502, { message: 'Internal server error' }]);
    assert.deepEqual(body('aether'), [502, { error: { code: 'handler_error', message: 'boom' } }]);
  });
});
