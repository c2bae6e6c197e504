/**
 * Handler mode's frame channel: the frame format over real Unix sockets, the host's defence against
 * an instance that sends what is not a frame (the test plays that instance: a real agent does not),
 * and real agents (the `none` driver) answering many invocations at once over their frame connection.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type AnswerHandlers, FrameClient, FrameConnectionLost, frameClient } from '../src/adapters/http/frame-client.js';
import { NoIsolationDriver } from '../src/adapters/isolation/sandbox/none.js';
import type { InstanceHandle, InstanceSpec } from '../src/core/ports.js';
import { FRAME, FRAME_HEADER_BYTES, FrameReader, FrameWriter, MAX_FRAME_PAYLOAD, type ResponseHead } from '../src/guest/agent/frames.mjs';
import { LOG_FRAME_END, LOG_FRAME_START, REQUEST_ID_HEADER } from '../src/guest/agent/protocol.mjs';
import { until } from './helpers/wait.ts';

let root: string;
let driver: NoIsolationDriver;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'aether-frames-'));
  await chmod(root, 0o755);
  driver = new NoIsolationDriver({ runDir: join(root, 'run') });
});

after(() => rm(root, { recursive: true, force: true }));

/** Both ends of a real Unix socket connection. */
async function socketPair(): Promise<[Socket, Socket, () => Promise<void>]> {
  const path = join(root, `pair-${randomUUID().slice(0, 8)}.sock`);
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const near = connect(path);
  const far = await accepted;
  return [near, far, () => new Promise((resolve) => server.close(() => resolve()))];
}

type Frame = [id: number, type: number, payload: Buffer];

test('frames: messages of any size arrive whole and in order, however the bytes are cut', async (t) => {
  const [near, far, close] = await socketPair();
  t.after(async () => {
    near.destroy();
    far.destroy();
    await close();
  });
  const big = randomBytes(MAX_FRAME_PAYLOAD * 2 + 123);
  const writer = new FrameWriter(near);
  writer.message(7, { method: 'POST', url: '/a?b=c', headers: ['x-one', '1', 'x-one', '2'] }, big);
  writer.message(8, { status: 204, headers: { 'set-cookie': ['a=1', 'b=2'] } });
  const bytes: Buffer[] = [];
  far.on('data', (chunk: Buffer) => bytes.push(chunk));
  const expected = FRAME_HEADER_BYTES * 7 + big.length; // 2 heads, 3 body parts, 2 ends (plus the heads' JSON)
  await until(async () => Buffer.concat(bytes).length > expected, 5000, 'the frames to arrive');
  const all = Buffer.concat(bytes);

  // Whole, and one byte at a time: the same frames.
  for (const cut of [all.length, 1, 1000]) {
    const frames: Frame[] = [];
    const reader = new FrameReader((id, type, payload) => frames.push([id, type, Buffer.from(payload)]));
    for (let at = 0; at < all.length; at += cut) reader.push(all.subarray(at, at + cut));
    assert.deepEqual(
      frames.map(([id, type]) => [id, type]),
      [
        [7, FRAME.head],
        [7, FRAME.body],
        [7, FRAME.body],
        [7, FRAME.body],
        [7, FRAME.end],
        [8, FRAME.head],
        [8, FRAME.end],
      ],
      `cut every ${cut} bytes`,
    );
    assert.deepEqual(JSON.parse(frames[0]![2].toString()), { method: 'POST', url: '/a?b=c', headers: ['x-one', '1', 'x-one', '2'] });
    assert.ok(Buffer.concat(frames.slice(1, 4).map((f) => f[2])).equals(big));
    assert.ok(frames.slice(1, 4).every((f) => f[2].length <= MAX_FRAME_PAYLOAD));
    assert.deepEqual(JSON.parse(frames[5]![2].toString()), { status: 204, headers: { 'set-cookie': ['a=1', 'b=2'] } });
  }
});

test('frames: a length or type that cannot be ours is refused, not buffered', () => {
  const reader = new FrameReader(() => assert.fail('no frame'));
  const huge = Buffer.alloc(FRAME_HEADER_BYTES);
  huge.writeUInt32BE(MAX_FRAME_PAYLOAD + 1, 0);
  huge[8] = FRAME.body;
  assert.throws(() => reader.push(huge), /not a frame/);
  const unknown = Buffer.alloc(FRAME_HEADER_BYTES);
  unknown[8] = 42;
  assert.throws(() => new FrameReader(() => {}).push(unknown), /not a frame/);
});

/** Collects one answer through the client. */
function answer(client: FrameClient, url: string, headers: string[] = [], body?: Buffer) {
  return new Promise<{ head: ResponseHead; body: Buffer }>((resolve, reject) => {
    let head: ResponseHead | undefined;
    const parts: Buffer[] = [];
    const handlers: AnswerHandlers = {
      head: (h) => (head = h),
      body: (part) => parts.push(Buffer.from(part)),
      end: () => resolve({ head: head!, body: Buffer.concat(parts) }),
      error: reject,
    };
    client.send({ method: body ? 'POST' : 'GET', url, headers }, body, handlers);
  });
}

