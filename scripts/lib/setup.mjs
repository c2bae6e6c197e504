// Brings a checkout to a runnable state: npm dependencies, the OS packages the sandboxes need, the build.
// Dependency-free on purpose: it runs before node_modules exists.
//
// Every step first checks whether it is needed, cheaply and without the network, so that a set-up with
// nothing missing does nothing (and works offline). Only when something is missing does it take the
// checkout's lock and check again under it: a second process started at the same moment waits for the
// first and then finds everything done.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { build, buildIsCurrent } from './build.mjs';
import { acquireLock } from './lock.mjs';

export const root = path.resolve(import.meta.dirname, '../..');
export const say = (msg) => console.error(`[setup] ${msg}`);

/** OS packages: sandbox and microVM drivers, and etcd/Redis for cluster mode and its tests (via apt, as root). */
export const OS_PACKAGES = [
  'bubblewrap',
  'runsc',
  'util-linux', // sandboxes (setpriv is in util-linux)
  'qemu-system-x86',
  'busybox-static',
  'e2fsprogs',
  'socat', // microVMs and their guest image (socat: vsock relay)
  'etcd-server',
  'etcd-client',
  'redis-server', // cluster mode
  'nginx-light', // the benchmark's proxy baseline
  'awscli', // a real Lambda Invoke API client for its tests
  'prometheus', // metrics tests: a real Prometheus scraping Aether, and promtool's check
  'chromium', // dashboard tests: a real headless browser, driven by playwright-core
];

const readJson = (file) => {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
};

/**
 * Whether node_modules holds what package-lock.json says: npm's record of what it installed
 * (node_modules/.package-lock.json) has every locked package at its locked version. Optional packages
 * for other platforms are never installed. Compared by content, not time, so that a fresh clone with
 * node_modules copied in counts as installed.
 */
function dependenciesInstalled() {
  const wanted = readJson(path.join(root, 'package-lock.json'))?.packages ?? {};
  const installed = readJson(path.join(root, 'node_modules/.package-lock.json'))?.packages;
  if (!installed) return false;
  return Object.entries(wanted).every(
    ([where, pkg]) => where === '' || installed[where]?.version === pkg.version || (pkg.optional && !installed[where]),
  );
}

/** The OS packages that dpkg does not report installed; none when this is not a dpkg system. */
function missingOsPackages() {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own field syntax
  const query = spawnSync('dpkg-query', ['-W', '-f=${Package} ${Status}\n', ...OS_PACKAGES], { encoding: 'utf8' });
  if (query.error) return []; // no dpkg-query
  const installed = new Set(
    query.stdout
      .split('\n')
      .filter((line) => line.endsWith(' install ok installed'))
      .map((line) => line.split(' ')[0]),
  );
  return OS_PACKAGES.filter((pkg) => !installed.has(pkg));
}

const canUseApt = () => process.getuid?.() === 0 && !spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).error;

/**
 * apt-get with apt's own lock timeout: other processes on the machine (another checkout's set-up, an admin)
 * may be using apt. `apt-get update` does not honour DPkg::Lock::Timeout for its lists lock, so a run that
 * found a lock held is retried for as long.
 */
async function aptGet(args) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const deadline = Date.now() + 600_000;
  for (;;) {
    const run = spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=600', ...args], {
      env,
      encoding: 'utf8',
      stdio: ['ignore', 'inherit', 'pipe'],
    });
    process.stderr.write(run.stderr ?? '');
    if (run.status === 0) return true;
    if (!/Could not get lock/.test(run.stderr ?? '') || Date.now() > deadline) return false;
    say('apt is busy in another process; trying again in 2 s');
    await sleep(2000);
  }
}

/**
 * Packages apt failed to install (e.g. not in this system's sources), by when: not tried again for a day,
 * so that a start does not go to the network every time for a package it cannot get.
 */
const stateFile = path.join(root, '.setup.state.json');
const RETRY_FAILED_MS = 24 * 3600_000;
const aptFailures = () => readJson(stateFile)?.aptFailed ?? {};
const recentlyFailed = (pkg) => Date.now() - Date.parse(aptFailures()[pkg] ?? '') < RETRY_FAILED_MS;

/** Installs the missing OS packages; one that cannot be installed does not stop the rest. */
async function installOsPackages(missing) {
  say(`installing OS packages: ${missing.join(' ')}`);
  if (!(await aptGet(['update', '-qq']))) say('apt-get update failed; installing from the package lists already here');
  const install = (pkgs) => aptGet(['install', '-y', '-qq', '--no-install-recommends', ...pkgs]);
  const failed = [];
  if (!(await install(missing))) for (const pkg of missing) if (!(await install([pkg]))) failed.push(pkg);
  const now = new Date().toISOString();
  const failures = { ...aptFailures(), ...Object.fromEntries(failed.map((pkg) => [pkg, now])) };
  for (const pkg of missing) if (!failed.includes(pkg)) delete failures[pkg];
  fs.writeFileSync(stateFile, `${JSON.stringify({ aptFailed: failures }, null, 2)}\n`);
  if (failed.length > 0) say(`WARNING: apt could not install ${failed.join(' ')}; what needs them (see README) will not work without them`);
}

/**
 * The set-up steps, each with a cheap check. `osPackages: false` leaves out apt (the installed `aether`
 * command: it builds, but does not install system packages as a side effect of running a command).
 */
function steps({ osPackages }) {
  const list = [
    {
      name: 'npm dependencies',
      done: dependenciesInstalled,
      run: () => {
        say('installing npm dependencies (npm ci)');
        execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: 'inherit' });
      },
    },
  ];
  if (osPackages) {
    let told = false;
    list.push({
      name: 'OS packages',
      // Missing packages are only work to do when apt can install them; otherwise say what to install.
      done: () => {
        const missing = missingOsPackages();
        if (missing.length === 0) return true;
        const apt = canUseApt();
        if (apt && missing.some((pkg) => !recentlyFailed(pkg))) return false;
        if (!told) {
          const why = apt ? 'apt could not install them lately; it tries again after a day' : 'install them as root';
          say(`missing OS packages: ${missing.join(' ')} (${why}: apt-get install ${missing.join(' ')})`);
        }
        told = true;
        return true;
      },
      run: () => installOsPackages(missingOsPackages().filter((pkg) => !recentlyFailed(pkg))),
    });
  }
  list.push({
    name: 'build',
    done: () => buildIsCurrent(root),
    run: () => {
      say('building (tsc) and the dashboard (esbuild)');
      return build(root);
    },
  });
  return list;
}

/** Runs `fn` holding the checkout's set-up lock (waiting for another process that holds it). */
export async function withSetupLock(fn) {
  const release = await acquireLock(path.join(root, '.setup.lock'), { say });
  try {
    return await fn();
  } finally {
    release();
  }
}

/** Runs whatever set-up is missing, under the checkout's lock; returns the names of the steps it ran. */
export async function setup({ osPackages = true } = {}) {
  const all = steps({ osPackages });
  if (all.every((step) => step.done())) return [];
  return withSetupLock(async () => {
    const ran = [];
    for (const step of all) {
      if (step.done()) continue; // done meanwhile by the process we waited for
      await step.run();
      ran.push(step.name);
    }
    return ran;
  });
}
