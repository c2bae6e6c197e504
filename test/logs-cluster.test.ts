/**
 * Function logs in a cluster: 2 gateways and 2 workers (bubblewrap) on real etcd, Redis and S3.
 * Workers write to Redis Streams, so any gateway shows and follows the lines of every worker.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Redis } from 'ioredis';
import { connectRedis } from '../src/adapters/redis/connection.js';
import { logStreamKey } from '../src/adapters/redis/log-stream.js';
import { startAether, type Aether } from './helpers/aether.ts';
import { followLogs, type LogLine, logLines, waitForLines } from './helpers/logs.ts';
import { startServices, type Services } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

const ECHO = `
exports.handler = async (event) => {
  const q = event.query;
  if (q.n) for (let i = 0; i < Number(q.n); i++) console.log(q.tag + ' ' + i);
  else console.log(q.tag + ' says ' + process.env.API_KEY);
  if (q.wait) await new Promise((r) => setTimeout(r, Number(q.wait)));
  return { statusCode: 200, body: 'ok' };
};`;
const SECRET = 'sk-cluster-secret-99';

describe('function logs in a cluster (2 gateways, 2 workers)', () => {
  let services: Services;
  let redis: Redis;
  const nodes: Aether[] = [];
  const gateways: Aether[] = [];

  before(async () => {
    services = await startServices();
    redis = await connectRedis(services.env.REDIS_ADDR!);
    const workers = await Promise.all(
      [0, 1].map((i) =>
        startAether({
          role: 'worker',
          isolation: 'bwrap',
          env: {
            ...services.env,
            WORKER_IP: '127.0.0.1',
            AETHER_WORKER_ID: `w${i}`,
            AETHER_LOG_MAX_LINES: '100',
            AETHER_LOG_LINES_PER_S: '100000',
          },
        }),
      ),
    );
    nodes.push(...workers);
    for (let i = 0; i < 2; i++) gateways.push(await startAether({ role: 'gateway', env: services.env }));
    nodes.push(...gateways);
    await until(async () => (await gateways[0]!.api('GET', '/api/workers')).body.length === 2, 10_000, 'both workers to register');
  });
  after(async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    redis.disconnect();
    await services.stop();
  });

  test('lines of instances on both workers, through either gateway, followed live; secrets masked', async () => {
    const [g0, g1] = [gateways[0]!, gateways[1]!];
    const fn = await g0.deploy({ name: 'spread', concurrency: 1, env_vars: { API_KEY: SECRET } }, { 'handler.js': ECHO });
    const clientsBefore = await redisClients();
    const follower = await followLogs(g1.url, 'spread');
    let round = 0;
    let lines: LogLine[] = [];
    const workerOf = new Map<string, string>();
    const stdoutWorkers = () => new Set(lines.filter((l) => l.stream === 'stdout').map((l) => workerOf.get(l.instance_id!)));
    try {
      // Concurrency 1 and requests at once: more instances, until both workers printed a line.
      await until(
        async () => {
          round++;
          await Promise.all([0, 1, 2].map((i) => g0.invoke('spread', `/?tag=r${round}-${i}&wait=300`).then((r) => r.text())));
          for (const i of (await g0.api('GET', '/api/functions/spread/instances')).body) workerOf.set(i.id, i.worker_id);
          lines = await waitForLines(
            g1,
            'spread',
            (l) => l.filter((x) => x.stream === 'stdout').length === 3 * round,
            `${3 * round} lines`,
          );
          return stdoutWorkers().size === 2;
        },
        20_000,
        'lines printed on both workers',
      );
      const said = 3 * round;
      const stdout = lines.filter((l) => l.stream === 'stdout');
      assert.ok(stdout.every((l) => / says \*\*\*\*$/.test(l.message) && l.function_id === fn.id));
      assert.deepEqual(stdoutWorkers(), new Set(['w0', 'w1']));
      assert.ok(lines.some((l) => l.event === 'started'));
      assert.deepEqual(await logLines(g0, 'spread'), lines, 'both gateways show the same lines');

      const live = await follower.waitFor((l) => l.filter((x) => x.stream === 'stdout').length === said, 'the followed lines');
      assert.deepEqual(
        live.filter((l) => l.stream === 'stdout').map((l) => l.message),
        stdout.map((l) => l.message),
      );
      assert.ok(!JSON.stringify(lines).includes(SECRET));
      for (const n of nodes) assert.ok(!n.logs.join('\n').includes(SECRET));
      assert.equal(await redisClients(), clientsBefore + 1, 'the follower holds one Redis connection');
    } finally {
      follower.close();
    }
    await until(async () => (await redisClients()) === clientsBefore, 5000, 'the follower to let go of its Redis connection');
  });

  test('lines carry the request id of their invocation, whichever gateway took it and whichever reads', async () => {
    assert.equal((await gateways[0]!.invoke('spread', '/?tag=tagged', { headers: { 'x-request-id': 'cluster-req-1' } })).status, 200);
    const lines = await waitForLines(gateways[1]!, 'spread', (l) => l.length > 0, 'the tagged line', 'request_id=cluster-req-1');
    assert.deepEqual(
      lines.map((l) => [l.stream, l.message]),
      [['stdout', 'tagged says ****']],
    );
  });

  test("each function's stream is capped (XADD MAXLEN ~ AETHER_LOG_MAX_LINES) and expires", async () => {
    const fn = await gateways[0]!.deploy({ name: 'chatty' }, { 'handler.js': ECHO });
    assert.equal((await gateways[1]!.invoke('chatty', '/?tag=c&n=2000')).status, 200);
    const lines = await waitForLines(gateways[1]!, 'chatty', (l) => l.at(-1)?.message === 'c 1999', 'the last line');
    const len = await redis.xlen(logStreamKey(fn.id));
    // "~": Redis trims whole macro nodes (100 entries each), so a little more than the cap may stay.
    assert.ok(len >= 100 && len <= 300, `${len} entries kept`);
    assert.equal(lines.length, len);
    assert.ok((await redis.pttl(logStreamKey(fn.id))) > 0, 'the stream expires after the retention time');
  });

  test('deleting a function through a gateway removes its stream', async () => {
    const { id } = (await gateways[1]!.api('GET', '/api/functions/spread')).body;
    assert.equal(await redis.exists(logStreamKey(id)), 1);
    assert.equal((await gateways[1]!.api('DELETE', '/api/functions/spread')).status, 204);
    await until(async () => (await redis.exists(logStreamKey(id))) === 0, 5000, 'the stream to go');
  });

  /** Connected Redis clients (the test's own included). */
  async function redisClients(): Promise<number> {
    return ((await redis.client('LIST')) as string).trim().split('\n').length;
  }
});
