/**
 * Fast starts: a function's code prepared once, at deploy time, so that its instances load it faster.
 * A real app's cold start is mostly loading its node_modules (module resolution: hundreds of file
 * system calls, each costly under gVisor; then parsing and compiling). Prepared, it is one CommonJS
 * bundle (esbuild) plus V8's code cache for it (guest/agent/code-cache.mts), mounted read-only into
 * its instances, which load it instead of the entry module (guest/agent/bundle.mts).
 *
 * Only what can be bundled faithfully is: code with a native module (.node), a require() of a
 * non-literal in the function's own code, or anything esbuild warns about starts plainly, and the
 * function's status says why. Neither the bundle nor the code cache holds anything of the function's
 * configuration (env vars reach each instance through its own token) or of a run: the code is compiled,
 * never executed, here. Keyed by code, entrypoint, the agent's V8 flags (V8 checks them) and the
 * versions of node and esbuild; kept in the state dir, which a restart clears.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { build, type OutputFile, type Plugin, version as esbuildVersion } from 'esbuild';
import { errorMessage } from '../../core/errors.js';
import type { StartPrep } from '../../core/ports.js';
import type { StartMode } from '../../core/types.js';
import { agentNodeArgs } from '../../guest/agent-files.js';
import { BUNDLE_FILE, CODE_CACHE_FILE, SOURCE_MAP_FILE } from '../../guest/agent/bundle.mjs';
import { resolveEntry } from '../../guest/agent/entry.mjs';
import { AGENT_MODULES, GUEST_PATHS } from '../../guest/agent/protocol.mjs';

const run = promisify(execFile);
const RESULT_FILE = 'result.json';
/** Producing the code cache compiles the whole bundle eagerly: seconds at most, even on a loaded host. */
const CODE_CACHE_TIMEOUT_MS = 60_000;
/** A require() whose argument is not one string literal: esbuild leaves it to run time, where the bundle has no files around it. */
const DYNAMIC_REQUIRE = /\brequire\s*\(\s*(?!(['"])[^'"\n]*\1\s*\))/;
const FILE_PATHS = /\b__(dirname|filename)\b/;
/** A leading "use strict" (and comments before it) stays first: what follows it must not change strictness. */
const DIRECTIVES = /^(?:#![^\n]*\n)?(?:\s*(?:\/\/[^\n]*\n|\/\*[\s\S]*?\*\/))*\s*(['"])use strict\1;?/;

type Prepared = { mode: 'bundle'; dir: string } | { mode: 'plain'; reason: string };

export class FastStarts {
  private readonly prepared = new Map<string, Prepared>();
  private readonly pending = new Map<string, Promise<Prepared>>();
  /** One preparation at a time: a restart re-preparing every function must not starve the instances. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    /** Where prepared starts are kept (cleared at start-up). */
    private readonly dir: string,
    /** The agent directory on the host: the code cache producer lives there. */
    private readonly agentDir: string,
    private readonly nodePath: string,
  ) {}

  /** Prepares the function's start (once per key) and says how its instances will start. Never rejects. */
  async prepare(spec: StartPrep): Promise<StartMode> {
    const key = startKey(spec);
    let pending = this.pending.get(key);
    if (!pending) {
      pending = this.queue
        .then(() => this.prepareOnce(key, spec))
        .catch((err: unknown): Prepared => ({ mode: 'plain', reason: `preparing failed: ${errorMessage(err)}` }));
      this.queue = pending;
      this.pending.set(key, pending);
    }
    const prepared = await pending;
    return prepared.mode === 'bundle' ? { mode: 'bundle' } : prepared;
  }

  /** The prepared start's directory if it is ready now; otherwise undefined (a plain start), and preparing begins. */
  ready(spec: StartPrep): string | undefined {
    const prepared = this.prepared.get(startKey(spec));
    if (!prepared) void this.prepare(spec);
    return prepared?.mode === 'bundle' ? prepared.dir : undefined;
  }

  private async prepareOnce(key: string, spec: StartPrep): Promise<Prepared> {
    const dir = path.join(this.dir, key);
    let prepared = await readFile(path.join(dir, RESULT_FILE), 'utf8').then(
      (text) => JSON.parse(text) as Prepared,
      () => undefined,
    );
    if (!prepared) {
      try {
        prepared = await this.bundle(dir, spec);
      } catch (err) {
        prepared = { mode: 'plain', reason: `preparing failed: ${errorMessage(err)}` };
      }
    }
    this.prepared.set(key, prepared);
    return prepared;
  }

  /** Bundles into a staging dir, adds the code cache, then renames it into place (instances mount it from there). */
  private async bundle(dir: string, spec: StartPrep): Promise<Prepared> {
    const entry = resolveEntry(spec.codeDir, spec.entrypoint ?? null);
    const native = await findNativeModule(spec.codeDir);
    if (native) return { mode: 'plain', reason: `native module ${native}: a bundle cannot hold .node files` };
    const dynamic: string[] = [];
    let output: string;
    let sourceMap: string;
    try {
      const result = await build({
        entryPoints: [entry],
        absWorkingDir: spec.codeDir,
        bundle: true,
        platform: 'node',
        format: 'cjs',
        target: `node${process.versions.node.split('.')[0]}`,
        write: false,
        outfile: path.join(spec.codeDir, BUNDLE_FILE),
        // Stack traces name the function's own files, not the bundle (bundle.mts maps them lazily).
        sourcemap: 'external',
        sourcesContent: false,
        logLevel: 'silent',
        plugins: [asInTheCode(spec.codeDir, dynamic)],
      });
      const [warning] = result.warnings;
      if (warning)
        return {
          mode: 'plain',
          reason: `bundler: ${warning.location ? `${warning.location.file}:${warning.location.line}: ` : ''}${warning.text}`,
        };
      output = outputFile(result.outputFiles, '.js');
      sourceMap = outputFile(result.outputFiles, '.map');
    } catch (err) {
      const first = (err as { errors?: Array<{ text: string; location: { file: string; line: number } | null }> }).errors?.[0];
      return {
        mode: 'plain',
        reason: `bundler: ${first ? `${first.location ? `${first.location.file}:${first.location.line}: ` : ''}${first.text}` : errorMessage(err)}`,
      };
    }
    if (dynamic.length > 0) return { mode: 'plain', reason: `dynamic require() in ${dynamic[0]}: only literal paths can be bundled` };

    const staging = `${dir}.new`;
    await rm(staging, { recursive: true, force: true });
    await mkdir(staging, { recursive: true, mode: 0o755 });
    try {
      await chmod(staging, 0o755); // instances run as other uids
      const bundleFile = path.join(staging, BUNDLE_FILE);
      const cacheFile = path.join(staging, CODE_CACHE_FILE);
      await writeFile(bundleFile, output, { mode: 0o644 });
      await writeFile(path.join(staging, SOURCE_MAP_FILE), sourceMap, { mode: 0o644 });
      await writeFile(cacheFile, '', { mode: 0o644 }); // without a cache the bundle still saves the module resolution
      const flags = agentNodeArgs(spec.memoryMb, this.agentDir).slice(0, -1);
      await run(this.nodePath, [...flags, path.join(this.agentDir, AGENT_MODULES.codeCache), bundleFile, cacheFile], {
        timeout: CODE_CACHE_TIMEOUT_MS,
        env: {},
      }).catch(() => writeFile(cacheFile, ''));
      const prepared: Prepared = { mode: 'bundle', dir };
      await writeFile(path.join(staging, RESULT_FILE), JSON.stringify(prepared), { mode: 0o644 });
      await rm(dir, { recursive: true, force: true });
      await rename(staging, dir);
      return prepared;
    } catch (err) {
      await rm(staging, { recursive: true, force: true });
      throw err;
    }
  }
}

/** The text of esbuild's output file whose name ends with `suffix` (the bundle, its source map). */
function outputFile(files: OutputFile[], suffix: string): string {
  const file = files.find((f) => f.path.endsWith(suffix));
  if (!file) throw new Error(`esbuild wrote no ${suffix} file`);
  return file.text;
}

/** What decides the prepared start: the code, the entrypoint, the agent's V8 flags, node and esbuild. */
function startKey(spec: StartPrep): string {
  const flags = agentNodeArgs(spec.memoryMb, '').slice(0, -1);
  const parts = [spec.codeDir, spec.entrypoint ?? null, flags, process.version, esbuildVersion];
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 32);
}

async function findNativeModule(codeDir: string): Promise<string | undefined> {
  const files = await readdir(codeDir, { recursive: true });
  return files.find((file) => file.endsWith('.node'));
}

/**
 * Each module keeps the __dirname and __filename it has in the code (as the instance sees it), rather
 * than the bundle's, so that files it reads next to itself are found; and the function's own code
 * (outside node_modules) is checked for require()s that only run time can resolve.
 */
function asInTheCode(codeDir: string, dynamic: string[]): Plugin {
  return {
    name: 'aether-as-in-the-code',
    setup(b) {
      b.onLoad({ filter: /\.(c?js)$/ }, async (args) => {
        const contents = await readFile(args.path, 'utf8');
        const relative = path.relative(codeDir, args.path);
        if (!relative.split(path.sep).includes('node_modules') && DYNAMIC_REQUIRE.test(contents)) dynamic.push(relative);
        if (!FILE_PATHS.test(contents)) return { contents, loader: 'js' };
        const file = path.posix.join(GUEST_PATHS.code, relative.split(path.sep).join('/'));
        const paths = `var __filename = ${JSON.stringify(file)}, __dirname = ${JSON.stringify(path.posix.dirname(file))};`;
        const prologue = DIRECTIVES.exec(contents)?.[0] ?? '';
        // The `;` ends a directive written without one; the line numbers of the module stay as they were.
        return { contents: `${prologue};${paths}${contents.slice(prologue.length)}`, loader: 'js' };
      });
    },
  };
}
