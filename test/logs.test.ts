/**
 * Function logs end to end on one node: real sandboxes (bubblewrap), real HTTP, `?follow=1` through a
 * real EventSource client. What a function prints and what happens to its instances, paging and
 * filters, following across instances started later, the flood limit and its marker, retention,
 * masking, and the server's own log staying quiet about function output by default.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startAether, TOKEN, type Aether } from './helpers/aether.ts';
import { followLogs, type LogLine, logLines, waitForLines } from './helpers/logs.ts';

const ECHO = `
exports.handler = async (event) => {
  const q = event.query;
  for (let i = 0; i < Number(q.n || 0); i++) console.log(q.tag + ' ' + i);
  if (q.err) console.error(q.err);
  if (q.secret) console.log('key=' + process.env.API_KEY);
  if (q.wait) await new Promise((r) => setTimeout(r, Number(q.wait)));
  if (q.exit) process.exit(Number(q.exit));
  return { statusCode: 200, body: 'ok' };
};`;

/**
 * Prints as fast as it can for `ms`, then answers how many lines it printed. It lets its event loop
 * run between batches: a loop that never yields only queues its output in its own memory.
 */
const FLOOD = `
exports.handler = async (event) => {
  const end = Date.now() + Number(event.query.ms || 1000);
  let n = 0;
  while (Date.now() < end) {
    for (let i = 0; i < 1000; i++) console.log('flood line ' + n++);
    await new Promise((r) => setImmediate(r));
  }
  return { statusCode: 200, body: String(n) };
};`;

/** Prints inside invocations (after an await too, in pieces, on both streams) and outside any. */
const TAGGED = `
console.log('loading');
setTimeout(() => console.log('timer from load'), 10);
exports.handler = async (event) => {
  const q = event.query;
  console.log('start ' + q.tag);
  await new Promise((r) => setTimeout(r, 100));
  process.stdout.write('part ' + q.tag + ' ');
  process.stdout.write(Buffer.from('end ' + q.tag + '\\nsecond ' + q.tag + '\\n'));
  console.error('err ' + q.tag);
  if (q.fail) throw new Error('boom ' + q.tag);
  return { statusCode: 200, body: 'ok' };
};`;

const SECRET = 'sk-live-abcdef123456';
const messages = (lines: LogLine[]) => lines.map((l) => l.message);

