/**
 * The set-up (scripts/setup.mjs, run by npm start/test/gateway/worker): on a fresh checkout (the repository's
 * files copied to a temp dir, as `git clone` would give them), set-ups started at the same moment serialise on
 * the checkout's lock and all succeed; a second run does nothing; `npm run build` leaves the build current;
 * `npm install -g .` gives a working `aether`; `npm run gateway` and `npm run worker` started together both
 * come up. npm and apt are stand-ins on PATH where the real ones would take minutes or change this machine
 * (they log their calls and fail on overlap); the lock, the build, npm scripts and the servers are real.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { ROOT, TOKEN } from './helpers/aether.ts';
import { startServices } from './helpers/services.ts';
import { skipUnless } from './helpers/skip.ts';
import { until } from './helpers/wait.ts';

const run = promisify(execFile);
const IS_ROOT = process.getuid?.() === 0;
const hasGit = !spawnSync('git', ['--version']).error && fs.existsSync(path.join(ROOT, '.git'));
const needsGit = skipUnless(hasGit, 'the set-up tests make a fresh checkout with `git ls-files`: no git or no .git here');
const temps: string[] = [];
after(() => {
  for (const dir of temps) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

/** The repository's files as a fresh clone has them (tracked and new, not ignored): no node_modules, no dist. */
function freshCheckout(): string {
  const dir = tempDir('aether-checkout-');
  fs.chmodSync(dir, 0o755); // as a clone would be; sandboxes read the agent from dist/ as another uid
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' });
  for (const file of files.split('\0')) {
    if (file && fs.existsSync(path.join(ROOT, file))) fs.cpSync(path.join(ROOT, file), path.join(dir, file), { verbatimSymlinks: true });
  }
  return dir;
}

/**
 * Stand-ins for npm (`ci` links this repository's node_modules in after a second), apt-get (installs by
 * marking packages installed for the dpkg-query stand-in; the first `update` fails on a held lock, as apt
 * does when another process has it) and dpkg-query. Each logs its call, and "OVERLAP" if another was
 * running at the same time.
 */
function fakeTools(): { bin: string; env: Record<string, string>; log: () => string[] } {
  const dir = tempDir('aether-fake-tools-');
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(path.join(dir, 'installed'), { recursive: true });
  fs.mkdirSync(bin);
  const busy = `mkdir "$FAKE_STATE/busy" 2>/dev/null || echo OVERLAP >> "$FAKE_STATE/log"`;
  const tools: Record<string, string> = {
    npm: `echo "npm $*" >> "$FAKE_STATE/log"
${busy}
sleep 1
[ "$1" = ci ] && ln -sfn "$FAKE_NODE_MODULES" node_modules
rmdir "$FAKE_STATE/busy"`,
    'apt-get': `[ "$1" = --version ] && exit 0
echo "apt-get $*" >> "$FAKE_STATE/log"
${busy}
while [ "$1" = -o ]; do shift 2; done
if [ "$1" = update ] && [ ! -e "$FAKE_STATE/lists-lock-seen" ]; then
  touch "$FAKE_STATE/lists-lock-seen"; rmdir "$FAKE_STATE/busy"
  echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2; exit 100
fi
sleep 0.5
if [ "$1" = install ]; then
  for p in "$@"; do [ "$p" = "$FAKE_UNINSTALLABLE" ] && { rmdir "$FAKE_STATE/busy"; echo "E: Unable to locate package $p" >&2; exit 100; }; done
  for p in "$@"; do case "$p" in -*|install) ;; *) touch "$FAKE_STATE/installed/$p";; esac; done
fi
rmdir "$FAKE_STATE/busy"`,
    'dpkg-query': `shift 2
status=0
for p in "$@"; do
  if [ -e "$FAKE_STATE/installed/$p" ]; then echo "$p install ok installed"; else echo "dpkg-query: no packages found matching $p" >&2; status=1; fi
done
exit $status`,
  };
  for (const [name, body] of Object.entries(tools)) fs.writeFileSync(path.join(bin, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return {
    bin,
    env: { PATH: `${bin}:${process.env.PATH}`, FAKE_STATE: dir, FAKE_NODE_MODULES: path.join(ROOT, 'node_modules') },
    log: () => (fs.existsSync(path.join(dir, 'log')) ? fs.readFileSync(path.join(dir, 'log'), 'utf8').trim().split('\n') : []),
  };
}

interface Done {
  code: number | null;
  stderr: string;
  ms: number;
}

/** Runs a command to its end (whatever its exit code), with its stderr and how long it took. */
function runToEnd(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<Done> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr, ms: Date.now() - started }));
  });
}

