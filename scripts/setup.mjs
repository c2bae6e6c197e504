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
const mtime = (p) => {
  try {
    return fs.statSync(p).mtimeMs;
  } catch {
    return 0;
  }
};

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

// 2. OS packages: sandbox and microVM drivers, and etcd/Redis for cluster mode and its tests; via apt
//    when root. The microVM image build also needs apt's package lists (it downloads Debian's kernel).
const packages = [
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
];
const installed = (pkg) =>
  // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own field syntax
  spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' }).stdout?.includes('install ok installed');
const missing = has('dpkg-query') ? packages.filter((pkg) => !installed(pkg)) : [];
const listsEmpty = () => !fs.existsSync('/var/lib/apt/lists') || !fs.readdirSync('/var/lib/apt/lists').some((f) => f.endsWith('_Packages'));
if (process.getuid?.() === 0 && has('apt-get')) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (missing.length > 0 || listsEmpty()) run('apt-get', ['update', '-qq'], { env });
  if (missing.length > 0) {
    say(`installing OS packages: ${missing.join(' ')}`);
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env });
  }
} else if (missing.length > 0) {
  say(`missing OS packages (${missing.join(' ')}); install them as root: apt-get install ${missing.join(' ')}`);
}

// 3. TypeScript build, when any source is newer than the last build.
if (newestIn(path.join(root, 'src')) > mtime(path.join(root, 'dist/.built'))) {
  say('building (tsc)');
  run(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json']);
  fs.writeFileSync(path.join(root, 'dist/.built'), new Date().toISOString());
}
