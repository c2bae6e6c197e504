/**
 * Test harness: runs a real Aether server (the built CLI, as a child process, on a free loopback
 * port with its own data dir) and talks to it over real HTTP.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { zipSync, strToU8 } from 'fflate';
import { launchAether, ROOT } from '../../tools/aether-process.ts';

export { ROOT };
export const TOKEN = 'test-token-0123456789abcdef';

export interface Aether {
  url: string;
  dataDir: string;
  proc: ChildProcess;
  logs: string[];
  api(method: string, p: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: any }>;
  invoke(name: string, p?: string, init?: RequestInit): Promise<Response>;
  deploy(spec: Record<string, unknown>, files: Record<string, string | Uint8Array>): Promise<any>;
  upload(name: string, files: Record<string, string | Uint8Array>): Promise<{ status: number; body: any }>;
  kill(signal?: NodeJS.Signals): Promise<void>;
  stop(): Promise<void>;
}

export function makeZip(files: Record<string, string | Uint8Array>): Uint8Array<ArrayBuffer> {
  return new Uint8Array(zipSync(Object.fromEntries(Object.entries(files).map(([k, v]) => [k, typeof v === 'string' ? strToU8(v) : v]))));
}

export async function startAether(
  opts: { role?: 'serve' | 'gateway' | 'worker'; isolation?: string; env?: Record<string, string>; dataDir?: string; root?: string } = {},
): Promise<Aether> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'aether-test-'));
  const logs: string[] = [];
  const { proc, url, kill, stop } = await launchAether({
    role: opts.role ?? 'serve',
    dataDir,
    token: TOKEN,
    isolation: opts.isolation ?? 'auto',
    // No warm pool unless a test asks for one: its instances would be background load in every test
    // file and extra sandboxes in the ones that count them. warm-pool.test.ts tests the pool.
    env: { AETHER_WARM_POOL_MB: '0', ...opts.env },
    onLine: (line) => logs.push(line),
    root: opts.root,
  });

  const a: Aether = {
    url,
    dataDir,
    proc,
    logs,
    async api(method, p, body, headers = {}) {
      const res = await fetch(url + p, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined };
    },
    invoke: (name, p = '/', init) => fetch(`${url}/functions/${name}${p}`, init),
    async upload(name, files) {
      const res = await fetch(`${url}/api/functions/${name}/code`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/zip' },
        body: makeZip(files),
      });
      return { status: res.status, body: await res.json() };
    },
    async deploy(spec, files) {
      const created = await a.api('POST', '/api/functions', { runtime: 'node', ...spec });
      if (created.status !== 201) throw new Error(`create failed: ${JSON.stringify(created.body)}`);
      const up = await a.upload(created.body.id, files);
      if (up.status !== 200) throw new Error(`upload failed: ${JSON.stringify(up.body)}`);
      return { ...created.body, ...up.body };
    },
    kill,
    async stop() {
      await stop();
      if (!opts.dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return a;
}

/** The isolation drivers that work on this host, for tests that run on each. */
export function sandboxDrivers(): string[] {
  const fromEnv = process.env.AETHER_TEST_DRIVERS;
  return fromEnv ? fromEnv.split(',') : ['bwrap', 'gvisor'];
}

export const HANDLER_CJS = `exports.handler = async (event) => ({ statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ path: event.path, method: event.method, query: event.query, body: event.body }) });`;
export const SERVER_CJS = `require('http').createServer((req, res) => { let b = ''; req.on('data', (c) => (b += c)); req.on('end', () => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ url: req.url, method: req.method, body: b, pid: process.pid })); }); }).listen(process.env.PORT || 3000);`;
