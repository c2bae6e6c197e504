// The dashboard's build: src/dashboard (Preact, uPlot) bundled by esbuild into dist/dashboard, to be served
// as it is, offline. Assets get content hashes in their names, so that they can be cached for good, and
// index.html (never cached) names them.
import fs from 'node:fs';
import path from 'node:path';

export async function buildDashboard(root) {
  const { build } = await import('esbuild');
  const src = path.join(root, 'src/dashboard');
  const out = path.join(root, 'dist/dashboard');
  fs.rmSync(out, { recursive: true, force: true });
  const result = await build({
    entryPoints: [path.join(src, 'main.tsx')],
    outdir: path.join(out, 'assets'),
    entryNames: '[name]-[hash]',
    bundle: true,
    minify: true,
    sourcemap: 'linked',
    format: 'esm',
    platform: 'browser',
    target: ['chrome111', 'firefox111', 'safari16.4'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    tsconfig: path.join(src, 'tsconfig.json'),
    metafile: true,
    logLevel: 'warning',
  });
  const asset = (ext) => {
    const file = Object.keys(result.metafile.outputs).find((f) => f.endsWith(ext));
    return `/assets/${path.basename(file)}`;
  };
  const html = fs.readFileSync(path.join(src, 'index.html'), 'utf8').replace('{{js}}', asset('.js')).replace('{{css}}', asset('.css'));
  fs.writeFileSync(path.join(out, 'index.html'), html);
}
