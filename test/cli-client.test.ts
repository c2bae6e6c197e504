/**
 * The `aether` client commands, end to end: the built CLI as a child process against a real
 * `aether serve` (bwrap sandboxes) that generated its own token, as a person would use them.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort } from '../src/adapters/free-port.ts';
import { type AetherProcess, launchAether, ROOT } from '../tools/aether-process.ts';
import { type CliOptions, cliAsserts, runCli, startCli } from './helpers/cli.ts';
import { until } from './helpers/wait.ts';

/** The function the tests deploy (server mode): it reports what it was sent, what it sees and its code's files. */
const FUNCTION = (version: number) => `
const fs = require('fs'), path = require('path');
const list = (dir, prefix = '') => fs.readdirSync(dir, { withFileTypes: true })
  .flatMap((e) => e.isDirectory() ? list(path.join(dir, e.name), prefix + e.name + '/') : [prefix + e.name]);
require('http').createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    console.log('handled ' + req.method + ' ' + req.url);
    res.statusCode = req.url.startsWith('/missing') ? 404 : 200;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ version: ${version}, who: process.env.WHO, region: process.env.REGION, method: req.method,
      url: req.url, body, headers: req.headers, files: list(__dirname).sort() }));
  });
}).listen(process.env.PORT || 3000);
`;

