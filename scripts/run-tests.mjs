#!/usr/bin/env node
// Runs every test/**/*.test.ts with node's built-in runner (TypeScript through tsx).
// Files run one at a time: sandboxes and timing-sensitive scaling tests share 2 cores.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const only = process.argv.slice(2);
const files = fs
  .readdirSync(path.join(root, 'test'), { recursive: true })
  .filter((f) => f.endsWith('.test.ts'))
  .map((f) => path.join('test', f))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();
// Lint and format (Biome), then type errors in source, tests and benchmark, and in the dashboard (browser
// code, its own tsconfig), fail the run before anything starts (tsx and esbuild only strip types).
const lint = spawnSync(process.execPath, [path.join(root, 'node_modules/@biomejs/biome/bin/biome'), 'check', '.'], {
  cwd: root,
  stdio: 'inherit',
});
if (lint.status !== 0) {
  console.error('lint or format problems: `npm run format` fixes the formatting and the safe lint fixes');
  process.exit(lint.status ?? 1);
}
for (const project of ['tsconfig.tests.json', 'src/dashboard']) {
  const typecheck = spawnSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', project], {
    cwd: root,
    stdio: 'inherit',
  });
  if (typecheck.status !== 0) process.exit(typecheck.status ?? 1);
}
const result = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files], {
  cwd: root,
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
