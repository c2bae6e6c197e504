/**
 * A function prepared for a fast start (host side: adapters/isolation/fast-start.ts): its code bundled
 * into one CommonJS file, with V8's code cache for it, mounted read-only at GUEST_PATHS.start. Loading
 * one file with its bytecode ready skips the module resolution (hundreds of file system calls, costly
 * under gVisor) and most of the parsing and compiling a real app's node_modules cost.
 * Builtins only: the agent and the cache producer (code-cache.mts) both use it.
 */
import { readFileSync } from 'node:fs';
import { createRequire, Module, SourceMap } from 'node:module';
import { dirname, join } from 'node:path';
import { constants, Script } from 'node:vm';
import { GUEST_PATHS } from './protocol.mjs';

export const BUNDLE_FILE = 'bundle.js';
export const CODE_CACHE_FILE = 'code-cache.bin';
/** esbuild's source map of the bundle: `sources` relative to the function's code root. */
export const SOURCE_MAP_FILE = 'bundle.js.map';
/** The script's name in stack traces; also what the cache was produced under. */
export const BUNDLE_PATH = join(GUEST_PATHS.start, BUNDLE_FILE);

/** The bundle as one script. V8 accepts a cache only for the same source, flags and node: both sides compile it here. */
export function bundleScript(source: string, cachedData?: Buffer): Script {
  return new Script(Module.wrap(source), {
    filename: BUNDLE_PATH,
    cachedData,
    // import() of what the bundle left out (none, unless the function has it) goes to node's own loader.
    importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
}

export interface LoadedBundle {
  /** As `import()` of the entry would give it: a CommonJS entry's exports as `default`, an ES module's as they are. */
  mod: Record<string, unknown>;
  cacheRejected: boolean;
}

/**
 * Runs the bundle as if it were the entry module: require() of anything it left out (builtins, a
 * package it did not include) resolves from the entry's directory.
 */
export function loadBundle(dir: string, entry: string): LoadedBundle {
  const cache = readFileSync(join(dir, CODE_CACHE_FILE)); // empty when the host could not make one
  const script = bundleScript(readFileSync(join(dir, BUNDLE_FILE), 'utf8'), cache.length > 0 ? cache : undefined);
  const module = new Module(entry);
  module.filename = entry;
  module.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(dirname(entry));
  mapStackTraces(join(dir, SOURCE_MAP_FILE));
  const require = createRequire(entry);
  const wrapper = script.runInThisContext() as (...args: unknown[]) => void;
  wrapper.call(module.exports, module.exports, require, module, entry, dirname(entry));
  module.loaded = true;
  const exports = module.exports as Record<string, unknown> | undefined;
  const mod = exports?.__esModule ? exports : { default: exports };
  return { mod, cacheRejected: script.cachedDataRejected === true };
}

/** Module.wrap's prefix shares the bundle's first line, so columns there are shifted by its length. */
const WRAPPER_PREFIX = Module.wrap('').indexOf('\n');

/**
 * Stack traces through the bundle name the function's own files and lines, as a plain start would
 * (node 20 applies no source maps to vm scripts). The map is read on the first stack formatted, not
 * at start; a function or library that sets its own Error.prepareStackTrace replaces this one.
 */
function mapStackTraces(mapFile: string): void {
  let map: SourceMap | null | undefined;
  const position = (line: number, column: number): string | undefined => {
    if (map === undefined) {
      try {
        map = new SourceMap(JSON.parse(readFileSync(mapFile, 'utf8')));
      } catch {
        map = null; // no map (an older prepared start): the bundle's own positions stay
      }
    }
    const entry = map?.findEntry(line - 1, line === 1 ? column - 1 - WRAPPER_PREFIX : column - 1);
    if (!entry || !('originalSource' in entry)) return undefined;
    return `${join(GUEST_PATHS.code, entry.originalSource)}:${entry.originalLine + 1}:${entry.originalColumn + 1}`;
  };
  const at = new RegExp(`${BUNDLE_PATH.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:(\\d+):(\\d+)`);
  Error.prepareStackTrace = (error: Error, frames: NodeJS.CallSite[]) => {
    let head: string;
    try {
      head = String(error);
    } catch {
      head = 'Error';
    }
    const lines = frames.map((frame) => {
      const text = String(frame);
      return `\n    at ${text.replace(at, (whole, line: string, column: string) => position(Number(line), Number(column)) ?? whole)}`;
    });
    return head + lines.join('');
  };
}
