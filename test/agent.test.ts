/**
 * The guest agent end to end: real node processes started by the `none` driver, real Unix sockets,
 * real HTTP/1.1 over InstanceHandle.connect(). Needs the built agent (dist/agent, `npm run build`).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'undici';
import { freePort } from '../src/adapters/free-port.js';
import { agentConfig, openChannel, type InstanceChannel } from '../src/adapters/isolation/channel.js';
import { launchInstance, type InstancePlan } from '../src/adapters/isolation/instance/instance.js';
import { agentProcess } from '../src/adapters/isolation/sandbox/host.js';
import { NoIsolationDriver } from '../src/adapters/isolation/sandbox/none.js';
import { agentDir, agentNodeArgs } from '../src/guest/agent-files.js';
import { AGENT_ENV } from '../src/guest/agent/protocol.mjs';
import type { AetherError } from '../src/core/errors.js';
import type { InstanceHandle, InstanceSpec } from '../src/core/ports.js';
import { skipUnless } from './helpers/skip.ts';

let root: string;
let runDir: string;
let driver: NoIsolationDriver;

before(async () => {
  await assertAgentBuilt();
  root = await mkdtemp(join(tmpdir(), 'aether-agent-'));
  await chmod(root, 0o755);
  runDir = join(root, 'run');
  driver = new NoIsolationDriver({ runDir });
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** The tests run the compiled agent: refuse to test a build older than its sources. */
async function assertAgentBuilt(): Promise<void> {
  const src = new URL('../src/guest/agent/', import.meta.url);
  const dist = agentDir();
  for (const file of (await readdir(src)).filter((name) => name.endsWith('.mts'))) {
    const built = join(dist, file.replace(/\.mts$/, '.mjs'));
    const [source, output] = await Promise.all([stat(new URL(file, src)), stat(built).catch(() => undefined)]);
    assert.ok(output && output.mtimeMs >= source.mtimeMs, `${built} is missing or older than its source: run npm run build`);
  }
}

/** A code directory holding the given files (paths may be nested). */
async function code(files: Record<string, string>): Promise<string> {
  const dir = join(root, `code-${randomUUID().slice(0, 8)}`);
  for (const [name, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, name)), { recursive: true });
    await writeFile(join(dir, name), content);
  }
  return dir;
}

interface Started {
  handle: InstanceHandle;
  logs: Array<[string, string]>;
  spec: InstanceSpec;
}

function specFor(codeDir: string, overrides: Partial<InstanceSpec> = {}, logs: Array<[string, string]> = []): InstanceSpec {
  return {
    instanceId: `i-${randomUUID().slice(0, 8)}`,
    functionId: 'fn-test',
    codeDir,
    env: {},
    port: 3000,
    memoryMb: 128,
    vcpu: 1,
    concurrency: 8,
    startTimeoutMs: 10_000,
    onLog: (stream, line) => logs.push([stream, line]),
    ...overrides,
  };
}

/** What a sandbox driver does, without a sandbox: the plan the `none` driver launches, as the test changes it. */
function launchAgent(spec: InstanceSpec, channel: InstanceChannel, change: (plan: InstancePlan) => InstancePlan = (plan) => plan) {
  const plan = agentProcess(spec, channel, {
    command: process.execPath,
    args: agentNodeArgs(spec.memoryMb, agentDir()),
    env: { [AGENT_ENV.runDir]: channel.dir, [AGENT_ENV.codeDir]: spec.codeDir },
  });
  return launchInstance(change(plan));
}

/** Starts an instance that the test stops when it ends. */
async function start(t: { after(fn: () => unknown): void }, codeDir: string, overrides: Partial<InstanceSpec> = {}): Promise<Started> {
  const logs: Array<[string, string]> = [];
  const spec = specFor(codeDir, overrides, logs);
  const handle = await driver.start(spec);
  t.after(() => handle.stop(1000));
  return { handle, logs, spec };
}

