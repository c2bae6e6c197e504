/**
 * Real-app functions: an Express app and a Fastify app with JSON routes, deployed with their
 * node_modules (copied from Aether's own dev dependencies), in server mode as such apps are written.
 * What they cost to start is mostly loading and compiling their modules, not the sandbox: the bench
 * compares each with the trivial server function measured in the same run.
 */
import fs from 'node:fs';
import path from 'node:path';

export type App = 'express' | 'fastify';
export const APPS: App[] = ['express', 'fastify'];

const SOURCES: Record<App, string> = {
  express: `const express = require('express');
const app = express();
app.use(express.json());
app.get('/', (req, res) => res.json({ ok: true, app: 'express' }));
app.post('/echo', (req, res) => res.json({ got: req.body }));
app.listen(Number(process.env.PORT) || 3000, '127.0.0.1');
`,
  fastify: `const fastify = require('fastify')();
fastify.get('/', async () => ({ ok: true, app: 'fastify' }));
fastify.post('/echo', async (req) => ({ got: req.body }));
fastify.listen({ port: Number(process.env.PORT) || 3000, host: '127.0.0.1' }).catch((err) => {
  console.error(err);
  process.exit(1);
});
`,
};

const ROOT = path.resolve(import.meta.dirname, '..');

/**
 * The app's files, as a zip gets them: index.js, a package.json and the node_modules it needs.
 * `salt` makes the code (and so its hash) unique: a fresh function whose code Aether has never seen.
 */
export function appFiles(app: App, salt = ''): Record<string, Uint8Array> {
  const files: Record<string, Uint8Array> = {
    'index.js': Buffer.from(`${SOURCES[app]}// ${salt}\n`),
    'package.json': Buffer.from(JSON.stringify({ name: `bench-${app}`, private: true, main: 'index.js' })),
  };
  for (const dir of dependencyDirs(app)) {
    for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile()) continue;
      const file = path.join(entry.parentPath, entry.name);
      if (file.slice(dir.length).includes(`${path.sep}node_modules${path.sep}`)) continue; // nested copies are their own entries
      files[path.relative(ROOT, file)] = fs.readFileSync(file);
    }
  }
  return files;
}

/** The app's dependency closure in Aether's node_modules (where npm put each package). */
function dependencyDirs(app: App): string[] {
  const found = new Set<string>();
  const visit = (name: string, from: string) => {
    const dir = packageDir(name, from);
    if (found.has(dir)) return;
    found.add(dir);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep, dir);
  };
  visit(app, ROOT);
  return [...found];
}

/** Node's lookup: node_modules/<name> in `from` and each directory above it. */
function packageDir(name: string, from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === path.dirname(dir)) throw new Error(`${name} is not installed (needed by ${from}): run npm install`);
  }
}

/** Writes the app to `dir` (for the direct `node` baseline). */
export function writeApp(app: App, dir: string): string {
  for (const [name, data] of Object.entries(appFiles(app))) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), data);
  }
  return path.join(dir, 'index.js');
}
