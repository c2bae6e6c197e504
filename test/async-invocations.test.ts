/**
 * Async (`Event`) invocations on one node, end to end: real server, real sandboxes, real clients (the
 * AWS SDK's InvokeCommand and the aws CLI with InvocationType Event, plain HTTP with
 * X-Aether-Invocation-Type: Event), retries into the dead-letter list and back, and the per-function
 * bound. kill -9 of the server: async-durability.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { type Aether, sandboxDrivers, startAether } from './helpers/aether.ts';
import { skipUnless } from './helpers/skip.ts';
import { until } from './helpers/wait.ts';
import { awsCliEnv } from './helpers/aws-cli.ts';

const KEY = { accessKeyId: 'AKIAAETHERTEST000002', secretAccessKey: 'aether-test-secret-0123456789' };
const LAMBDA_ENV = { AETHER_LAMBDA_ACCESS_KEY_ID: KEY.accessKeyId, AETHER_LAMBDA_SECRET_ACCESS_KEY: KEY.secretAccessKey };
const AWS_CLI = '/usr/bin/aws';

/** Prints what it got, so that the test can see the event each attempt received. */
const ECHO = `exports.handler = async (event, context) => { console.log('got ' + JSON.stringify(event)); return 'ok'; };`;
const FAIL = `exports.handler = async (event) => { throw new TypeError('always fails: ' + JSON.stringify(event)); };`;
const SLOW = `exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 1000)); return 'slept'; };`;

const encode = (value: unknown) => Buffer.from(JSON.stringify(value));
type Rec = {
  request_id: string;
  invocation_type: string;
  attempts: number;
  error: string | null;
  status: number;
  started_at: string;
  duration_ms: number;
};

async function records(a: Aether, fn: string): Promise<Rec[]> {
  return (await a.api('GET', `/api/functions/${fn}/invocations?limit=1000`)).body;
}

/** The attempts of one event, oldest first. */
async function attemptsOf(a: Aether, fn: string, requestId: string): Promise<Rec[]> {
  return (await records(a, fn)).filter((r) => r.request_id === requestId).reverse();
}

/** The event the handler printed for a request id (the `got ...` line). */
async function eventSeen(a: Aether, fn: string, requestId: string): Promise<any> {
  let line: string | undefined;
  await until(
    async () => {
      const page = (await a.api('GET', `/api/functions/${fn}/logs?request_id=${requestId}`)).body;
      line = page.lines.find((l: { message: string }) => l.message.startsWith('got '))?.message;
      return line !== undefined;
    },
    15_000,
    `the handler's line for ${requestId}`,
  );
  return JSON.parse(line!.slice(4));
}

async function postEvent(a: Aether, fn: string, p: string, init: RequestInit = {}): Promise<Response> {
  return a.invoke(fn, p, { method: 'POST', ...init, headers: { 'x-aether-invocation-type': 'Event', ...(init.headers ?? {}) } });
}

