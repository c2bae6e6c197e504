/**
 * The import graph of src/ (relative imports between our own modules), and its cycles. Run it to
 * see them: `node --import tsx tools/import-graph.ts`; test/layout.test.ts keeps the rules.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const SRC = path.resolve(import.meta.dirname, '../src');

/** Module (path relative to src/) -> the modules it imports, and the package or builtin names it imports. */
export interface ImportGraph {
  local: Map<string, string[]>;
  external: Map<string, string[]>;
}

const IMPORT = /^\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'|^\s*import\s+'([^']+)'|\bimport\(\s*'([^']+)'\s*\)/gm;

export function importGraph(root = SRC): ImportGraph {
  const local = new Map<string, string[]>();
  const external = new Map<string, string[]>();
  const files = readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => /\.m?ts$/.test(f) && !f.endsWith('.d.ts'));
  for (const file of files) {
    const text = readFileSync(path.join(root, file), 'utf8');
    const mine: string[] = [];
    const theirs: string[] = [];
    for (const match of text.matchAll(IMPORT)) {
      const spec = (match[1] ?? match[2] ?? match[3])!;
      if (!spec.startsWith('.')) {
        theirs.push(spec);
        continue;
      }
      // Sources import their compiled names: ./x.js is x.ts, ./x.mjs is x.mts.
      const target = path
        .join(path.dirname(file), spec)
        .replace(/\.js$/, '.ts')
        .replace(/\.mjs$/, '.mts');
      mine.push(target);
    }
    local.set(file, mine);
    external.set(file, theirs);
  }
  return { local, external };
}

/** Every cycle, each once, as the list of modules around it. */
export function cycles(graph: Map<string, string[]>): string[][] {
  const found = new Map<string, string[]>();
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string) => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') {
        const cycle = stack.slice(stack.indexOf(next));
        found.set([...cycle].sort().join(' '), cycle);
      } else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) visit(node);
  return [...found.values()];
}

if (import.meta.filename === process.argv[1]) {
  const found = cycles(importGraph().local);
  for (const cycle of found) console.log(`${cycle.join(' -> ')} -> ${cycle[0]}`);
  console.log(found.length ? `${found.length} import cycles` : 'no import cycles');
  process.exitCode = found.length ? 1 : 0;
}