describe('function logs on one node (bwrap)', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap', env: { AETHER_LOG_MAX_LINES: '50' } });
    await a.deploy({ name: 'echo', env_vars: { API_KEY: SECRET } }, { 'handler.js': ECHO });
  });
  after(() => a.stop());

  test('stdout, stderr and the instance start, each with function, version, instance and time; newest last', async () => {
    assert.equal((await a.invoke('echo', '/?tag=first&n=3&err=oops&secret=1')).status, 200);
    const lines = await waitForLines(a, 'echo', (l) => l.length === 6, 'six lines');
    const [inst] = (await a.api('GET', '/api/functions/echo/instances')).body;
    const fn = (await a.api('GET', '/api/functions/echo')).body;
    // In order within a stream (stdout and stderr are separate pipes: no order between them).
    const of = (stream: string) => lines.filter((l) => l.stream === stream).map((l) => [l.event, l.message]);
    assert.deepEqual(of('platform'), [['started', lines[0]!.message]]);
    assert.deepEqual(of('stdout'), [
      [null, 'first 0'],
      [null, 'first 1'],
      [null, 'first 2'],
      [null, 'key=****'],
    ]);
    assert.deepEqual(of('stderr'), [[null, 'oops']]);
    assert.match(lines[0]!.message, /^instance started \(cold start \d+ ms\)$/);
    for (const l of lines) {
      assert.equal(l.function_id, fn.id);
      assert.equal(l.version, fn.version);
      assert.equal(l.instance_id, inst.id);
      assert.ok(Math.abs(Date.parse(l.time) - Date.now()) < 60_000);
    }
    assert.ok(!JSON.stringify(lines).includes(SECRET));
    assert.ok(!a.logs.some((l) => l.includes('first 1')), 'function output stays out of the server log at the default level');
  });

  test('paging backwards and forwards, filters by stream and instance', async () => {
    await a.invoke('echo', '/?tag=page&n=6');
    await waitForLines(a, 'echo', (l) => l.at(-1)?.message === 'page 5', 'the last page line');
    const last = (await a.api('GET', '/api/functions/echo/logs?limit=2')).body;
    assert.deepEqual(messages(last.lines), ['page 4', 'page 5']);
    const older = (await a.api('GET', `/api/functions/echo/logs?limit=2&before=${last.before}`)).body;
    assert.deepEqual(messages(older.lines), ['page 2', 'page 3']);
    const newer = (await a.api('GET', `/api/functions/echo/logs?limit=3&after=${older.lines[0].id}`)).body;
    assert.deepEqual(messages(newer.lines), ['page 3', 'page 4', 'page 5']);
    assert.deepEqual(messages(await logLines(a, 'echo', 'stream=stderr')), ['oops']);
    assert.deepEqual(await logLines(a, 'echo', 'instance=nope'), []);
    const recent = await logLines(a, 'echo', 'since=1m&stream=stdout');
    assert.ok(recent.length >= 10);
  });

  test('bad queries, unknown functions and missing tokens get clear errors', async () => {
    const bad = await a.api('GET', '/api/functions/echo/logs?since=yesterday');
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /since: must be a timestamp/);
    assert.equal((await a.api('GET', '/api/functions/echo/logs?follow=1&until=1m')).status, 400);
    assert.equal((await a.api('GET', '/api/functions/nope/logs')).status, 404);
    assert.equal((await a.api('GET', '/api/functions/nope/logs?follow=1')).status, 404);
    const anon = await fetch(`${a.url}/api/functions/echo/logs`);
    assert.equal(anon.status, 401);
  });

  test('follow: lines of every instance, including instances started after the client connected', async () => {
    await a.deploy({ name: 'multi', concurrency: 1, env_vars: { API_KEY: SECRET } }, { 'handler.js': ECHO });
    const follower = await followLogs(a.url, 'multi');
    try {
      // Concurrency 1 and three requests at once: more instances, none running when the client connected
      // (how many depends on whether a request ends before a later instance is ready).
      const res = await Promise.all([0, 1, 2].map((i) => a.invoke('multi', `/?tag=req${i}&n=2&wait=1000`)));
      assert.deepEqual(
        res.map((r) => r.status),
        [200, 200, 200],
      );
      const lines = await follower.waitFor((l) => l.filter((x) => x.stream === 'stdout').length === 6, 'six stdout lines');
      const started = new Set(lines.filter((l) => l.event === 'started').map((l) => l.instance_id));
      const stdout = lines.filter((l) => l.stream === 'stdout');
      const printedBy = new Set(stdout.map((l) => l.instance_id));
      assert.ok(printedBy.size >= 2, `lines from ${printedBy.size} instances`);
      for (const id of printedBy) assert.ok(started.has(id), 'each of them started after the client connected');
      assert.deepEqual(messages(stdout).sort(), ['req0 0', 'req0 1', 'req1 0', 'req1 1', 'req2 0', 'req2 1']);
      // Each event's id is the line's cursor: a reconnect with Last-Event-ID continues after it.
      const res2 = await fetch(`${a.url}/api/functions/multi/logs?follow=1`, {
        headers: { authorization: `Bearer ${TOKEN}`, 'last-event-id': lines[0]!.id },
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(res2.headers.get('content-type'), 'text/event-stream');
      const reader = res2.body!.getReader();
      let text = '';
      while (!text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value);
      await reader.cancel();
      assert.match(text, new RegExp(`^id: ${lines[1]!.id}\n`));
    } finally {
      follower.close();
    }
  });

  test('crashes, start failures and timeouts are platform lines', async () => {
    assert.equal((await a.invoke('echo', '/?exit=3')).status, 502);
    await waitForLines(
      a,
      'echo',
      (l) => l.some((x) => x.event === 'crashed' && /exit code 3/.test(x.message)),
      'the crash line',
      'stream=platform',
    );

    await a.deploy(
      { name: 'broken', env_vars: { API_KEY: SECRET } },
      { 'handler.js': `console.error('about to fail: ' + process.env.API_KEY); throw new Error('missing config');` },
    );
    assert.equal((await a.invoke('broken')).status, 502);
    const broken = await waitForLines(a, 'broken', (l) => l.some((x) => x.event === 'start_failed'), 'the start failure');
    const failed = broken.find((x) => x.event === 'start_failed')!;
    assert.match(failed.message, /^instance failed to start: .*missing config/);
    assert.ok(
      broken.some((x) => x.stream === 'stderr' && x.message === 'about to fail: ****'),
      'its output is there too',
    );
    assert.ok(!JSON.stringify(broken).includes(SECRET));

    await a.deploy({ name: 'slow', timeout_ms: 300 }, { 'handler.js': ECHO });
    const res = await a.invoke('slow', '/?wait=5000');
    assert.equal(res.status, 504);
    const requestId = res.headers.get('x-request-id');
    const slow = await waitForLines(a, 'slow', (l) => l.some((x) => x.event === 'timeout'), 'the timeout line', 'stream=platform');
    const timeout = slow.find((x) => x.event === 'timeout')!;
    assert.equal(timeout.request_id, requestId);
    assert.match(timeout.message, new RegExp(`request ${requestId} timed out`));
  });

  test('handler mode: each line carries the request id of the invocation that wrote it', async () => {
    await a.deploy({ name: 'tagged' }, { 'handler.js': TAGGED });
    // Two at once: their lines interleave in the streams, each still names its own invocation.
    const res = await Promise.all(
      ['A', 'B'].map((tag) => a.invoke('tagged', `/?tag=${tag}`, { headers: { 'x-request-id': `req-${tag}` } })),
    );
    assert.deepEqual(
      res.map((r) => r.status),
      [200, 200],
    );
    const lines = await waitForLines(a, 'tagged', (l) => l.filter((x) => x.request_id).length === 8, 'the tagged lines');
    for (const tag of ['A', 'B']) {
      const mine = lines.filter((l) => l.request_id === `req-${tag}`);
      assert.deepEqual(
        mine.filter((l) => l.stream === 'stdout').map((l) => l.message),
        [`start ${tag}`, `part ${tag} end ${tag}`, `second ${tag}`],
      );
      assert.deepEqual(
        mine.filter((l) => l.stream === 'stderr').map((l) => l.message),
        [`err ${tag}`],
      );
      assert.deepEqual(await logLines(a, 'tagged', `request_id=req-${tag}`), mine, 'the request_id filter finds exactly them');
    }
    const plain = lines.filter((l) => l.stream === 'stdout' && l.request_id === null).map((l) => l.message);
    assert.deepEqual(plain, ['loading', 'timer from load'], 'output outside an invocation stays plain');
    assert.ok(!lines.some((l) => l.message.includes('\u001e')), 'no frame bytes reach the lines');

    // A handler that throws: the agent's report, stack lines included, belongs to the invocation too.
    assert.equal((await a.invoke('tagged', '/?tag=C&fail=1', { headers: { 'x-request-id': 'req-C' } })).status, 500); // API Gateway's answer (apigw-v2)
    const failed = await waitForLines(
      a,
      'tagged',
      (l) => l.some((x) => /handler failed/.test(x.message)),
      'the failure report',
      'request_id=req-C&stream=stderr',
    );
    assert.match(
      failed.find((l) => /handler failed/.test(l.message))!.message,
      /^\[aether-agent\] handler failed \(request req-C\): Error: boom C$/,
    );
    assert.ok(
      failed.some((l) => /^\s+at /.test(l.message)),
      'the stack lines are tagged too',
    );
  });

  test('server mode, one request at a time: lines written while a request is in flight carry its id', async () => {
    // A plain server: its lines carry no frame; the host knows which request the instance serves.
    const server = `
console.log('listening soon');
require('http').createServer((req, res) => {
  const tag = new URL(req.url, 'http://x').searchParams.get('tag');
  console.log('got ' + tag);
  setTimeout(() => { console.error('done ' + tag); res.end('ok'); }, 50);
}).listen(process.env.PORT || 3000);`;
    await a.deploy({ name: 'solo', concurrency: 1 }, { 'index.js': server });
    await a.deploy({ name: 'shared', concurrency: 2 }, { 'index.js': server });
    for (const name of ['solo', 'shared']) {
      for (const tag of ['A', 'B']) {
        const res = await a.invoke(name, `/?tag=${tag}`, { headers: { 'x-request-id': `req-${name}-${tag}` } });
        assert.equal(res.status, 200);
        await res.text();
      }
    }
    const solo = await waitForLines(a, 'solo', (l) => l.filter((x) => /^(got|done) /.test(x.message)).length === 4, 'the solo lines');
    const byRequest = solo.filter((l) => /^(got|done) /.test(l.message)).map((l) => [l.stream, l.message, l.request_id]);
    assert.deepEqual(byRequest, [
      ['stdout', 'got A', 'req-solo-A'],
      ['stderr', 'done A', 'req-solo-A'],
      ['stdout', 'got B', 'req-solo-B'],
      ['stderr', 'done B', 'req-solo-B'],
    ]);
    assert.equal(solo.find((l) => l.message === 'listening soon')?.request_id, null, 'start-up output belongs to no request');
    assert.deepEqual(messages(await logLines(a, 'solo', 'request_id=req-solo-B')), ['got B', 'done B']);
    // Two at a time: a line could be either request's, so none is claimed.
    const shared = await waitForLines(a, 'shared', (l) => l.filter((x) => /^(got|done) /.test(x.message)).length === 4, 'the shared lines');
    assert.ok(
      shared.every((l) => l.request_id === null),
      JSON.stringify(shared),
    );
  });

  test('a Web-standard fetch handler is tagged as well', async () => {
    await a.deploy(
      { name: 'fetchy' },
      {
        'handler.mjs': `export default { fetch: async (req) => { await null; console.log('fetch ' + new URL(req.url).pathname); return new Response('ok'); } };`,
      },
    );
    assert.equal((await a.invoke('fetchy', '/hello', { headers: { 'x-request-id': 'req-fetch' } })).status, 200);
    const [line] = await waitForLines(a, 'fetchy', (l) => l.length > 0, 'the line', 'stream=stdout');
    assert.equal(line!.message, 'fetch /hello');
    assert.equal(line!.request_id, 'req-fetch');
  });

  test('retention: at most AETHER_LOG_MAX_LINES lines per function, the newest', async () => {
    await a.deploy({ name: 'many' }, { 'handler.js': ECHO });
    await a.invoke('many', '/?tag=many&n=120');
    const lines = await waitForLines(a, 'many', (l) => l.length <= 50 && l.at(-1)?.message === 'many 119', 'trimming to 50 lines');
    assert.equal(lines.length, 50);
    assert.equal(lines[0]!.message, 'many 70');
  });

  test('deleting a function deletes its lines', async () => {
    const many = (await a.api('GET', '/api/functions/many')).body;
    assert.equal((await a.api('DELETE', '/api/functions/many')).status, 204);
    await a.deploy({ name: 'many' }, { 'handler.js': ECHO });
    assert.deepEqual(await logLines(a, 'many'), []);
    assert.notEqual((await a.api('GET', '/api/functions/many')).body.id, many.id);
  });
});