/** An undici client whose connections are the instance's; counts how many it opened. */
function clientFor(handle: InstanceHandle, options: Partial<Client.Options> = {}) {
  const stats = { connections: 0 };
  const client = new Client('http://fn.local', {
    ...options,
    connect: (_opts, callback) => {
      stats.connections++;
      handle.connect().then(
        (socket) => callback(null, socket as Socket),
        (err: Error) => callback(err, null),
      );
    },
  });
  return { client, stats };
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One request on a fresh connection of the instance, with node's own HTTP client. */
async function send(
  handle: InstanceHandle,
  opts: { method?: string; path?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<Reply> {
  const socket = await handle.connect();
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { createConnection: () => socket as Socket, method: opts.method ?? 'GET', path: opts.path ?? '/', headers: opts.headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

const json = (reply: Reply) => JSON.parse(reply.body.toString());

const SERVER_CJS = `
const http = require('node:http');
http.createServer((req, res) => {
  let size = 0;
  req.on('data', (c) => (size += c.length));
  req.on('end', () => res.end(JSON.stringify({ url: req.url, size, port: process.env.PORT, style: 'cjs' })));
}).listen(Number(process.env.PORT), '127.0.0.1');
`;

const SERVER_ESM = `
import { createServer } from 'node:http';
createServer((req, res) => res.end(JSON.stringify({ url: req.url, port: process.env.PORT, style: 'esm' })))
  .listen(Number(process.env.PORT));
`;

const LAMBDA_CJS = `
exports.handler = async (event, context) => {
  if (event.path === '/text') return 'plain text';
  if (event.path === '/object') return { hello: 'world' };
  if (event.path === '/binary') return { statusCode: 200, headers: { 'Content-Type': 'application/octet-stream' }, body: event.body, isBase64Encoded: event.isBase64Encoded };
  if (event.path === '/throw') throw new Error('kaput in handler');
  if (event.path === '/exit') process.exit(3);
  if (event.path === '/sleep') await new Promise((r) => setTimeout(r, 200));
  return {
    statusCode: 201,
    headers: { 'x-custom': 'yes' },
    cookies: ['a=1', 'b=2'],
    body: JSON.stringify({ event, context: { ...context, remaining: context.getRemainingTimeInMillis() } }),
  };
};
`;

const LAMBDA_ESM = `
export const handler = (event, context, callback) => {
  callback(null, { statusCode: 200, body: 'esm callback ' + event.method + ' ' + context.functionId });
};
`;

const FETCH_ESM = `
import { writeFileSync } from 'node:fs';
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === '/forever') {
      const body = new ReadableStream({
        pull: (controller) => controller.enqueue(new Uint8Array(64 * 1024)),
        cancel: () => writeFileSync(process.env.CANCEL_MARK, 'cancelled'),
      });
      return new Response(body);
    }
    if (url.pathname === '/echo') return new Response(request.body, { headers: { 'content-type': 'application/octet-stream' } });
    if (url.pathname === '/generate') {
      const chunks = Number(url.searchParams.get('chunks'));
      let i = 0;
      const body = new ReadableStream({
        pull(controller) {
          if (i === chunks) return controller.close();
          controller.enqueue(new Uint8Array(64 * 1024).fill(i++ % 256));
        },
      });
      return new Response(body);
    }
    const headers = new Headers({ 'x-method': request.method });
    headers.append('set-cookie', 'a=1');
    headers.append('set-cookie', 'b=2');
    return new Response('ignored the body', { status: 202, headers });
  },
};
`;

describe('server mode', () => {
  test('CommonJS server: bytes are spliced to the function listening on PORT', async (t) => {
    const port = await freePort();
    const { handle } = await start(t, await code({ 'index.js': SERVER_CJS }), { port });
    const reply = await send(handle, { method: 'POST', path: '/x?y=1', body: 'hello' });
    assert.equal(reply.status, 200);
    assert.deepEqual(json(reply), { url: '/x?y=1', size: 5, port: String(port), style: 'cjs' });
  });

  test('ESM server, many sequential requests on one kept-alive connection', async (t) => {
    const port = await freePort();
    const { handle } = await start(t, await code({ 'index.mjs': SERVER_ESM }), { port });
    const { client, stats } = clientFor(handle);
    t.after(() => client.close());
    for (let i = 0; i < 200; i++) {
      const res = await client.request({ method: 'GET', path: `/n/${i}` });
      assert.deepEqual(await res.body.json(), { url: `/n/${i}`, port: String(port), style: 'esm' });
    }
    assert.equal(stats.connections, 1);
  });

  test('a server that never listens: start times out, the process is killed, the run dir is removed', async () => {
    const pidFile = join(root, `pid-${randomUUID()}`);
    const codeDir = await code({
      'index.js': `require('fs').writeFileSync(${JSON.stringify(pidFile)}, String(process.pid)); setInterval(() => {}, 1000);`,
    });
    const spec = specFor(codeDir, { port: await freePort(), startTimeoutMs: 1500 });
    const began = Date.now();
    await assert.rejects(driver.start(spec), (err: AetherError) => {
      assert.equal(err.status, 504);
      assert.match(err.message, /did not become ready within 1500 ms/);
      assert.match(err.message, /waiting for the function to listen on 127\.0\.0\.1:/);
      return true;
    });
    assert.ok(Date.now() - began < 5000);
    const pid = Number(await readFile(pidFile, 'utf8'));
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
    assert.ok(!(await readdir(runDir)).includes(spec.instanceId));
  });
});

describe('handler mode', () => {
  test('Lambda-style CommonJS: event, context, status, headers, cookies', async (t) => {
    const { handle } = await start(t, await code({ 'handler.js': LAMBDA_CJS }));
    const deadline = Date.now() + 30_000;
    const reply = await send(handle, {
      method: 'POST',
      path: '/some%20path/x?a=1&b=two&a=3',
      headers: { 'content-type': 'application/json', 'x-aether-request-id': 'req-42', 'x-aether-deadline': String(deadline) },
      body: '{"in":true}',
    });
    assert.equal(reply.status, 201);
    assert.equal(reply.headers['x-custom'], 'yes');
    assert.deepEqual(reply.headers['set-cookie'], ['a=1', 'b=2']);
    const { event, context } = json(reply);
    assert.equal(event.method, 'POST');
    assert.equal(event.path, '/some path/x');
    assert.equal(event.rawPath, '/some%20path/x');
    assert.equal(event.rawQuery, 'a=1&b=two&a=3');
    assert.deepEqual(event.query, { a: '1,3', b: 'two' });
    assert.equal(event.headers['content-type'], 'application/json');
    assert.equal(event.body, '{"in":true}');
    assert.equal(event.isBase64Encoded, false);
    assert.equal(event.requestId, 'req-42');
    assert.equal(context.requestId, 'req-42');
    assert.equal(context.functionId, 'fn-test');
    assert.equal(context.deadline, deadline);
    assert.ok(context.remaining > 25_000 && context.remaining <= 30_000);
  });

  test('Lambda-style results in the aether event format: text, JSON object, binary round trip, body limit', async (t) => {
    const { handle } = await start(t, await code({ 'handler.js': LAMBDA_CJS }), { eventFormat: 'aether' });
    const text = await send(handle, { path: '/text' });
    assert.equal(text.headers['content-type'], 'text/plain; charset=utf-8');
    assert.equal(text.body.toString(), 'plain text');
    const object = await send(handle, { path: '/object' });
    assert.equal(object.headers['content-type'], 'application/json');
    assert.deepEqual(json(object), { hello: 'world' });
    const bytes = randomBytes(100_000);
    const binary = await send(handle, { method: 'PUT', path: '/binary', headers: { 'content-type': 'image/png' }, body: bytes });
    assert.equal(binary.status, 200);
    assert.ok(binary.body.equals(bytes));
    const tooBig = await send(handle, { method: 'POST', path: '/text', body: Buffer.alloc(7 * 1024 * 1024) });
    assert.equal(tooBig.status, 413);
    assert.equal(json(tooBig).error.code, 'payload_too_large');
  });

  test('Lambda-style ESM with the callback style', async (t) => {
    const { handle } = await start(t, await code({ 'handler.mjs': LAMBDA_ESM }));
    const reply = await send(handle, { method: 'DELETE' });
    assert.equal(reply.status, 200);
    assert.equal(reply.body.toString(), 'esm callback DELETE fn-test');
  });

  test('a handler that throws (aether event format): 502 with a JSON error and no stack; the stack goes to stderr', async (t) => {
    const { handle, logs } = await start(t, await code({ 'handler.js': LAMBDA_CJS }), { eventFormat: 'aether' });
    const reply = await send(handle, { path: '/throw', headers: { 'x-aether-request-id': 'req-boom' } });
    assert.equal(reply.status, 502);
    assert.deepEqual(json(reply), { error: { code: 'handler_error', message: 'kaput in handler' } });
    assert.equal(reply.headers['x-aether-error'], 'kaput%20in%20handler', 'for the invocation record');
    assert.doesNotMatch(reply.body.toString(), /handler\.js/);
    const stderr = logs
      .filter(([s]) => s === 'stderr')
      .map(([, line]) => line)
      .join('\n');
    assert.match(stderr, /\[aether-agent\] handler failed \(request req-boom\): Error: kaput in handler/);
    assert.match(stderr, /handler\.js:\d+/);
    assert.equal((await send(handle, { path: '/text' })).status, 200, 'the instance keeps serving');
  });

  test('fetch-style: request and response bodies of several MB are streamed', async (t) => {
    const cancelMark = join(root, `cancel-${randomUUID()}`);
    const { handle } = await start(t, await code({ 'index.mjs': FETCH_ESM }), { env: { CANCEL_MARK: cancelMark } });
    const { client } = clientFor(handle);
    t.after(() => client.close());

    const size = 8 * 1024 * 1024;
    const sent = createHash('sha256');
    let produced = 0;
    const upload = Readable.from(
      (function* () {
        while (produced < size) {
          const chunk = randomBytes(256 * 1024);
          produced += chunk.length;
          sent.update(chunk);
          yield chunk;
        }
      })(),
    );
    const echo = await client.request({ method: 'POST', path: '/echo', body: upload });
    assert.equal(echo.statusCode, 200);
    const received = createHash('sha256');
    let length = 0;
    for await (const chunk of echo.body) {
      received.update(chunk);
      length += chunk.length;
    }
    assert.equal(length, size);
    assert.equal(received.digest('hex'), sent.digest('hex'));

    const generated = await client.request({ method: 'GET', path: '/generate?chunks=128' });
    assert.equal(generated.headers['transfer-encoding'], 'chunked');
    let total = 0;
    for await (const chunk of generated.body) total += chunk.length;
    assert.equal(total, 128 * 64 * 1024);

    // A body the handler never reads is drained, and the connection stays usable.
    const ignored = await client.request({ method: 'PUT', path: '/other', body: Buffer.alloc(1024 * 1024) });
    assert.equal(ignored.statusCode, 202);
    assert.equal(ignored.headers['x-method'], 'PUT');
    assert.deepEqual(ignored.headers['set-cookie'], ['a=1', 'b=2']);
    assert.equal(await ignored.body.text(), 'ignored the body');
    const again = await client.request({ method: 'GET', path: '/other' });
    assert.equal(again.statusCode, 202);
    await again.body.dump();

    // A client that goes away mid-stream cancels the function's endless body.
    const endless = await client.request({ method: 'GET', path: '/forever' });
    let read = 0;
    for await (const chunk of endless.body) if ((read += chunk.length) > 1024 * 1024) break; // destroys the connection
    for (let i = 0; i < 100 && !(await readFile(cancelMark, 'utf8').catch(() => '')); i++) await sleep(20);
    assert.equal(await readFile(cancelMark, 'utf8'), 'cancelled');
  });

  test('keep-alive: sequential requests share a connection, concurrent ones get their own', async (t) => {
    const { handle } = await start(t, await code({ 'handler.js': LAMBDA_CJS }));
    const sequential = clientFor(handle);
    t.after(() => sequential.client.close());
    for (let i = 0; i < 300; i++) {
      const res = await sequential.client.request({ method: 'GET', path: '/text' });
      assert.equal(await res.body.text(), 'plain text');
    }
    assert.equal(sequential.stats.connections, 1);

    const n = 8;
    const clients = Array.from({ length: n }, () => clientFor(handle));
    t.after(() => Promise.all(clients.map((c) => c.client.close())));
    const began = Date.now();
    const replies = await Promise.all(
      clients.map(async ({ client }) => (await client.request({ method: 'GET', path: '/sleep' })).body.json()),
    );
    const elapsed = Date.now() - began;
    assert.equal(replies.length, n);
    assert.ok(elapsed < (n * 200) / 2, `${n} concurrent 200 ms requests took ${elapsed} ms`);
  });

  test('a function that calls process.exit: exited resolves with its code', async (t) => {
    const { handle } = await start(t, await code({ 'handler.js': LAMBDA_CJS }));
    await assert.rejects(send(handle, { path: '/exit' }));
    const exit = await handle.exited;
    assert.equal(exit.code, 3);
    assert.equal(exit.reason, 'exited with code 3');
    await assert.rejects(handle.connect(), { code: 'instance_stopped' });
  });
});

describe('entry resolution', () => {
  const who = (name: string) => `exports.handler = async () => ${JSON.stringify(name)};`;
  const cases: Array<[string, Record<string, string>, string | undefined, string]> = [
    ['the entrypoint field', { 'handler.js': who('default'), 'src/app.js': who('entrypoint') }, 'src/app.js', 'entrypoint'],
    ['an entrypoint without extension', { 'src/app.js': who('no extension') }, 'src/app', 'no extension'],
    ['handler.js before index.js', { 'handler.js': who('handler.js'), 'index.js': who('index.js') }, undefined, 'handler.js'],
    ['index.js', { 'index.js': who('index.js') }, undefined, 'index.js'],
    ['package.json main', { 'package.json': '{"main":"lib/main.js"}', 'lib/main.js': who('main') }, undefined, 'main'],
    [
      'dependencies from node_modules in the code',
      {
        'handler.js': `const greet = require('greet'); exports.handler = async () => greet('deps');`,
        'node_modules/greet/package.json': '{"name":"greet","main":"greet.js"}',
        // biome-ignore lint/suspicious/noTemplateCurlyInString: the function's own template literal
        'node_modules/greet/greet.js': 'module.exports = (who) => `hello ${who}`;',
      },
      undefined,
      'hello deps',
    ],
  ];
  for (const [name, files, entrypoint, expected] of cases) {
    test(name, async (t) => {
      const { handle } = await start(t, await code(files), { entrypoint });
      assert.equal((await send(handle)).body.toString(), expected);
    });
  }

  test('a missing entry module fails the start with the agent saying so', async () => {
    await assert.rejects(driver.start(specFor(await code({ 'other.js': '' }), { entrypoint: 'missing.js' })), (err: AetherError) => {
      assert.equal(err.status, 502);
      assert.match(err.message, /agent refused to start \(exit code 78\)/);
      assert.match(err.message, /entry module not found: missing\.js/);
      return true;
    });
    await assert.rejects(driver.start(specFor(await code({ 'README.md': '' }))), /entry module not found/);
    await assert.rejects(
      driver.start(specFor(await code({ 'index.js': '' }), { entrypoint: '../outside.js' })),
      /entrypoint \.\.\/outside\.js is outside the code directory/,
    );
  });

  test('an entry module that throws while loading fails the start with its error', async () => {
    const spec = specFor(await code({ 'index.js': `throw new Error('bad top level');` }));
    await assert.rejects(driver.start(spec), /exited with code 1: \[aether-agent\] entry module index\.js failed to load: bad top level/);
  });
});

describe('environment and token', () => {
  test('the function sees its env, PORT and defaults, and nothing of the agent', async (t) => {
    const codeDir = await code({
      'handler.js': `exports.handler = async () => ({ env: process.env, cwd: process.cwd(), argv: process.argv, execArgv: process.execArgv });`,
    });
    const { handle } = await start(t, codeDir, { env: { GREETING: 'hi', NODE_ENV: 'staging' }, port: 4321, memoryMb: 256 });
    const { env, cwd, argv, execArgv } = json(await send(handle));
    assert.deepEqual(Object.keys(env).sort(), ['GREETING', 'HOME', 'NODE_ENV', 'PATH', 'PORT', 'TZ']);
    assert.equal(env.TZ, 'UTC');
    assert.equal(env.GREETING, 'hi');
    assert.equal(env.NODE_ENV, 'staging');
    assert.equal(env.PORT, '4321');
    assert.equal(env.HOME, '/tmp');
    assert.equal(cwd, codeDir);
    assert.equal(argv.length, 2, 'no token or config on the command line');
    assert.deepEqual(execArgv, ['--max-old-space-size=192']);
  });

  test('a wrong token: the agent exits 78 and start says why', async () => {
    const spec = specFor(await code({ 'handler.js': LAMBDA_CJS }));
    const channel = await openChannel({ runDir, instanceId: spec.instanceId, config: agentConfig(spec) });
    await assert.rejects(launchAgent(spec, { ...channel, token: 'f'.repeat(64) }), (err: AetherError) => {
      assert.equal(err.code, 'start_failed');
      assert.match(err.message, /exit code 78/);
      assert.match(err.message, /metadata service refused the config request: 401/);
      return true;
    });
    assert.equal(await channel.authFailure, 'metadata request refused: wrong token');
    assert.ok(!(await readdir(runDir)).includes(spec.instanceId), 'channel closed and removed');
  });

  test('the metadata service serves the config once, to the token only', async (t) => {
    const config = agentConfig(specFor('/nowhere', { env: { SECRET: 's3' } }));
    const channel = await openChannel({ runDir, instanceId: config.instance_id, config });
    t.after(() => channel.close());
    const get = (authorization?: string) =>
      new Promise<number>((resolve, reject) => {
        const headers: Record<string, string> = authorization ? { authorization } : {};
        httpRequest({ socketPath: join(channel.dir, 'mmds.sock'), path: '/v1/config', headers }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        })
          .on('error', reject)
          .end();
      });
    assert.equal(await get(), 401);
    assert.equal(await channel.authFailure, 'metadata request refused: missing token');
    assert.equal(await get(`Bearer ${channel.token}`), 200);
    assert.equal(await get(`Bearer ${channel.token}`), 401);
  });

  test('the channel is reachable by the instance uid only', {
    skip: skipUnless(process.getuid?.() === 0, 'the channel uid test needs root'),
  }, async (t) => {
    const uid = 65534;
    const config = agentConfig(specFor('/nowhere'));
    const channel = await openChannel({ runDir, instanceId: config.instance_id, uid, config });
    t.after(() => channel.close());
    const dial = (asUid: number, socket: string) =>
      new Promise<string>((resolve) => {
        const probe = `require('net').connect(${JSON.stringify(join(channel.dir, socket))})
          .on('connect', () => { console.log('connected'); process.exit(0); })
          .on('error', (err) => { console.log(err.code); process.exit(0); });`;
        const child = spawn(process.execPath, ['-e', probe], { uid: asUid, gid: asUid, stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        child.stdout.on('data', (chunk) => (out += chunk));
        child.on('close', () => resolve(out.trim()));
      });
    assert.equal(await dial(uid, 'mmds.sock'), 'connected');
    assert.equal(await dial(uid, 'agent.sock'), 'connected');
    assert.equal(await dial(uid - 1, 'agent.sock'), 'EACCES');
  });

  test('a metadata request from inside a running instance kills it', async (t) => {
    const codeDir = await code({
      'handler.js': `
        const http = require('node:http');
        exports.handler = async (event) => new Promise((resolve) => {
          http.get({ socketPath: event.headers['x-mmds'], path: '/v1/config', headers: { authorization: 'Bearer guess' } },
            (res) => { res.resume(); resolve(String(res.statusCode)); });
        });`,
    });
    const { handle, spec } = await start(t, codeDir);
    // Killed before or after it answers: either is fine.
    const reply = send(handle, { headers: { 'x-mmds': join(runDir, spec.instanceId, 'mmds.sock') } }).catch(() => undefined);
    const exit = await handle.exited;
    assert.equal(exit.signal, 'SIGKILL');
    assert.equal(exit.reason, 'metadata request refused: wrong token');
    await reply;
  });

  test('stop: SIGTERM, then exited says stopped and the channel is gone', async (t) => {
    const { handle, spec } = await start(t, await code({ 'handler.js': LAMBDA_CJS }));
    await handle.stop(2000);
    const exit = await handle.exited;
    assert.deepEqual(exit, { code: null, signal: 'SIGTERM', reason: 'stopped' });
    assert.ok(!(await readdir(runDir)).includes(spec.instanceId));
    await handle.stop(); // idempotent
  });
});

describe('the lifecycle and its plan', () => {
  test('no function code runs before the start hands over the token; explainExit and cleanup run once at the end', async () => {
    const marker = join(root, `loaded-${randomUUID()}`);
    const spec = specFor(
      await code({ 'handler.js': `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x'); exports.handler = async () => 'ok';` }),
    );
    const channel = await openChannel({ runDir, instanceId: spec.instanceId, config: agentConfig(spec) });
    const calls: string[] = [];
    const handle = await launchAgent(spec, channel, (plan) => ({
      ...plan,
      start: async (child, output, agentExited) => {
        assert.ok(child.pid! > 0);
        await sleep(300);
        await assert.rejects(stat(marker), 'no function code ran before the token was handed over');
        calls.push('start');
        return plan.start(child, output, agentExited);
      },
      explainExit: async (exit) => {
        calls.push(`explainExit ${exit.signal}`);
        assert.ok((await readdir(runDir)).includes(spec.instanceId), 'explainExit runs before the channel is removed');
        return { oom: true, reason: 'memory limit of 128 MB exceeded' };
      },
      cleanup: async () => {
        calls.push('cleanup');
        assert.ok(!(await readdir(runDir)).includes(spec.instanceId), 'cleanup runs after the channel is removed');
      },
    }));
    assert.equal((await send(handle)).body.toString(), 'ok');
    await handle.stop(1000);
    await handle.stop(1000);
    assert.deepEqual(await handle.exited, { code: null, signal: 'SIGTERM', oom: true, reason: 'memory limit of 128 MB exceeded' });
    assert.deepEqual(calls, ['start', 'explainExit SIGTERM', 'cleanup']);
  });

  test('a failing start step fails the start, kills the process and still cleans up', async () => {
    const spec = specFor(await code({ 'handler.js': LAMBDA_CJS }));
    const channel = await openChannel({ runDir, instanceId: spec.instanceId, config: agentConfig(spec) });
    let pid = 0;
    let cleaned = 0;
    const start = launchAgent(spec, channel, (plan) => ({
      ...plan,
      start: async (child) => {
        pid = child.pid!;
        throw new Error('cgroup unavailable');
      },
      cleanup: async () => void cleaned++,
    }));
    await assert.rejects(start, {
      code: 'start_failed',
      message: new RegExp(`instance ${spec.instanceId} failed to start: cgroup unavailable`),
    });
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
    assert.equal(cleaned, 1);
    assert.ok(!(await readdir(runDir)).includes(spec.instanceId));
  });
});

describe('measurements', () => {
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

  test('cold start: spawn to ready for a trivial handler', async (t) => {
    const codeDir = await code({ 'handler.js': `exports.handler = async () => 'ok';` });
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const began = performance.now();
      const handle = await driver.start(specFor(codeDir));
      times.push(performance.now() - began);
      assert.equal((await send(handle)).body.toString(), 'ok');
      await handle.stop(1000);
    }
    t.diagnostic(`spawn to ready, trivial handler: median ${median(times)!.toFixed(1)} ms, min ${Math.min(...times).toFixed(1)} ms`);
  });

  test('per-request overhead: 2,000 sequential requests over one kept-alive connection', async (t) => {
    const requests = 2000;
    const rounds = 3;
    const serverCode = `require('node:http').createServer((req, res) => res.end('ok')).listen(Number(process.env.PORT), '127.0.0.1');`;

    // The same server code run as a plain process, reached directly over TCP.
    const port = await freePort();
    const direct = spawn(process.execPath, ['-e', serverCode], { env: { PORT: String(port) }, stdio: 'ignore' });
    t.after(() => direct.kill());
    const directClient = new Client(`http://127.0.0.1:${port}`);
    t.after(() => directClient.close());
    for (let i = 0; ; i++) {
      const up = await directClient.request({ method: 'GET', path: '/' }).then(
        (res) => res.body.dump(),
        () => false,
      );
      if (up !== false) break;
      assert.ok(i < 100, 'the direct server did not come up');
      await sleep(20);
    }

    const viaAgent = async (codeDir: string, overrides: Partial<InstanceSpec> = {}) => {
      const { client } = clientFor((await start(t, codeDir, overrides)).handle);
      t.after(() => client.close());
      return client;
    };
    const clients: Record<string, Client> = {
      'direct TCP': directClient,
      'server mode via agent': await viaAgent(await code({ 'index.js': serverCode }), { port: await freePort() }),
      'Lambda handler': await viaAgent(await code({ 'handler.js': `exports.handler = async () => 'ok';` })),
      'fetch handler': await viaAgent(await code({ 'index.mjs': `export default { fetch: () => new Response('ok') };` })),
    };

    // Rounds interleave the variants so that warm-up and the machine's noise hit all of them alike.
    const best: Record<string, number> = {};
    for (let round = 0; round < rounds; round++) {
      for (const [name, client] of Object.entries(clients)) {
        const began = performance.now();
        for (let i = 0; i < requests; i++) {
          const res = await client.request({ method: 'GET', path: '/' });
          assert.equal(res.statusCode, 200);
          assert.equal(await res.body.text(), 'ok');
        }
        const us = ((performance.now() - began) * 1000) / requests;
        best[name] = Math.min(best[name] ?? Infinity, us);
      }
    }
    t.diagnostic(
      `per request, best of ${rounds} rounds (µs): ${Object.entries(best)
        .map(([n, us]) => `${n} ${us.toFixed(0)}`)
        .join(', ')}`,
    );
  });
});
