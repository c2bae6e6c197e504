/**
 * The Aether under test: the built CLI (`dist/cli/main.js serve`) as a child process on a free
 * loopback port with its own data dir, one isolation driver, and a small client for its API.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { strToU8, zipSync } from 'fflate';

const ROOT = path.resolve(import.meta.dirname, '..');
const TOKEN = 'bench-token-0123456789abcdef';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
const LOG_WAIT_MS = 2_000;

export interface FunctionInfo {
  id: string;
  name: string;
  version: number;
}

export interface Invocation {
  cold_start: boolean;
  duration_ms: number;
  status: number;
  instance_id: string | null;
}

export interface AetherServer {
  url: string;
  port: number;
  api<T = unknown>(method: string, p: string, body?: unknown): Promise<T>;
  /** Creates the function and uploads its code (no instance starts until the first request). */
  deploy(spec: Record<string, unknown>, files: Record<string, string>): Promise<FunctionInfo>;
  instances(fnId: string): Promise<Array<{ state: string }>>;
  invocations(fnId: string): Promise<Invocation[]>;
  /** How long the instance took to start, from Aether's "instance ready" log line (waits for it briefly). */
  startMs(instanceId: string): Promise<number>;
  stop(): Promise<void>;
}

/** Starts Aether with the driver; rejects with Aether's own explanation if it refuses to start. */
export async function startAether(isolation: string): Promise<AetherServer> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-bench-'));
  fs.chmodSync(dataDir, 0o711); // sandboxes run as other uids and must traverse to their code
  const proc = spawn(process.execPath, [path.join(ROOT, 'dist/cli/main.js'), 'serve'], {
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      AETHER_DATA_DIR: dataDir,
      AETHER_API_TOKEN: TOKEN,
      AETHER_ISOLATION: isolation,
      AETHER_LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = once(proc, 'exit');
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  };

  const started = new Map<string, number>();
  let url: string;
  try {
    url = await serving(proc.stdout!, proc.stderr!, exited, (line) => {
      if (line.includes('"instance ready"')) {
        const { instance, ms } = JSON.parse(line) as { instance: string; ms: number };
        started.set(instance, ms);
      }
    });
  } catch (err) {
    await stop();
    throw err;
  }
  const headers = { authorization: `Bearer ${TOKEN}` };

  const api = async <T>(method: string, p: string, body?: unknown): Promise<T> => {
    const res = await fetch(url + p, {
      method,
      headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return (text ? JSON.parse(text) : undefined) as T;
  };
  const instances = (fnId: string) => api<Array<{ state: string }>>('GET', `/api/functions/${fnId}/instances`);

  return {
    url,
    port: Number(new URL(url).port),
    api,
    async deploy(spec, files) {
      const fn = await api<FunctionInfo>('POST', '/api/functions', { runtime: 'node', ...spec });
      const zip = zipSync(Object.fromEntries(Object.entries(files).map(([name, text]) => [name, strToU8(text)])));
      const res = await fetch(`${url}/api/functions/${fn.id}/code`, { method: 'POST', headers: { ...headers, 'content-type': 'application/zip' }, body: zip });
      if (!res.ok) throw new Error(`upload to ${fn.name}: ${res.status} ${await res.text()}`);
      return { ...fn, ...((await res.json()) as { version: number }) };
    },
    instances,
    invocations: (fnId) => api<Invocation[]>('GET', `/api/functions/${fnId}/invocations`),
    async startMs(instanceId) {
      const end = Date.now() + LOG_WAIT_MS;
      while (!started.has(instanceId)) {
        if (Date.now() > end) throw new Error(`Aether logged no "instance ready" for instance ${instanceId}`);
        await sleep(5);
      }
      return started.get(instanceId)!;
    },
    stop,
  };
}

/**
 * Reads the JSON log until the "aether is serving" line, and keeps reading it afterwards (a full pipe
 * would block the server), handing each line to onLine. An exit before that line rejects with what
 * Aether said on stderr.
 */
function serving(stdout: NodeJS.ReadableStream, stderr: NodeJS.ReadableStream, exited: Promise<unknown>, onLine: (line: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not serving within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    let buf = '';
    let errors = '';
    stdout.setEncoding('utf8');
    stderr.setEncoding('utf8');
    stderr.on('data', (chunk: string) => (errors = (errors + chunk).slice(-4096)));
    stdout.on('data', (chunk: string) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        onLine(line);
        if (line.includes('"aether is serving"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line).url.replace('0.0.0.0', '127.0.0.1'));
        }
      }
      if (buf.length > 1 << 20) buf = ''; // only whole lines matter; never grow without bound
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(errors.trim().split('\n').pop() || 'exited before serving'));
    });
  });
}
