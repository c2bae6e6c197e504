/**
 * The web dashboard at `/`: the files esbuild built into dist/dashboard (scripts/lib/dashboard.mjs),
 * read once at start-up and served from memory, gzipped where the client takes it. No token for
 * the files themselves: the page asks the API for data with the token the person logs in with.
 * Assets have content hashes in their names and are cached for good; index.html is never cached.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { notFound } from '../../core/errors.js';
import type { ZodTypeProvider } from './openapi.js';

/** dist/dashboard: this module is at the same depth in src/ and dist/, so this works under tsx and when built. */
export const DASHBOARD_DIR = path.resolve(fileURLToPath(import.meta.url), '../../../../dist/dashboard');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** The page loads its own script and style and talks to this origin only. */
const PAGE_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

interface Asset {
  type: string;
  body: Buffer;
  gzipped?: Buffer;
  etag: string;
}

function load(file: string): Asset {
  const body = fs.readFileSync(file);
  const gzipped = gzipSync(body, { level: 9 });
  return {
    type: TYPES[path.extname(file)] ?? 'application/octet-stream',
    body,
    gzipped: gzipped.length < body.length ? gzipped : undefined,
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  };
}

/** The built dashboard's files by URL path; empty when it was not built. */
function loadDashboard(dir: string): Map<string, Asset> {
  const files = new Map<string, Asset>();
  if (!fs.existsSync(path.join(dir, 'index.html'))) return files;
  files.set('/', load(path.join(dir, 'index.html')));
  for (const name of fs.readdirSync(path.join(dir, 'assets'))) files.set(`/assets/${name}`, load(path.join(dir, 'assets', name)));
  return files;
}

function send(req: FastifyRequest, reply: FastifyReply, asset: Asset, cacheControl: string) {
  reply.headers({ ...PAGE_HEADERS, 'content-type': asset.type, 'cache-control': cacheControl, etag: asset.etag, vary: 'accept-encoding' });
  if (req.headers['if-none-match'] === asset.etag) return reply.status(304).send();
  if (asset.gzipped && /\bgzip\b/.test(req.headers['accept-encoding'] ?? '')) {
    return reply.header('content-encoding', 'gzip').send(asset.gzipped);
  }
  return reply.send(asset.body);
}

export function dashboardRoutes(scope: FastifyInstance, dir = DASHBOARD_DIR): void {
  const app = scope.withTypeProvider<ZodTypeProvider>();
  const files = loadDashboard(dir);
  const tags = ['dashboard'];
  app.get(
    '/',
    {
      schema: {
        summary: 'The web dashboard (no token for the page; it logs in to the API)',
        tags,
        response: { 200: { description: 'the dashboard page', content: { 'text/html': { schema: z.string() } } } },
      },
    },
    async (req, reply) => {
      const page = files.get('/');
      if (!page) throw notFound(`the dashboard is not built (no ${dir}): run npm run build`);
      return send(req, reply, page, 'no-cache');
    },
  );
  app.get(
    '/assets/:file',
    {
      schema: {
        summary: "The dashboard's scripts and styles (content-hashed names, cached for good)",
        tags,
        params: z.strictObject({ file: z.string().min(1).max(200) }),
        response: { 200: { description: 'a script, a style sheet or a source map', content: { '*/*': { schema: z.string() } } } },
      },
    },
    async (req, reply) => {
      const asset = files.get(`/assets/${req.params.file}`);
      if (!asset) throw notFound(`no dashboard asset ${req.params.file}: reload the page (the dashboard may have been updated)`);
      return send(req, reply, asset, 'public, max-age=31536000, immutable');
    },
  );
}