describe('aether CLI against a running server', () => {
  let server: AetherProcess;
  let dataDir: string;
  let work: string;
  let token: string;
  /** The folder deployed; its name makes the function name. */
  let app: string;

  /** Runs the CLI the way a person on the server's machine would: no token given, found in the data dir. */
  const cli = (args: string[], opts: Partial<CliOptions> = {}) =>
    runCli(args, {
      cwd: work,
      input: opts.input,
      env: {
        HOME: work,
        XDG_CONFIG_HOME: path.join(work, 'config'),
        AETHER_URL: server.url,
        AETHER_DATA_DIR: dataDir,
        ...opts.env,
      },
    });
  const { ok, fails } = cliAsserts(cli);
  const invokeJson = async (...args: string[]) => JSON.parse((await ok(['invoke', 'my-app', ...args])).stdout);

  before(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-cli-data-'));
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-cli-work-'));
    // No AETHER_API_TOKEN: the server generates its token file, and the CLI has to find it there.
    server = await launchAether({
      role: 'serve',
      dataDir,
      token: '',
      isolation: 'bwrap',
      env: { AETHER_API_TOKEN: undefined } as unknown as Record<string, string>,
    });
    token = fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();

    app = path.join(work, 'My_App');
    const files: Record<string, string> = {
      'handler.js': FUNCTION(1),
      'lib/util.js': 'module.exports = 1;',
      'node_modules/dep/index.js': 'module.exports = 2;',
      'aether.json': JSON.stringify({ memory_mb: 256, timeout_ms: 5000, env_vars: { WHO: 'from-file', REGION: 'secret-region-value' } }),
      '.aetherignore': '*.log\nsecrets/\n',
      'debug.log': 'ignored',
      'secrets/key.txt': 'ignored',
      '.git/HEAD': 'ref: refs/heads/main',
    };
    for (const [name, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(app, name)), { recursive: true });
      fs.writeFileSync(path.join(app, name), text);
    }
    fs.writeFileSync(path.join(work, 'deploy.env'), '# comment\nWHO=from-env-file\n');
  });
  after(async () => {
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
  });

  test('deploy zips the folder (minus .git and .aetherignore), creates the function from aether.json and flags, and starts it', async () => {
    const r = await ok(['deploy', app, '--json', '--env-file', path.join(work, 'deploy.env'), '--env', 'WHO=from-flag', '--memory', '192']);
    const result = JSON.parse(r.stdout);
    assert.equal(result.name, 'my-app', 'named after the folder');
    assert.equal(result.created, true);
    assert.equal(result.code_uploaded, true);
    assert.equal(result.url, `${server.url}/functions/my-app/`);
    assert.equal(result.first_response.status, 200);
    assert.equal(result.first_response.cold_start, true, 'the first request started the first instance');
    assert.ok(result.first_response.ms > 0);

    const fn = JSON.parse((await ok(['describe', 'my-app', '--json'])).stdout);
    assert.equal(fn.memory_mb, 192, 'the flag overrides aether.json');
    assert.equal(fn.timeout_ms, 5000, 'from aether.json');
    assert.deepEqual(Object.keys(fn.env_vars).sort(), ['REGION', 'WHO']);

    const seen = await invokeJson();
    assert.equal(seen.who, 'from-flag', '--env overrides --env-file, which overrides aether.json');
    assert.equal(seen.region, 'secret-region-value');
    assert.deepEqual(seen.files, ['.aetherignore', 'aether.json', 'handler.js', 'lib/util.js', 'node_modules/dep/index.js']);
  });

  test('invoke sends path, method, body and headers, never the API token; exit codes follow the answer', async () => {
    const put = await invokeJson('/x/y?q=1', '-X', 'PUT', '-d', '{"a":1}', '-H', 'X-Test: yes', '-H', 'X-Request-Id: cli-test-1');
    assert.equal(put.method, 'PUT');
    assert.equal(put.url, '/x/y?q=1');
    assert.equal(put.body, '{"a":1}');
    assert.equal(put.headers['x-test'], 'yes');
    assert.equal(put.headers['content-type'], 'application/json');
    assert.equal(put.headers.authorization, undefined, 'the management token stays with the CLI');

    fs.writeFileSync(path.join(work, 'body.txt'), 'from a file');
    const post = await invokeJson('/upload', '-d', `@${path.join(work, 'body.txt')}`);
    assert.equal(post.method, 'POST', '-d implies POST');
    assert.equal(post.body, 'from a file');
    const piped = JSON.parse((await ok(['invoke', 'my-app', '-d', '@-'], { input: 'from stdin' })).stdout);
    assert.equal(piped.body, 'from stdin');

    const included = await ok(['invoke', 'my-app', '-i']);
    assert.match(included.stdout, /^HTTP 200\n([a-z-]+: .*\n)+\n\{"version":1,/);
    assert.match(included.stdout, /^content-type: application\/json$/m);

    const missing = await cli(['invoke', 'my-app', '/missing']);
    assert.equal(missing.code, 1, "the function's own 404 is an error answer");
    assert.equal(JSON.parse(missing.stdout).url, '/missing', 'its body is still printed');
    const nope = await fails(3, ['invoke', 'no-such-function']);
    assert.match(nope.message, /no function no-such-function/);
  });

  test('redeploy: unchanged code is not uploaded again; changed code becomes a new version', async () => {
    const before = JSON.parse((await ok(['describe', 'my-app', '--json'])).stdout);
    const same = JSON.parse((await ok(['deploy', app, '--json', '--no-wait', '--env', 'WHO=from-flag', '--memory', '192'])).stdout);
    assert.equal(same.code_uploaded, false);
    assert.equal(same.version, before.version, 'nothing changed, no new version');
    assert.equal(same.first_response, undefined, '--no-wait sends no request');

    fs.writeFileSync(path.join(app, 'handler.js'), FUNCTION(2));
    const r = await ok(['deploy', app]);
    assert.match(r.stdout, new RegExp(`Deployed: +my-app, version ${before.version + 2}\\n`), 'code and env vars: two new versions');
    assert.match(r.stdout, new RegExp(`URL: +${server.url}/functions/my-app/\\n`));
    assert.match(r.stdout, /Cold start: +HTTP 200 in \d+ ms\n/);
    assert.match(r.stderr, /Packed 5 files from .*My_App/);
    assert.match(r.stderr, /Uploading 100%/, 'progress as plain lines when stderr is not a terminal');
    const seen = await invokeJson();
    assert.equal(seen.version, 2);
    assert.equal(seen.who, 'from-file', 'env vars given replace the old ones as a whole');
  });

  test('ls, describe, instances and invocations: tables for people, JSON for scripts, secrets never shown', async () => {
    const ls = await ok(['ls']);
    assert.match(
      ls.stdout,
      /^NAME +STATE +INSTANCES +VERSION +CODE +MEMORY +TIMEOUT +UPDATED\nmy-app +ready +1 +\d+ +[\d.]+ [kB]+ +256 MB +5\.0 s +\d+ s ago\n$/,
    );
    const lsJson = (await ok(['ls', '--json'])).stdout;
    assert.deepEqual(
      JSON.parse(lsJson).map((f: { name: string }) => f.name),
      ['my-app'],
    );

    const describe = await ok(['describe', 'my-app']);
    assert.match(describe.stdout, /^name: +my-app$/m);
    assert.match(describe.stdout, /^env vars: +REGION, WHO \(values hidden\)$/m);
    assert.match(describe.stdout, /^running: +1 ready$/m);
    const latest = JSON.parse((await ok(['describe', 'my-app', '--json'])).stdout).version;
    assert.match(describe.stdout, new RegExp(`^versions: +${latest}, ${latest - 1}(, \\d+)* \\(kept, newest first\\)$`, 'm'));
    assert.match(describe.stdout, /^aliases: +none$/m);
    const alias = await fetch(`${server.url}/api/functions/my-app/aliases/prod`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ version: latest - 1, additional_version_weights: { [latest]: 0.1 } }),
    });
    assert.equal(alias.status, 200);
    assert.match(
      (await ok(['describe', 'my-app'])).stdout,
      new RegExp(`^aliases: +prod -> ${latest - 1} \\(90 %\\), ${latest} \\(10 %\\)$`, 'm'),
    );

    const instances = JSON.parse((await ok(['instances', 'my-app', '--json'])).stdout);
    assert.equal(instances.length, 1);
    assert.equal(instances[0].state, 'ready');
    assert.match((await ok(['instances', 'my-app'])).stdout, new RegExp(`^ID .*\\n${instances[0].id} +ready +\\d+ `));

    const invocations = JSON.parse((await ok(['invocations', 'my-app', '--json'])).stdout);
    assert.ok(invocations.some((i: { cold_start: boolean }) => i.cold_start));
    assert.ok(invocations.some((i: { status: number }) => i.status === 404));
    assert.ok(invocations.some((i: { request_id: string }) => i.request_id === 'cli-test-1'));
    assert.match((await ok(['invocations', 'my-app'])).stdout, /^WHEN +STATUS +DURATION +COLD +INSTANCE +REQUEST ID +ERROR\n.*\n/);
    // Filters and pages reach the API.
    const cold = JSON.parse((await ok(['invocations', 'my-app', '--cold', '--json'])).stdout);
    assert.ok(cold.length > 0 && cold.length < invocations.length && cold.every((i: { cold_start: boolean }) => i.cold_start));
    assert.deepEqual(JSON.parse((await ok(['invocations', 'my-app', '--errors', '--json'])).stdout), [], 'a 404 answer is no failure');
    const first = await ok(['invocations', 'my-app', '-n', '1']);
    const hint = /^Older ones: aether invocations my-app --before ([0-9a-f-]{36})$/m.exec(first.stderr);
    assert.ok(hint, first.stderr);
    const next = JSON.parse((await ok(['invocations', 'my-app', '-n', '1', '--before', hint[1]!, '--json'])).stdout);
    assert.equal(next.length, 1);
    assert.ok(next[0].id < hint[1]!, 'an older record');

    for (const output of [ls.stdout, lsJson, describe.stdout, (await ok(['describe', 'my-app', '--json'])).stdout]) {
      assert.doesNotMatch(output, /secret-region-value/);
    }
  });

  test('on a terminal, the upload shows a progress bar', async () => {
    fs.writeFileSync(path.join(app, 'lib/data.bin'), Buffer.alloc(256 * 1024, 7));
    // script(1) runs the CLI on a pseudo-terminal, as a person's shell would.
    const command = [process.execPath, path.join(ROOT, 'dist/cli/main.js'), 'deploy', app, '--no-wait'].map((a) => `'${a}'`).join(' ');
    const r = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      const child = spawn('script', ['-qec', command, '/dev/null'], {
        cwd: work,
        env: { PATH: process.env.PATH, HOME: work, TERM: 'xterm', AETHER_URL: server.url, AETHER_DATA_DIR: dataDir },
      });
      let out = '';
      child.stdout.on('data', (c) => (out += c));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, out }));
    });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /Uploading \[=+\] 100% [\d.]+ kB of [\d.]+ kB/);
  });

  test('logs: past lines, filtered; -f follows new lines live, from instances started after it connected', async () => {
    await ok(['invoke', 'my-app', '/logged-before']);
    await until(
      async () => (await ok(['logs', 'my-app', '--since', '10m'])).stdout.includes('handled GET /logged-before'),
      10_000,
      'the printed line in `aether logs`',
    );
    const human = (await ok(['logs', 'my-app'])).stdout;
    assert.match(human, /^\d{4}-\d\d-\d\dT[\d:.]+Z [0-9a-f]{8} stdout +handled GET \/logged-before$/m);
    const lines = (await ok(['logs', 'my-app', '--json', '-n', '1000'])).stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.ok(lines.some((l) => l.stream === 'platform' && /^instance started \(cold start \d+ ms\)$/.test(l.message)));
    const stdoutOnly = (await ok(['logs', 'my-app', '--json', '--stream', 'stdout'])).stdout.trim().split('\n');
    assert.ok(stdoutOnly.length > 0 && stdoutOnly.every((l) => JSON.parse(l).stream === 'stdout'));
    const future = await ok(['logs', 'my-app', '--since', new Date(Date.now() + 3_600_000).toISOString()]);
    assert.equal(future.stdout, '', 'nothing printed after an hour from now');

    // Following: the instance that serves the next request starts after the follower connected.
    const follower = startCli(['logs', 'my-app', '-f'], {
      cwd: work,
      env: { HOME: work, AETHER_URL: server.url, AETHER_DATA_DIR: dataDir },
    });
    try {
      await follower.waitFor(/^Following my-app \(Ctrl-C stops\)$/m, 'the follower to connect');
      await ok(['deploy', app, '--no-wait', '--memory', '200']); // a new version: the next request starts a new instance
      await ok(['invoke', 'my-app', '/while-following']);
      await follower.waitFor(/ platform +instance started \(cold start \d+ ms\)$/m, 'the new instance in the followed logs');
      await follower.waitFor(/ stdout +handled GET \/while-following$/m, 'the new line in the followed logs');
    } finally {
      follower.child.kill('SIGINT');
    }
  });

  test('a function that cannot start: deploy says so with its error and exits 6', async () => {
    const dir = path.join(work, 'broken');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'index.js'), "throw new Error('broken at import');");
    const r = await fails(6, ['deploy', dir]);
    assert.match(
      r.message,
      /broken is deployed but its first instance did not answer \(HTTP 502: .*broken at import.*\): see `aether logs broken`$/,
    );
    const described = await ok(['describe', 'broken']);
    assert.match(described.stdout, /^state: +failing$/m);
    assert.match(described.stdout, /^last error: +.*broken at import.* \(failing since \d{4}-/m);
    assert.match((await ok(['ls'])).stdout, /^broken +failing +0 /m);
  });

  test('rm deletes the function; afterwards it is not found (exit 3)', async () => {
    await ok(['rm', 'broken']);
    const r = await fails(3, ['describe', 'broken']);
    assert.match(r.message, /no function broken \(`aether ls` lists the functions at /);
    await fails(3, ['rm', 'broken']);
  });

  test('login checks and saves URL and token (0600, under XDG_CONFIG_HOME); the saved token goes to that URL only', async () => {
    const elsewhere = { AETHER_URL: undefined, AETHER_DATA_DIR: undefined };
    const config = path.join(work, 'config', 'aether', 'config.json');

    const wrong = await fails(4, ['login', server.url], { env: elsewhere, input: 'not-the-token' });
    assert.match(wrong.message, /rejected the token/);
    assert.equal(fs.existsSync(config), false, 'nothing saved');
    await fails(4, ['ls'], { env: elsewhere });

    const login = await ok(['login', server.url], { env: elsewhere, input: `${token}\n` });
    assert.match(login.stdout, /^Logged in to http:\/\/127\.0\.0\.1:\d+ \(saved in .*config\.json\)\n$/);
    assert.equal(fs.statSync(config).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.dirname(config)).mode & 0o777, 0o700);
    assert.deepEqual(JSON.parse(fs.readFileSync(config, 'utf8')), { url: server.url, token });
    assert.match((await ok(['ls'], { env: elsewhere })).stdout, /^my-app /m, 'the saved login is used');

    // Another server (here a spy on loopback) never gets the saved token.
    const seen: (string | undefined)[] = [];
    const spy = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.end('[]');
    });
    await new Promise<void>((resolve) => spy.listen(0, '127.0.0.1', resolve));
    const spyUrl = `http://127.0.0.1:${(spy.address() as { port: number }).port}`;
    try {
      const r = await fails(4, ['ls', '--url', spyUrl], { env: elsewhere });
      assert.match(r.message, /^aether: no API token for http:\/\/127\.0\.0\.1:\d+: pass --token, set AETHER_TOKEN or run `aether login/);
      assert.deepEqual(seen, [], 'not even a request');
    } finally {
      spy.close();
    }

    assert.match((await ok(['logout'], { env: elsewhere })).stdout, /^Removed /);
    assert.equal(fs.existsSync(config), false);
  });

  test('usage and connection errors: one line each, with the documented exit codes', async () => {
    await fails(2, ['ls', '--bogus']);
    await fails(2, ['deploy', path.join(work, 'no-such-folder')]);
    await fails(2, ['deploy', app, '--memory', 'lots']);
    const tooSmall = await fails(2, ['deploy', app, '--memory', '1']);
    assert.match(tooSmall.message, /invalid function settings .*memory_mb/);

    const typo = path.join(work, 'typo');
    fs.mkdirSync(typo);
    fs.writeFileSync(path.join(typo, 'index.js'), '');
    fs.writeFileSync(path.join(typo, 'aether.yaml'), 'memory: 256\n');
    const bad = await fails(2, ['deploy', typo]);
    assert.match(bad.message, /aether\.yaml: unknown setting memory; known: name, runtime, /);

    const badUrl = await fails(2, ['ls'], { env: { AETHER_URL: 'ftp://example' } });
    assert.match(badUrl.message, /^aether: invalid configuration: AETHER_URL: must be an http:\/\/ or https:\/\/ URL/);

    const closed = await freePort();
    const unreachable = await fails(5, ['ls', '--url', `http://127.0.0.1:${closed}`, '--token', 'x']);
    assert.match(unreachable.message, /cannot reach Aether at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\): start it with `aether serve`/);
    await fails(4, ['ls', '--token', 'wrong-token-0123456789']);

    const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
    assert.equal((await ok(['--version'])).stdout.trim(), version);
    assert.match((await ok(['deploy', '--help'])).stdout, /aether\.json or aether\.yaml/);
    assert.match((await ok(['--help'])).stdout, /Exit codes: 0 ok, 1 /);
  });
});
