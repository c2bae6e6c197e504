// The TypeScript build (src -> dist), the dashboard's bundle (src/dashboard -> dist/dashboard), and whether they are current. dist/.built marks a finished build; its time
// is the moment the build started, so a source saved during a build still counts as newer.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { buildDashboard } from './dashboard.mjs';

const mtime = (p) => fs.statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? 0;

/** The newest modification under `dir`, directories included (a deleted file changes its directory). */
function newestIn(dir) {
  let newest = mtime(dir);
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    newest = Math.max(newest, mtime(path.join(entry.parentPath ?? entry.path, entry.name)));
  }
  return newest;
}

const marker = (root) => path.join(root, 'dist/.built');

export function buildIsCurrent(root) {
  const sources = Math.max(newestIn(path.join(root, 'src')), mtime(path.join(root, 'tsconfig.json')));
  return sources <= mtime(marker(root));
}

export async function build(root) {
  const started = new Date();
  execFileSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], {
    cwd: root,
    stdio: 'inherit',
  });
  await buildDashboard(root);
  fs.writeFileSync(marker(root), `${started.toISOString()}\n`);
  fs.utimesSync(marker(root), started, started);
}
