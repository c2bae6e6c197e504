/**
 * The `aether` CLI against a cluster gateway (a worker with bwrap sandboxes, real etcd, Redis and S3):
 * the same commands as on one node, through the gateway's public API only.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Aether, startAether, TOKEN } from './helpers/aether.ts';
import { type CliOptions, cliAsserts, runCli } from './helpers/cli.ts';
import { type Services, startServices } from './helpers/services.ts';
import { until } from './helpers/wait.ts';

describe('aether CLI against a cluster gateway', () => {
  let services: Services;
  let worker: Aether;
  let gateway: Aether;
  let work: string;

  const cli = (args: string[], opts: Partial<CliOptions> = {}) =>
    runCli(args, { cwd: work, input: opts.input, env: { HOME: work, XDG_CONFIG_HOME: path.join(work, 'config'), ...opts.env } });
  const { ok, fails } = cliAsserts(cli);

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-cli-cluster-'));
    services = await startServices();
    worker = await startAether({
      role: 'worker',
      isolation: 'bwrap',
      env: { ...services.env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: 'w0' },
    });
    gateway = await startAether({ role: 'gateway', env: services.env });
    await until(async () => (await gateway.api('GET', '/api/workers')).body.length === 1, 10_000, 'the worker to register');
  });
  after(async () => {
    await Promise.all([gateway?.stop(), worker?.stop()]);
    await services?.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });

  test('login to the gateway, deploy a folder, invoke it, see its instance on the worker, remove it', async () => {
    await ok(['login', gateway.url, '--token', TOKEN]);

    const dir = path.join(work, 'greeter');
    fs.mkdirSync(dir);
    fs.writeFileSync(
      path.join(dir, 'handler.js'),
      "exports.handler = async (event) => { console.log('greeting ' + event.path); return { statusCode: 200, body: 'hi ' + process.env.WHO + ' at ' + event.path }; };",
    );
    fs.writeFileSync(path.join(dir, 'aether.yaml'), 'env_vars:\n  WHO: cluster\nidle_timeout_s: 60\n');

    const deployed = JSON.parse((await ok(['deploy', dir, '--json'])).stdout);
    assert.equal(deployed.name, 'greeter');
    assert.equal(deployed.url, `${gateway.url}/functions/greeter/`);
    assert.equal(deployed.first_response.status, 200);
    assert.equal(deployed.first_response.cold_start, true);

    assert.equal((await ok(['invoke', 'greeter', '/a/b', '-H', 'X-Request-Id: greet-1'])).stdout, 'hi cluster at /a/b');
    // The worker's lines, read through the gateway; in handler mode each names the request that wrote it.
    await until(
      async () => /stdout +greeting \/a\/b$/m.test((await ok(['logs', 'greeter', '--request-id', 'greet-1'])).stdout),
      10_000,
      "the worker's log line through the gateway",
    );
    const instances = await ok(['instances', 'greeter']);
    assert.match(instances.stdout, /^ID +STATE +VERSION +STARTED +IN FLIGHT +SERVED +WORKER\n\S+ +ready +1 +.* +w0\n$/);
    assert.equal(JSON.parse((await ok(['describe', 'greeter', '--json'])).stdout).idle_timeout_s, 60, 'from aether.yaml');

    await ok(['rm', 'greeter']);
    await fails(3, ['invoke', 'greeter']);
    assert.match((await ok(['ls'])).stdout, /^No functions yet/);
  });
});
