/**
 * The Lambda Invoke API with real clients: the AWS SDK's LambdaClient (InvokeCommand) and the aws CLI
 * (Debian's awscli, botocore: a second, independent SigV4 implementation), against a real Aether with
 * real sandboxes, on one node and through a cluster gateway.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { InvokeCommand, LambdaClient, type InvokeCommandInput } from '@aws-sdk/client-lambda';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import { sandboxDrivers, SERVER_CJS, startAether, type Aether } from './helpers/aether.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';
import { awsCliEnv } from './helpers/aws-cli.ts';

const KEY = { accessKeyId: 'AKIAAETHERTEST000001', secretAccessKey: 'aether-test-secret-0123456789' };
const LAMBDA_ENV = { AETHER_LAMBDA_ACCESS_KEY_ID: KEY.accessKeyId, AETHER_LAMBDA_SECRET_ACCESS_KEY: KEY.secretAccessKey };
const AWS_CLI = '/usr/bin/aws';

const ECHO = `exports.handler = async (event, context) => ({ event, requestId: context.awsRequestId, fn: context.functionName, arn: context.invokedFunctionArn });`;
const FAIL = `exports.handler = (event, context, callback) => {
  if (event.callback) return callback(new RangeError('from the callback'));
  const err = new TypeError('bad input: ' + event.n);
  throw err;
};`;
const SLOW = `exports.handler = async (event) => { await new Promise((r) => setTimeout(r, event.ms)); return { slept: event.ms }; };`;
const BIG = `exports.handler = async () => 'x'.repeat(7 * 1024 * 1024);`;
const TALK = `exports.handler = async (event) => {
  console.log('hello from ' + event.who);
  await new Promise((r) => setTimeout(r, 20));
  for (let i = 0; i < (event.lines ?? 0); i++) console.log(event.who + ' line ' + i + ' ' + '.'.repeat(80));
  console.error('a warning for ' + event.who);
  return 'ok';
};`;

/** The decoded X-Amz-Log-Result of an invocation. */
const tailOf = (out: { LogResult?: string }) => Buffer.from(out.LogResult ?? '', 'base64').toString();

function lambdaClient(url: string, credentials = KEY): LambdaClient {
  return new LambdaClient({ endpoint: url, region: 'eu-central-1', credentials, maxAttempts: 1 });
}

const payload = (out: { Payload?: Uint8Array }) => JSON.parse(Buffer.from(out.Payload ?? []).toString());
const encode = (value: unknown) => Buffer.from(JSON.stringify(value));

/** A signed request made by hand, for what no SDK would send (an old signature, a body changed after signing). */
async function signedFetch(url: string, init: { body: string; date?: Date; tamper?: string; headers?: Record<string, string> }) {
  const u = new URL(url);
  const signer = new SignatureV4({ credentials: KEY, region: 'us-east-1', service: 'lambda', sha256: Hash.bind(null, 'sha256') });
  const signed = await signer.sign(
    {
      method: 'POST',
      protocol: 'http:',
      hostname: u.hostname,
      port: Number(u.port),
      path: u.pathname,
      query: {},
      headers: { host: u.host, 'content-type': 'application/json', ...init.headers },
      body: init.body,
    },
    { signingDate: init.date },
  );
  return fetch(url, { method: 'POST', headers: signed.headers, body: init.tamper ?? init.body });
}

async function lambdaError(promise: Promise<unknown>): Promise<{ name: string; status: number | undefined; message: string }> {
  try {
    await promise;
  } catch (err) {
    const e = err as { name: string; message: string; $metadata?: { httpStatusCode?: number } };
    return { name: e.name, status: e.$metadata?.httpStatusCode, message: e.message };
  }
  assert.fail('the call should have failed');
}

