#!/usr/bin/env node
// Brings a checkout to a runnable state: npm deps, the OS packages the sandboxes need, the build.
// Dependency-free on purpose: it runs before node_modules exists. Each step is skipped when done.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const say = (msg) => console.error(`[setup] ${msg}`);
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
const has = (bin) => spawnSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }).status === 0;
const mtime = (p) => { try { return fs.statSync(p).mtimeMs; } catch { return 0; } };

function newestIn(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, mtime(path.join(entry.parentPath ?? entry.path, entry.name)));
  }
  return newest;
}

// 1. npm dependencies (package-lock.json is the truth).
if (mtime(path.join(root, 'node_modules/.package-lock.json')) < mtime(path.join(root, 'package-lock.json'))) {
  say('installing npm dependencies (npm ci)');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

// 2. OS packages: the sandbox drivers, and etcd/Redis for cluster mode and its tests; via apt when root.
const wanted = { bwrap: 'bubblewrap', runsc: 'runsc', setpriv: 'util-linux', etcd: 'etcd-server', etcdctl: 'etcd-client', 'redis-server': 'redis-server' };
const missing = Object.entries(wanted).filter(([bin]) => !has(bin)).map(([, pkg]) => pkg);
if (missing.length > 0) {
  if (process.getuid?.() === 0 && has('apt-get')) {
    say(`installing OS packages: ${missing.join(' ')}`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    run('apt-get', ['update', '-qq'], { env });
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env });
  } else {
    say(`missing OS packages (${missing.join(' ')}); install them as root: apt-get install ${missing.join(' ')}`);
  }
}

// 3. TypeScript build, when any source is newer than the last build.
if (newestIn(path.join(root, 'src')) > mtime(path.join(root, 'dist/.built'))) {
  say('building (tsc)');
  run(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json']);
  fs.writeFileSync(path.join(root, 'dist/.built'), new Date().toISOString());
}