const setup = (dir: string, env?: Record<string, string>) => runToEnd(process.execPath, ['scripts/setup.mjs'], dir, env);
const count = (text: string, what: string) => text.split(what).length - 1;
const OS_PACKAGES = /export const OS_PACKAGES = \[([^\]]*)\]/
  .exec(fs.readFileSync(path.join(ROOT, 'scripts/lib/setup.mjs'), 'utf8'))![1]!
  .replace(/\/\/.*$/gm, '') // comments may hold quotes ("promtool's")
  .match(/'[^']+'/g)!
  .map((q) => q.slice(1, -1));

describe('set-up on a fresh checkout', { skip: needsGit }, () => {
  const fake = fakeTools();
  let dir: string;

  test('two set-ups started at the same moment both succeed; each step runs once, never two at a time', async () => {
    dir = freshCheckout();
    const [a, b] = await Promise.all([setup(dir, fake.env), setup(dir, fake.env)]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const both = a.stderr + b.stderr;
    const log = fake.log();
    assert.ok(!log.includes('OVERLAP'), `steps overlapped: ${log.join('\n')}`);
    assert.deepEqual(
      log.filter((line) => line.startsWith('npm')),
      ['npm ci --no-audit --no-fund'],
    );
    assert.equal(count(both, 'building (tsc)'), 1, both);
    assert.match(both, /waiting for process \d+, which is setting up this checkout/);
    assert.ok(fs.existsSync(path.join(dir, 'dist/cli/main.js')));
    const apt = log.filter((line) => line.startsWith('apt-get'));
    if (IS_ROOT) {
      // The first update met a held lists lock and was retried; the lock timeout is passed to apt.
      assert.deepEqual(
        apt.map((line) => line.replace(' -o DPkg::Lock::Timeout=600', '')),
        ['apt-get update -qq', 'apt-get update -qq', `apt-get install -y -qq --no-install-recommends ${OS_PACKAGES.join(' ')}`],
      );
      assert.ok(
        apt.every((line) => line.startsWith('apt-get -o DPkg::Lock::Timeout=600 ')),
        apt.join('\n'),
      );
      assert.match(both, /apt is busy in another process; trying again/);
    } else {
      assert.deepEqual(apt, []);
      assert.match(both, /missing OS packages: .*\(install them as root/);
    }
  });

  test('a second set-up finds nothing to do: no npm, no apt, no build, no output', async () => {
    const before = fake.log().length;
    const again = await setup(dir, fake.env);
    assert.equal(again.code, 0);
    assert.deepEqual(fake.log().slice(before), []);
    if (IS_ROOT) assert.equal(again.stderr, '');
    // Measured, loosely bounded: a start with nothing missing should cost about one node start-up.
    console.log(`a set-up with nothing to do took ${again.ms} ms`);
    assert.ok(again.ms < 5000, `${again.ms} ms`);
  });

  test('a package apt cannot install is reported, the rest installed, and not tried again at every start', {
    skip: skipUnless(IS_ROOT, 'the set-up uses apt only as root'),
  }, async () => {
    for (const pkg of ['runsc', 'socat']) fs.rmSync(path.join(fake.env.FAKE_STATE!, 'installed', pkg));
    const env = { ...fake.env, FAKE_UNINSTALLABLE: 'runsc' };
    const before = fake.log().length;
    const first = await setup(dir, env);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /WARNING: apt could not install runsc;/);
    assert.ok(fs.existsSync(path.join(fake.env.FAKE_STATE!, 'installed', 'socat')), 'the other package is installed');
    assert.deepEqual(
      fake
        .log()
        .slice(before)
        .map((line) => line.replace('apt-get -o DPkg::Lock::Timeout=600 ', '')),
      [
        'update -qq',
        'install -y -qq --no-install-recommends runsc socat',
        'install -y -qq --no-install-recommends runsc',
        'install -y -qq --no-install-recommends socat',
      ],
    );
    const again = await setup(dir, env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(fake.log().length, before + 4, 'apt is not run again');
    assert.match(again.stderr, /missing OS packages: runsc \(apt could not install them lately; it tries again after a day/);
    fs.writeFileSync(path.join(fake.env.FAKE_STATE!, 'installed', 'runsc'), ''); // installed by hand
  });

  test('npm run build leaves the build marked current', async () => {
    const source = path.join(dir, 'src/config.ts');
    fs.utimesSync(source, new Date(), new Date());
    const built = await runToEnd('npm', ['run', 'build'], dir);
    assert.equal(built.code, 0, built.stderr);
    const after = await setup(dir, fake.env);
    assert.equal(after.code, 0, after.stderr);
    assert.doesNotMatch(after.stderr, /building/);
  });

  test('a set-up whose holder was killed mid-way recovers the stale lock; until then it waits', async (t) => {
    assert.ok(dir, 'runs in the checkout of the first test');
    const holder = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { withSetupLock } from './scripts/lib/setup.mjs'; await withSetupLock(() => { console.log('held'); return new Promise(() => setInterval(() => {}, 1000)); });`,
      ],
      { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const holderExited = new Promise((resolve) => holder.once('exit', resolve));
    t.after(() => holder.kill('SIGKILL'));
    await new Promise((resolve) => holder.stdout.once('data', resolve));
    fs.unlinkSync(path.join(dir, 'node_modules')); // something to do: npm ci
    const before = fake.log().length;
    let stderr = '';
    const waiting = spawn(process.execPath, ['scripts/setup.mjs'], {
      cwd: dir,
      env: { ...process.env, ...fake.env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    waiting.stderr.on('data', (chunk) => (stderr += chunk));
    const done = new Promise<number | null>((resolve) => waiting.once('close', resolve));
    await until(async () => stderr.includes(`waiting for process ${holder.pid}`), 10_000, 'the set-up to wait for the holder');
    assert.equal(waiting.exitCode, null, 'it waits while the holder lives');
    assert.deepEqual(fake.log().slice(before), [], 'nothing ran while the holder lived');
    holder.kill('SIGKILL');
    await holderExited;
    assert.equal(await done, 0, stderr);
    assert.match(stderr, new RegExp(`removed a stale lock left by process ${holder.pid}, which is gone`));
    assert.deepEqual(fake.log().slice(before), ['npm ci --no-audit --no-fund']);
    assert.ok(!fs.existsSync(path.join(dir, '.setup.lock')), 'the lock is released');
  });
});

describe('npm install -g . on a fresh clone', { skip: needsGit }, () => {
  test('installs cleanly, and the installed aether installs its dependencies and builds on its first run', async () => {
    const dir = freshCheckout();
    const prefix = tempDir('aether-global-');
    const install = await runToEnd('npm', ['install', '-g', '--prefix', prefix, '.'], dir);
    assert.equal(install.code, 0, install.stderr);
    assert.doesNotMatch(install.stderr, /EBADENGINE|warn/i);
    const fake = fakeTools();
    const aether = path.join(prefix, 'bin/aether');
    const first = await run(aether, ['--help'], { env: { ...process.env, ...fake.env } });
    assert.match(first.stdout, /serve/);
    assert.match(first.stderr, /installing npm dependencies[\s\S]*building \(tsc\)/);
    assert.deepEqual(fake.log(), ['npm ci --no-audit --no-fund']);
    const second = await run(aether, ['serve', '--help'], { env: { ...process.env, ...fake.env } });
    assert.match(second.stdout, /--isolation/);
    assert.equal(second.stderr, '');
  });
});

describe('cluster roles started together from a fresh clone', { skip: needsGit }, () => {
  test('npm run gateway and npm run worker at the same moment: one builds, both come up and see each other', async (t) => {
    const dir = freshCheckout();
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
    const services = await startServices();
    t.after(() => services.stop());
    const start = (role: 'gateway' | 'worker') => {
      const output: string[] = [];
      const child = spawn('npm', ['run', role], {
        cwd: dir,
        detached: true, // its own process group: npm, its shell and aether are stopped together
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          ...services.env,
          PORT: '0',
          HOST: '127.0.0.1',
          AETHER_DATA_DIR: tempDir(`aether-${role}-`),
          AETHER_API_TOKEN: TOKEN,
          AETHER_ISOLATION: 'bwrap',
          WORKER_IP: '127.0.0.1',
        },
      });
      child.stdout.on('data', (chunk) => output.push(String(chunk)));
      child.stderr.on('data', (chunk) => output.push(String(chunk)));
      t.after(() => stopGroup(child));
      return { child, text: () => output.join('') };
    };
    const gateway = start('gateway');
    const worker = start('worker');
    const serving = (p: { text(): string }): string | undefined => {
      const line = p
        .text()
        .split('\n')
        .find((l) => l.includes('"msg":"aether is serving"'));
      return line && JSON.parse(line).url;
    };
    const outputs = () => `--- gateway:\n${gateway.text()}\n--- worker:\n${worker.text()}`;
    await until(
      async () => {
        assert.ok(gateway.child.exitCode === null && worker.child.exitCode === null, `one exited:\n${outputs()}`);
        return serving(gateway) !== undefined && serving(worker) !== undefined;
      },
      120_000,
      'both roles to serve',
      200,
    ).catch((err: Error) => assert.fail(`${err.message}\n${outputs()}`));
    assert.equal(count(gateway.text() + worker.text(), 'building (tsc)'), 1, gateway.text() + worker.text());
    const url = serving(gateway)!.replace('0.0.0.0', '127.0.0.1');
    await until(
      async () => {
        const res = await fetch(`${url}/api/workers`, { headers: { authorization: `Bearer ${TOKEN}` } });
        return res.status === 200 && ((await res.json()) as unknown[]).length === 1;
      },
      15_000,
      'the gateway to see the worker',
    );
  });
});

/** Stops a detached child's whole process group, and waits for the child. */
async function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    process.kill(-child.pid!, 'SIGTERM');
  } catch {
    return;
  }
  const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}
