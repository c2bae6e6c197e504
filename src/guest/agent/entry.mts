import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative, resolve, sep } from 'node:path';

const DEFAULT_ENTRIES = ['handler.js', 'index.js', 'index.mjs', 'handler.mjs'];

/**
 * The module to import: the configured entrypoint, else the first default file that exists, else
 * package.json "main". Paths resolve like require() does (extension and directory index optional).
 */
export function resolveEntry(codeDir: string, entrypoint: string | null): string {
  const require = createRequire(join(codeDir, 'package.json'));
  if (entrypoint) {
    const path = resolve(codeDir, entrypoint);
    const rel = relative(codeDir, path);
    if (rel === '..' || rel.startsWith(`..${sep}`)) {
      throw new Error(`entrypoint ${entrypoint} is outside the code directory`);
    }
    return resolveFile(require, path, `entry module not found: ${entrypoint}`);
  }
  for (const name of DEFAULT_ENTRIES) {
    const path = join(codeDir, name);
    if (statSync(path, { throwIfNoEntry: false })?.isFile()) return path;
  }
  const main = packageMain(require);
  if (main) return resolveFile(require, resolve(codeDir, main), `entry module not found: package.json main ${main}`);
  throw new Error(`entry module not found: none of ${DEFAULT_ENTRIES.join(', ')} or a package.json "main" in the code`);
}

function resolveFile(require: NodeJS.Require, path: string, notFound: string): string {
  try {
    return require.resolve(path);
  } catch {
    throw new Error(notFound);
  }
}

function packageMain(require: NodeJS.Require): string | undefined {
  try {
    const main = (require('./package.json') as { main?: unknown }).main;
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