describe('Lambda Invoke API, single node', () => {
  let a: Aether;
  let client: LambdaClient;
  const invoke = (input: InvokeCommandInput) => client.send(new InvokeCommand(input));

  before(async () => {
    a = await startAether({ isolation: sandboxDrivers()[0], env: { ...LAMBDA_ENV, AETHER_MAX_QUEUE: '0' } });
    client = lambdaClient(a.url);
    await a.deploy({ name: 'echo' }, { 'handler.js': ECHO });
    await a.deploy({ name: 'fail' }, { 'handler.js': FAIL });
  });
  after(() => a.stop());

  test('RequestResponse: any JSON event in, the result out, the request id is the invocation record', async () => {
    for (const event of [{ a: [1, 2], b: { c: null } }, [1, 'two'], 'a string', 42, null]) {
      const out = await invoke({ FunctionName: 'echo', Payload: encode(event) });
      assert.equal(out.StatusCode, 200);
      assert.equal(out.FunctionError, undefined);
      assert.equal(out.ExecutedVersion, '$LATEST');
      const result = payload(out);
      assert.deepEqual(result.event, event);
      assert.equal(result.fn, 'echo');
      assert.equal(result.arn, 'arn:aether:lambda:local:000000000000:function:echo');
      assert.equal(result.requestId, out.$metadata.requestId);
    }
    const records = (await a.api('GET', '/api/functions/echo/invocations')).body;
    assert.equal(records[0].status, 200);
    assert.equal(records[0].error, null);
    assert.equal(records.length, 5);

    const empty = await invoke({ FunctionName: 'echo' });
    assert.deepEqual(payload(empty).event, {}, 'no payload is an empty object, as on Lambda');
  });

  test('function names: plain, qualified with $LATEST, partial and full ARNs; other qualifiers and names are not found', async () => {
    for (const FunctionName of [
      'echo',
      'echo:$LATEST',
      '123456789012:function:echo',
      'arn:aws:lambda:eu-central-1:123456789012:function:echo',
    ]) {
      assert.deepEqual(payload(await invoke({ FunctionName, Payload: encode({ n: 1 }) })).event, { n: 1 }, FunctionName);
    }
    assert.equal((await invoke({ FunctionName: 'echo', Qualifier: '$LATEST' })).StatusCode, 200);
    const missing = await lambdaError(invoke({ FunctionName: 'nope' }));
    assert.deepEqual([missing.name, missing.status], ['ResourceNotFoundException', 404]);
    assert.match(missing.message, /Function not found: arn:aether:lambda:local:000000000000:function:nope/);
    const qualified = await lambdaError(invoke({ FunctionName: 'echo', Qualifier: '7' }));
    assert.deepEqual([qualified.name, qualified.status], ['ResourceNotFoundException', 404]);
  });

  test('a handler that throws: 200, X-Amz-Function-Error Unhandled, {errorType, errorMessage, stackTrace}', async () => {
    const out = await invoke({ FunctionName: 'fail', Payload: encode({ n: 3 }) });
    assert.equal(out.StatusCode, 200);
    assert.equal(out.FunctionError, 'Unhandled');
    const err = payload(out);
    assert.equal(err.errorType, 'TypeError');
    assert.equal(err.errorMessage, 'bad input: 3');
    assert.match(err.stackTrace[0], /^TypeError: bad input: 3/);
    assert.ok(err.stackTrace.some((line: string) => line.includes('handler.js')));
    const viaCallback = payload(await invoke({ FunctionName: 'fail', Payload: encode({ callback: true }) }));
    assert.deepEqual([viaCallback.errorType, viaCallback.errorMessage], ['RangeError', 'from the callback']);
    const record = (await a.api('GET', '/api/functions/fail/invocations')).body[0];
    assert.equal(record.error, 'RangeError: from the callback');
  });

  test('DryRun answers 204 without running anything (Event: async-invocations.test.ts)', async () => {
    await a.deploy({ name: 'dry' }, { 'handler.js': ECHO });
    const out = await invoke({ FunctionName: 'dry', InvocationType: 'DryRun' });
    assert.equal(out.StatusCode, 204);
    assert.deepEqual((await a.api('GET', '/api/functions/dry/instances')).body, []);
  });

  test('bad payloads: not JSON is InvalidRequestContentException, over 6 MB RequestEntityTooLargeException', async () => {
    const notJson = await lambdaError(invoke({ FunctionName: 'echo', Payload: Buffer.from('{not json') }));
    assert.deepEqual([notJson.name, notJson.status], ['InvalidRequestContentException', 400]);
    const big = await lambdaError(invoke({ FunctionName: 'echo', Payload: encode('x'.repeat(6 * 1024 * 1024)) }));
    assert.deepEqual([big.name, big.status], ['RequestEntityTooLargeException', 413]);
  });

  test("the function's own failures are function errors: timeout, a result over 6 MB", async () => {
    await a.deploy({ name: 'slow', timeout_ms: 1000 }, { 'handler.js': SLOW });
    assert.deepEqual(payload(await invoke({ FunctionName: 'slow', Payload: encode({ ms: 10 }) })), { slept: 10 });
    const timedOut = await invoke({ FunctionName: 'slow', Payload: encode({ ms: 5000 }) });
    assert.equal(timedOut.FunctionError, 'Unhandled');
    assert.equal(payload(timedOut).errorType, 'Sandbox.Timedout');
    assert.match(payload(timedOut).errorMessage, /Task timed out after 1\.00 seconds/);

    await a.deploy({ name: 'big' }, { 'handler.js': BIG });
    const big = await invoke({ FunctionName: 'big' });
    assert.equal(big.FunctionError, 'Unhandled');
    assert.equal(payload(big).errorType, 'Function.ResponseSizeTooLarge');
  });

  test('throttling: a function at its concurrency answers TooManyRequestsException (429)', async () => {
    await a.deploy({ name: 'busy', max_instances: 1, concurrency: 1 }, { 'handler.js': SLOW });
    const first = invoke({ FunctionName: 'busy', Payload: encode({ ms: 1500 }) });
    await until(
      async () => (await a.api('GET', '/api/functions/busy/instances')).body[0]?.in_flight === 1,
      10_000,
      'the first call to run',
    );
    const throttled = await lambdaError(invoke({ FunctionName: 'busy', Payload: encode({ ms: 1 }) }));
    assert.deepEqual([throttled.name, throttled.status], ['TooManyRequestsException', 429]);
    assert.deepEqual(payload(await first), { slept: 1500 });
  });

  test("LogType Tail: the last 4 KB of exactly this invocation's lines, up to its END line", async () => {
    await a.deploy({ name: 'talk' }, { 'handler.js': TALK });
    const [one, two] = await Promise.all(
      ['one', 'two'].map((who) => invoke({ FunctionName: 'talk', LogType: 'Tail', Payload: encode({ who }) })),
    );
    for (const [out, who, other] of [
      [one!, 'one', 'two'],
      [two!, 'two', 'one'],
    ] as const) {
      const lines = tailOf(out).trimEnd().split('\n');
      assert.deepEqual(
        lines,
        [`hello from ${who}`, `a warning for ${who}`, `END RequestId: ${out.$metadata.requestId}`],
        `${who} (not ${other})`,
      );
    }
    assert.equal((await invoke({ FunctionName: 'talk', Payload: encode({ who: 'quiet' }) })).LogResult, undefined, 'no tail unless asked');

    const long = await invoke({ FunctionName: 'talk', LogType: 'Tail', Payload: encode({ who: 'long', lines: 100 }) });
    const tail = tailOf(long);
    assert.ok(Buffer.byteLength(tail) <= 4096 && Buffer.byteLength(tail) > 3500, `${Buffer.byteLength(tail)} bytes`);
    assert.match(tail, /long line 99 \.+\n(a warning for long\n)?END RequestId: \S+\n$/);
    assert.match(tail, /a warning for long/);
    assert.doesNotMatch(tail, /hello from long/, 'only the last 4 KB');
  });

  test('a server-mode function gets the event as POST /events and answers with the payload', async () => {
    await a.deploy({ name: 'server' }, { 'handler.js': SERVER_CJS });
    const got = payload(await invoke({ FunctionName: 'server', Payload: encode({ from: 'sdk' }) }));
    assert.equal(got.method, 'POST');
    assert.equal(got.url, '/events');
    assert.deepEqual(JSON.parse(got.body), { from: 'sdk' });
  });

  test('authentication: unsigned, unknown key, wrong secret, stale or altered signatures are 403 in Lambda shape', async () => {
    const url = `${a.url}/2015-03-31/functions/echo/invocations`;
    const unsigned = await fetch(url, { method: 'POST', body: '{}' });
    assert.equal(unsigned.status, 403);
    assert.equal(unsigned.headers.get('x-amzn-errortype'), 'MissingAuthenticationTokenException');
    assert.deepEqual(await unsigned.json(), { Type: 'User', message: 'Missing Authentication Token' });

    const unknownKey = await lambdaError(
      lambdaClient(a.url, { ...KEY, accessKeyId: 'AKIAUNKNOWN000000000' }).send(new InvokeCommand({ FunctionName: 'echo' })),
    );
    assert.deepEqual([unknownKey.name, unknownKey.status], ['UnrecognizedClientException', 403]);
    const wrongSecret = await lambdaError(
      lambdaClient(a.url, { ...KEY, secretAccessKey: 'not-the-secret' }).send(new InvokeCommand({ FunctionName: 'echo' })),
    );
    assert.deepEqual([wrongSecret.name, wrongSecret.status], ['InvalidSignatureException', 403]);

    assert.equal((await signedFetch(url, { body: '{"ok":1}' })).status, 200, 'the hand-signed request itself is fine');
    const stale = await signedFetch(url, { body: '{}', date: new Date(Date.now() - 10 * 60_000) });
    assert.equal(stale.status, 403);
    assert.match((await stale.json()).message, /^Signature expired/);
    const altered = await signedFetch(url, { body: '{"amount":1}', tamper: '{"amount":1000}' });
    assert.equal(altered.status, 403);
    assert.equal(altered.headers.get('x-amzn-errortype'), 'InvalidSignatureException');
    const unsignedHeaderChanged = await signedFetch(url, { body: '{}', headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } });
    assert.equal(unsignedHeaderChanged.status, 403, 'the body is always part of the signature');
    assert.equal(
      (await a.api('GET', '/api/functions/echo/invocations')).body.filter((r: { status: number }) => r.status !== 200).length,
      0,
    );
  });

  test('the aws CLI (botocore): invoke, a function error, the log tail', {
    skip: !existsSync(AWS_CLI) && `${AWS_CLI} is missing: apt-get install awscli`,
  }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'aether-awscli-'));
    const env = awsCliEnv(dir, KEY);
    const cli = async (fn: string, body: string) => {
      const out = join(dir, `${fn}.json`);
      const { stdout } = await promisify(execFile)(
        AWS_CLI,
        [
          'lambda',
          'invoke',
          '--endpoint-url',
          a.url,
          '--function-name',
          fn,
          '--log-type',
          'Tail',
          '--cli-binary-format',
          'raw-in-base64-out',
          '--payload',
          body,
          out,
        ],
        { env },
      );
      return { meta: JSON.parse(stdout), result: JSON.parse(await readFile(out, 'utf8')) };
    };
    try {
      const ok = await cli('echo', '{"from":"cli"}');
      assert.equal(ok.meta.StatusCode, 200);
      assert.equal(ok.meta.ExecutedVersion, '$LATEST');
      assert.deepEqual(ok.result.event, { from: 'cli' });
      const failed = await cli('fail', '{"n":9}');
      assert.equal(failed.meta.FunctionError, 'Unhandled');
      assert.equal(failed.result.errorMessage, 'bad input: 9');
      assert.ok(failed.meta.LogResult, JSON.stringify(failed.meta));
      assert.match(Buffer.from(failed.meta.LogResult, 'base64').toString(), /handler failed .*TypeError: bad input: 9[\s\S]*END RequestId/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('Lambda Invoke API, cluster (gateway -> worker)', () => {
  let services: Services;
  let worker: Aether;
  let gateway: Aether;

  before(async () => {
    services = await startServices();
    worker = await startAether({ role: 'worker', isolation: sandboxDrivers()[0], env: { ...services.env, WORKER_IP: '127.0.0.1' } });
    gateway = await startAether({ role: 'gateway', env: { ...services.env, ...LAMBDA_ENV } });
    await until(async () => (await gateway.api('GET', '/api/workers')).body.length === 1, 10_000, 'the worker to register');
  });
  after(async () => {
    await Promise.all([gateway?.stop(), worker?.stop()]);
    await services?.stop();
  });

  test('InvokeCommand through a gateway: results, function errors, timeouts; HTTP events keep the client address', async () => {
    await gateway.deploy({ name: 'echo' }, { 'handler.js': ECHO });
    await gateway.deploy({ name: 'fail' }, { 'handler.js': FAIL });
    await gateway.deploy({ name: 'slow', timeout_ms: 1000 }, { 'handler.js': SLOW });
    const client = lambdaClient(gateway.url);
    const out = await client.send(new InvokeCommand({ FunctionName: 'echo', Payload: encode({ via: 'gateway' }) }));
    assert.deepEqual(payload(out).event, { via: 'gateway' });
    assert.equal(payload(out).requestId, out.$metadata.requestId);
    const records = (await gateway.api('GET', '/api/functions/echo/invocations')).body;
    assert.equal(records[0].id, out.$metadata.requestId);

    const failed = await client.send(new InvokeCommand({ FunctionName: 'fail', Payload: encode({ n: 1 }) }));
    assert.equal(failed.FunctionError, 'Unhandled');
    assert.equal(payload(failed).errorMessage, 'bad input: 1');
    const slow = await client.send(new InvokeCommand({ FunctionName: 'slow', Payload: encode({ ms: 5000 }) }));
    assert.equal(payload(slow).errorType, 'Sandbox.Timedout');
    const missing = await lambdaError(client.send(new InvokeCommand({ FunctionName: 'nope' })));
    assert.equal(missing.name, 'ResourceNotFoundException');
    await gateway.deploy({ name: 'talk' }, { 'handler.js': TALK });
    const talked = await client.send(new InvokeCommand({ FunctionName: 'talk', LogType: 'Tail', Payload: encode({ who: 'worker' }) }));
    assert.match(tailOf(talked), /^(hello from worker\na warning for worker|a warning for worker\nhello from worker)\nEND RequestId: /);
    assert.ok(tailOf(talked).endsWith(`END RequestId: ${talked.$metadata.requestId}\n`));

    const http = await gateway.invoke('echo', '/p?q=1', { headers: { 'x-aether-invoke': '1' } });
    const { event } = await http.json();
    assert.equal(event.version, '2.0', 'a client cannot turn an HTTP request into a raw invocation');
    assert.equal(event.requestContext.http.sourceIp, '127.0.0.1');
    assert.deepEqual(event.queryStringParameters, { q: '1' });
  });
});
