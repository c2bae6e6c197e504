/**
 * Reference documents kept beside the repository, never copied into it (Firecracker's API spec: Aether
 * does not ship it). Found wherever the checkout is: the file an environment variable names, else
 * `shared/reference/<name>` in the folder that holds this checkout, the main checkout of this git
 * worktree, or the local repository this one was cloned from (and its main checkout).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROOT } from './aether.ts';

const git = (dir: string, args: string[]): string | undefined => {
  try {
    return execFileSync('git', ['-C', dir, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || undefined;
  } catch {
    return undefined;
  }
};

/** `dir`, the main checkout it is a worktree of, and (recursively) the local repository it was cloned from. */
function relatedCheckouts(dir: string, depth = 3): string[] {
  const common = git(dir, ['rev-parse', '--path-format=absolute', '--git-common-dir']);
  const main = common && path.basename(common) === '.git' ? path.dirname(common) : undefined;
  const origin = git(dir, ['config', '--get', 'remote.origin.url']);
  const local = origin?.startsWith('file://') ? fileURLToPath(origin) : origin && path.isAbsolute(origin) ? origin : undefined;
  const found = [dir, ...(main ? [main] : [])];
  if (local && depth > 0 && fs.existsSync(local)) found.push(...relatedCheckouts(local, depth - 1));
  return [...new Set(found)];
}

/**
 * The reference file `name`, or undefined with every place looked in. A file named by `envVar` must exist:
 * a setting that points nowhere is an error, not a reason to skip.
 */
export function findReference(name: string, envVar: string): { file: string | undefined; looked: string[] } {
  const fromEnv = process.env[envVar];
  if (fromEnv && !fs.existsSync(fromEnv)) throw new Error(`${envVar}=${fromEnv}: no such file`);
  if (fromEnv) return { file: fromEnv, looked: [fromEnv] };
  const looked = relatedCheckouts(ROOT).map((dir) => path.resolve(dir, '..', 'shared/reference', name));
  return { file: looked.find((file) => fs.existsSync(file)), looked };
}