describe('a function printing as fast as it can', () => {
  let a: Aether;
  before(async () => {
    a = await startAether({ isolation: 'bwrap', env: { AETHER_LOG_LINES_PER_S: '200', AETHER_FUNCTION_LOG_LEVEL: 'info' } });
    await a.deploy({ name: 'flood' }, { 'handler.js': FLOOD });
    await a.deploy({ name: 'calm', env_vars: { API_KEY: SECRET } }, { 'handler.js': ECHO });
  });
  after(() => a.stop());

  test('is rate limited: what is dropped is counted in marker lines, exactly; another function keeps answering', async () => {
    assert.equal((await a.invoke('calm', '/?tag=warm&n=1')).status, 200);
    const flooding = a.invoke('flood', '/?ms=1500');
    await new Promise((r) => setTimeout(r, 300));
    const during = await a.invoke('calm', '/?tag=during&n=1');
    assert.equal(during.status, 200);
    const flooded = await flooding;
    const body = await flooded.text();
    assert.equal(flooded.status, 200, body);
    const printed = Number(body);
    assert.ok(printed > 2000, `printed ${printed}`);

    const counted = (lines: LogLine[]) => {
      const kept = lines.filter((l) => l.stream === 'stdout').length;
      const dropped = lines
        .filter((l) => l.event === 'dropped')
        .reduce((n, l) => n + Number(/^… ([\d,]+) lines dropped/.exec(l.message)![1]!.replace(/,/g, '')), 0);
      return { kept, dropped };
    };
    const lines = await waitForLines(
      a,
      'flood',
      (l) => {
        const { kept, dropped } = counted(l);
        return kept + dropped === printed;
      },
      'every printed line to be kept or counted as dropped',
      '',
      // The host reads the flood's backlog from the pipe after the function answered: slow on a loaded machine.
      30_000,
    );
    const { kept } = counted(lines);
    assert.ok(kept <= 200 * 3, `${kept} lines kept in a 1.5 s flood at 200 lines/s`);
    const marker = lines.find((l) => l.event === 'dropped')!;
    assert.equal(marker.stream, 'platform');
    assert.match(marker.message, /^… [\d,]+ lines dropped \(over the log rate limit of 200 lines or 1,024 KB per second\)$/);
    assert.deepEqual(messages(await logLines(a, 'calm', 'stream=stdout')), ['warm 0', 'during 0']);
  });

  test('AETHER_FUNCTION_LOG_LEVEL=info echoes function lines into the server log, masked', async () => {
    await a.invoke('calm', '/?secret=1');
    await waitForLines(a, 'calm', (l) => l.some((x) => x.message === 'key=****'), 'the line');
    const echoed = a.logs.find((l) => l.includes('key=****'));
    assert.ok(echoed, 'echoed into the server log');
    const rec = JSON.parse(echoed);
    assert.equal(rec.function, 'calm');
    assert.equal(rec.stream, 'stdout');
    assert.ok(!a.logs.join('\n').includes(SECRET));
  });
});