describe('async invocations, single node', () => {
  let a: Aether;
  let lambda: LambdaClient;

  before(async () => {
    a = await startAether({
      isolation: sandboxDrivers()[0],
      env: { ...LAMBDA_ENV, AETHER_ASYNC_CONCURRENCY: '2', AETHER_ASYNC_RETRY_BASE_MS: '100' },
    });
    lambda = new LambdaClient({ endpoint: a.url, region: 'eu-west-1', credentials: KEY, maxAttempts: 1 });
    await a.deploy({ name: 'echo' }, { 'handler.js': ECHO });
  });
  after(() => a?.stop());

  test('InvokeCommand with InvocationType Event: 202 at once, then the event runs once, recorded as an Event attempt', async () => {
    const out = await lambda.send(new InvokeCommand({ FunctionName: 'echo', InvocationType: 'Event', Payload: encode({ order: 42 }) }));
    assert.equal(out.StatusCode, 202);
    assert.equal(Buffer.from(out.Payload ?? []).length, 0, 'no payload, as on Lambda');
    const id = out.$metadata.requestId!;
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(await eventSeen(a, 'echo', id), { order: 42 }, 'the handler got the event as sent');
    await until(async () => (await attemptsOf(a, 'echo', id)).length === 1, 5000, 'the record');
    const [rec] = await attemptsOf(a, 'echo', id);
    assert.deepEqual([rec!.invocation_type, rec!.attempts, rec!.error, rec!.status], ['Event', 1, null, 200]);
  });

  test('Event payloads over 256 KB: RequestEntityTooLargeException (413), nothing queued', async () => {
    const before = (await records(a, 'echo')).length;
    try {
      await lambda.send(new InvokeCommand({ FunctionName: 'echo', InvocationType: 'Event', Payload: encode('x'.repeat(256 * 1024)) }));
      assert.fail('should have been refused');
    } catch (err) {
      const e = err as { name: string; $metadata?: { httpStatusCode?: number }; message: string };
      assert.deepEqual([e.name, e.$metadata?.httpStatusCode], ['RequestEntityTooLargeException', 413]);
      assert.match(e.message, /262144 bytes/);
    }
    const notJson = await lambda
      .send(new InvokeCommand({ FunctionName: 'echo', InvocationType: 'Event', Payload: Buffer.from('{nope') }))
      .catch((err: { name: string }) => err.name);
    assert.equal(notJson, 'InvalidRequestContentException');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await records(a, 'echo')).length, before);
  });

  test('the aws CLI: lambda invoke --invocation-type Event answers StatusCode 202 and the event runs', {
    skip: skipUnless(existsSync(AWS_CLI), `${AWS_CLI} is missing: apt-get install awscli`),
  }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-awscli-'));
    try {
      const env = awsCliEnv(dir, KEY);
      const args = ['lambda', 'invoke', '--endpoint-url', a.url, '--function-name', 'echo', '--invocation-type', 'Event'];
      const { stdout } = await promisify(execFile)(
        AWS_CLI,
        [...args, '--cli-binary-format', 'raw-in-base64-out', '--payload', '{"from":"cli"}', path.join(dir, 'out.json')],
        { env },
      );
      assert.equal(JSON.parse(stdout).StatusCode, 202);
      await until(
        async () => {
          const page = (await a.api('GET', '/api/functions/echo/logs?limit=1000')).body;
          return page.lines.some((l: { message: string }) => l.message === 'got {"from":"cli"}');
        },
        15_000,
        'the CLI event to run',
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('HTTP route with X-Aether-Invocation-Type: Event: the whole request becomes the event, 202 with its id', async () => {
    const res = await postEvent(a, 'echo', '/orders/7?expand=1', {
      body: 'hello async',
      headers: { 'content-type': 'text/plain', 'x-custom': 'kept', 'x-request-id': 'client-req-1' },
    });
    assert.equal(res.status, 202);
    const body = await res.json();
    assert.equal(body.request_id, 'client-req-1');
    assert.equal(res.headers.get('x-request-id'), 'client-req-1');
    assert.match(body.id, /^[0-9a-f-]{36}$/);
    const event = await eventSeen(a, 'echo', 'client-req-1');
    assert.equal(event.rawPath, '/orders/7');
    assert.equal(event.rawQueryString, 'expand=1');
    assert.equal(event.requestContext.http.method, 'POST');
    assert.equal(event.headers['x-custom'], 'kept');
    assert.equal(event.body, 'hello async');
    assert.equal(event.isBase64Encoded, false);

    const get = await postEvent(a, 'echo', '/ping', { method: 'GET', headers: { 'x-request-id': 'client-req-2' } });
    assert.equal(get.status, 202);
    assert.equal((await eventSeen(a, 'echo', 'client-req-2')).requestContext.http.method, 'GET');

    const big = await postEvent(a, 'echo', '/', { body: 'x'.repeat(256 * 1024 + 1) });
    assert.equal(big.status, 413);
    assert.equal((await big.json()).error.code, 'too_large');
    const bad = await postEvent(a, 'echo', '/', { headers: { 'x-aether-invocation-type': 'Later' } });
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error.message, /must be Event or RequestResponse/);
    const missing = await postEvent(a, 'nope', '/');
    assert.equal(missing.status, 404);
  });

  test('a failing function: retried up to max_retries, then a dead letter; redrive and delete, one or all', async () => {
    await a.deploy({ name: 'fail', max_retries: 1 }, { 'handler.js': FAIL });
    const out = await lambda.send(new InvokeCommand({ FunctionName: 'fail', InvocationType: 'Event', Payload: encode({ n: 1 }) }));
    const id = out.$metadata.requestId!;
    const letters = async () => (await a.api('GET', '/api/functions/fail/dead-letters')).body;
    await until(async () => (await letters()).length === 1, 15_000, 'the dead letter');
    const [letter] = await letters();
    assert.equal(letter.id, id);
    assert.equal(letter.reason, 'retries_exhausted');
    assert.equal(letter.attempts, 2, 'the first attempt and max_retries (1) retries');
    assert.equal(letter.payload, '{"n":1}');
    assert.equal(letter.source, 'invoke');
    assert.match(letter.error, /TypeError: always fails/);
    await until(async () => (await attemptsOf(a, 'fail', id)).length === 2, 5000, 'both attempts recorded');
    const attempts = await attemptsOf(a, 'fail', id);
    assert.deepEqual(
      attempts.map((r) => [r.invocation_type, r.attempts, r.status]),
      [
        ['Event', 1, 200],
        ['Event', 2, 200],
      ],
    );
    assert.ok(attempts.every((r) => /always fails/.test(r.error ?? '')));
    assert.equal((await a.api('GET', '/api/functions/fail/invocations?status=error')).body.length, 2, 'failed attempts are errors');

    // Redrive one: it runs again from its first attempt, and fails into the list again.
    const redrive = await a.api('POST', `/api/functions/fail/dead-letters/${id}/redrive`);
    assert.deepEqual([redrive.status, redrive.body], [200, { redriven: 1 }]);
    await until(async () => (await attemptsOf(a, 'fail', id)).length === 4, 15_000, 'two more attempts');
    await until(async () => (await letters()).length === 1, 15_000, 'the dead letter again');

    // A second one, over HTTP; then redrive all, delete one, delete all.
    const res = await postEvent(a, 'fail', '/x', { body: '{}', headers: { 'x-request-id': 'http-fail' } });
    const httpId = (await res.json()).id;
    await until(async () => (await letters()).length === 2, 15_000, 'two dead letters');
    const httpLetter = (await letters()).find((l: { id: string }) => l.id === httpId);
    assert.deepEqual([httpLetter.source, httpLetter.method, httpLetter.path, httpLetter.payload], ['http', 'POST', '/x', null]);
    assert.deepEqual((await a.api('POST', '/api/functions/fail/dead-letters/redrive')).body, { redriven: 2 });
    assert.deepEqual(await letters(), []);
    await until(async () => (await letters()).length === 2, 15_000, 'both back in the list');
    assert.equal((await a.api('DELETE', `/api/functions/fail/dead-letters/${httpId}`)).status, 204);
    const gone = await a.api('DELETE', `/api/functions/fail/dead-letters/${httpId}`);
    assert.deepEqual([gone.status, gone.body.error.code], [404, 'dead_letter_not_found']);
    assert.equal((await a.api('POST', `/api/functions/fail/dead-letters/${httpId}/redrive`)).status, 404);
    assert.deepEqual((await a.api('DELETE', '/api/functions/fail/dead-letters')).body, { deleted: 1 });
    assert.deepEqual(await letters(), []);
    assert.equal((await a.api('GET', '/api/functions/nope/dead-letters')).status, 404);
    assert.equal((await a.api('GET', '/api/functions/fail/dead-letters', undefined, { authorization: 'Bearer wrong' })).status, 401);
  });

  test('an async invocation runs the version it was invoked with (name:version, Qualifier), unqualified the latest', async () => {
    await a.deploy({ name: 'pinned' }, { 'handler.js': ECHO });
    const v2 = await a.upload('pinned', { 'handler.js': ECHO.replace("'got '", "'got ' + 'v2:' + ") });
    assert.equal(v2.status, 200);
    const viaHttp = (await (await postEvent(a, 'pinned:1', '/', { body: 'one', headers: { 'x-request-id': 'pin-http' } })).json())
      .request_id;
    const viaSdk = await lambda.send(
      new InvokeCommand({ FunctionName: 'pinned', Qualifier: '1', InvocationType: 'Event', Payload: encode({ pinned: true }) }),
    );
    const latest = (await (await postEvent(a, 'pinned', '/', { body: 'latest', headers: { 'x-request-id': 'pin-latest' } })).json())
      .request_id;
    assert.equal((await eventSeen(a, 'pinned', viaHttp)).body, 'one', 'version 1 printed it (no v2: prefix)');
    assert.deepEqual(await eventSeen(a, 'pinned', viaSdk.$metadata.requestId!), { pinned: true });
    await until(
      async () =>
        (await a.api('GET', `/api/functions/pinned/logs?request_id=${latest}`)).body.lines.some((l: { message: string }) =>
          l.message.startsWith('got v2:'),
        ),
      15_000,
      'the latest version to run the unqualified event',
    );
  });

  test('max_retries and max_event_age_s are validated like the other settings', async () => {
    const low = await a.api('POST', '/api/functions', { name: 'v1', runtime: 'node', max_retries: 3 });
    assert.deepEqual([low.status, low.body.error.code], [400, 'validation_failed']);
    assert.match(low.body.error.message, /max_retries/);
    const age = await a.api('POST', '/api/functions', { name: 'v2', runtime: 'node', max_event_age_s: 59 });
    assert.match(age.body.error.message, /max_event_age_s/);
    const ok = await a.api('POST', '/api/functions', { name: 'v3', runtime: 'node', max_retries: 0, max_event_age_s: 60 });
    assert.deepEqual([ok.body.max_retries, ok.body.max_event_age_s], [0, 60]);
    const defaults = (await a.api('GET', '/api/functions/echo')).body;
    assert.deepEqual([defaults.max_retries, defaults.max_event_age_s], [2, 21600]);
  });

  test('async work of a function is bounded (AETHER_ASYNC_CONCURRENCY=2): synchronous requests still get through', async () => {
    await a.deploy({ name: 'slow', concurrency: 1, max_instances: 3 }, { 'handler.js': SLOW });
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await (await postEvent(a, 'slow', '/', { body: '{}' })).json()).request_id);
    const started = Date.now();
    const sync = await a.invoke('slow', '/');
    const syncMs = Date.now() - started;
    assert.equal(sync.status, 200);
    const asyncDone = (await records(a, 'slow')).filter((r) => r.invocation_type === 'Event').length;
    assert.ok(asyncDone < 6, `the sync request (${syncMs} ms) did not wait for the async backlog (${asyncDone} of 6 done)`);
    await until(
      async () => (await records(a, 'slow')).filter((r) => r.invocation_type === 'Event' && r.error === null).length === 6,
      20_000,
      'the backlog',
    );
    // No moment had more than two async attempts running.
    const spans = (await records(a, 'slow'))
      .filter((r) => r.invocation_type === 'Event')
      .map((r) => [Date.parse(r.started_at), Date.parse(r.started_at) + r.duration_ms] as const);
    for (const [start] of spans) {
      const overlapping = spans.filter(([s, e]) => s <= start && start < e).length;
      assert.ok(overlapping <= 2, `${overlapping} async attempts at once`);
    }
  });
});
