/**
 * Which module of a function's code to load, and how it serves. The one home of these rules: the
 * agent applies them in every instance, and the host checks uploads with the same module (so it
 * must stay free of side effects and of anything beyond node's builtins).
 */
import { readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative, resolve, sep } from 'node:path';

/** Tried in this order at the top of the code when no entrypoint is configured; then package.json "main". */
export const DEFAULT_ENTRIES = ['handler.js', 'index.js', 'index.mjs', 'handler.mjs'] as const;

/**
 * The module to import: the configured entrypoint, else the first default file that exists, else
 * package.json "main". Paths resolve like require() does (extension and directory index optional)
 * and must stay inside the code. Throws an Error saying what is missing.
 */
export function resolveEntry(codeDir: string, entrypoint: string | null): string {
  const require = createRequire(join(codeDir, 'package.json'));
  if (entrypoint) return resolveInside(require, codeDir, entrypoint, `entrypoint ${entrypoint}`, entrypoint);
  for (const name of DEFAULT_ENTRIES) {
    const path = join(codeDir, name);
    if (statSync(path, { throwIfNoEntry: false })?.isFile()) return path;
  }
  const main = packageMain(codeDir);
  if (main) return resolveInside(require, codeDir, main, `package.json main ${main}`, `package.json main ${main}`);
  throw new Error(`entry module not found: none of ${DEFAULT_ENTRIES.join(', ')} or a package.json "main" in the code`);
}

/** `what` names the target in "is outside" errors, `missing` in "not found" ones. */
function resolveInside(require: NodeJS.Require, codeDir: string, target: string, what: string, missing: string): string {
  const outside = () => new Error(`${what} is outside the code directory`);
  const path = resolve(codeDir, target);
  if (!inside(codeDir, path)) throw outside();
  let resolved: string;
  try {
    resolved = require.resolve(path);
  } catch {
    throw new Error(`entry module not found: ${missing}`);
  }
  if (!inside(codeDir, resolved)) throw outside();
  return resolved;
}

function inside(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel !== '..' && !rel.startsWith(`..${sep}`) && !rel.startsWith(sep);
}

/** Read, not require()d: a host checking an upload must not keep the file in its module cache. */
function packageMain(codeDir: string): string | undefined {
  try {
    const main = (JSON.parse(readFileSync(join(codeDir, 'package.json'), 'utf8')) as { main?: unknown }).main;
    return typeof main === 'string' && main ? main : undefined;
  } catch {
    return undefined;
  }
}

export type LambdaHandler = (event: unknown, context: unknown, callback?: (err: unknown, result?: unknown) => void) => unknown;
export interface FetchTarget {
  fetch(request: Request): Response | Promise<Response>;
}

export type Mode = { kind: 'lambda'; handler: LambdaHandler } | { kind: 'fetch'; target: FetchTarget } | { kind: 'server' };

/** ESM named export or CJS module.exports.handler; a default object with fetch(); else the code serves itself. */
export function detectMode(mod: { handler?: unknown; default?: { handler?: unknown; fetch?: unknown } }): Mode {
  const handler = mod.handler ?? mod.default?.handler;
  if (typeof handler === 'function') return { kind: 'lambda', handler: handler as LambdaHandler };
  if (typeof mod.default?.fetch === 'function') return { kind: 'fetch', target: mod.default as FetchTarget };
  return { kind: 'server' };
}