test('the host end: an instance sending what is not a frame loses the connection, and what was in flight fails', async (t) => {
  const [host, instance, close] = await socketPair();
  t.after(async () => {
    host.destroy();
    instance.destroy();
    await close();
  });
  const client = new FrameClient(host);
  const dropped = new Promise((resolve) => instance.once('end', resolve));
  instance.resume();
  const first = answer(client, '/one');
  const second = answer(client, '/two');
  // A stand-in for a misbehaving instance: a head that is no response head.
  const bogus = Buffer.from(JSON.stringify({ hello: 'there' }));
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32BE(bogus.length, 0);
  header.writeUInt32BE(1, 4);
  header[8] = FRAME.head;
  instance.write(Buffer.concat([header, bogus]));
  await assert.rejects(first, FrameConnectionLost);
  await assert.rejects(second, FrameConnectionLost);
  await dropped; // the host hung up
});

async function codeDir(source: string): Promise<string> {
  const dir = join(root, `code-${randomUUID().slice(0, 8)}`);
  await mkdir(dir);
  await writeFile(join(dir, 'handler.js'), source);
  return dir;
}

async function start(
  t: { after(fn: () => unknown): void },
  source: string,
  logs: Array<[string, string, string?]> = [],
): Promise<InstanceHandle> {
  const spec: InstanceSpec = {
    instanceId: `i-${randomUUID().slice(0, 8)}`,
    functionId: 'fn-frames',
    codeDir: await codeDir(source),
    env: {},
    port: 3000,
    memoryMb: 128,
    vcpu: 1,
    concurrency: 64,
    startTimeoutMs: 10_000,
    eventFormat: 'aether',
    onLog: (stream, line, requestId) => logs.push([stream, line, requestId]),
  };
  const handle = await driver.start(spec);
  t.after(() => handle.stop(1000));
  return handle;
}

const HANDLER = `
exports.handler = async (event) => {
  console.log('serving ' + event.path);
  if (event.path === '/exit') process.exit(3);
  await new Promise((r) => setTimeout(r, Number(event.query.wait ?? 0)));
  return { statusCode: 200, headers: { 'x-path': event.path }, body: JSON.stringify({ path: event.path, size: Buffer.from(event.body ?? '', event.isBase64Encoded ? 'base64' : 'utf8').length }) };
};`;

test('a handler-mode agent answers invocations at once over its frame connection, each output line tagged', async (t) => {
  const logs: Array<[string, string, string?]> = [];
  const handle = await start(t, HANDLER, logs);
  await until(async () => frameClient(handle) !== undefined, 5000, 'the agent to dial its frame connection');
  const client = frameClient(handle)!;
  const started = Date.now();
  // 20 at once, the first ones waiting longest: answers come back as each is done, not in order.
  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      answer(
        client,
        `/n${i}?wait=${(20 - i) * 10}`,
        [REQUEST_ID_HEADER, `req-${i}`, 'content-type', 'application/octet-stream'],
        randomBytes(i * 1000),
      ),
    ),
  );
  assert.ok(Date.now() - started < 2000, 'concurrently, not one after another');
  answers.forEach(({ head, body }, i) => {
    assert.equal(head.status, 200);
    assert.equal(head.headers['x-path'], `/n${i}`);
    assert.equal(head.headers['content-length'], body.length);
    assert.deepEqual(JSON.parse(body.toString()), { path: `/n${i}`, size: i * 1000 });
  });
  await until(async () => logs.filter(([, line]) => line.startsWith('serving')).length === 20, 5000, 'the output lines');
  for (let i = 0; i < 20; i++)
    assert.ok(
      logs.some(([, line, id]) => line === `serving /n${i}` && id === `req-${i}`),
      `line of req-${i}`,
    );
  assert.ok(!logs.some(([, line]) => line.includes(LOG_FRAME_START) || line.includes(LOG_FRAME_END)));
});

test('a crash fails the invocations in flight on the frame connection; a server-mode agent has none', async (t) => {
  const handle = await start(t, HANDLER);
  await until(async () => frameClient(handle) !== undefined, 5000, 'the agent to dial its frame connection');
  const client = frameClient(handle)!;
  const waiting = answer(client, '/slow?wait=5000');
  await assert.rejects(answer(client, '/exit'), FrameConnectionLost);
  await assert.rejects(waiting, FrameConnectionLost);
  assert.equal(frameClient(handle), undefined);

  const server = await start(t, `require('http').createServer((req, res) => res.end('ok')).listen(process.env.PORT);`);
  // An answer over HTTP first: by then a handler-mode agent has dialed its frame connection (before its first HTTP one).
  const socket = await server.connect();
  socket.write('GET / HTTP/1.1\r\nhost: fn\r\nconnection: close\r\n\r\n');
  let reply = '';
  for await (const chunk of socket) reply += chunk;
  assert.match(reply, /^HTTP\/1.1 200/);
  assert.equal(frameClient(server), undefined);
});
