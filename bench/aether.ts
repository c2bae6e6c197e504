/**
 * The Aether under test, with one isolation driver: single node (`aether serve`), or a cluster of one
 * gateway and one worker on real etcd, Redis and S3. Either way the bench talks to one URL (the
 * server, or the gateway) through the same small API client.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { strToU8, zipSync } from 'fflate';
import type { Services } from '../test/helpers/services.js';
import { launchAether, type AetherProcess } from '../tools/aether-process.js';

const TOKEN = 'bench-token-0123456789abcdef';
const LOG_WAIT_MS = 2_000;
const SETTLE_TIMEOUT_MS = 15_000;
const POLL_MS = 20;

export type Setup = 'single' | 'cluster';

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
  setup: Setup;
  driver: string;
  url: string;
  port: number;
  api<T = unknown>(method: string, p: string, body?: unknown): Promise<T>;
  /** Creates the function and uploads its code (no instance starts until the first request). */
  deploy(spec: Record<string, unknown>, files: Record<string, string | Uint8Array>): Promise<FunctionInfo>;
  instances(fnId: string): Promise<Array<{ state: string }>>;
  invocations(fnId: string): Promise<Invocation[]>;
  /** How long the instance took to start, from the "instance ready" log line (waits for it briefly). */
  startMs(instanceId: string): Promise<number>;
  /** Deletes the functions and returns once their instances are gone. */
  remove(fnIds: string[]): Promise<void>;
  stop(): Promise<void>;
}

/** `aether serve` with the driver (and settings in `env`); rejects with Aether's own explanation if it refuses to start. */
export async function startSingleNode(driver: string, env?: Record<string, string>): Promise<AetherServer> {
  const ready = readyLog();
  const dataDir = sandboxDataDir();
  let server: AetherProcess;
  try {
    server = await launchAether({ role: 'serve', dataDir, token: TOKEN, isolation: driver, env, onLine: ready.onLine });
  } catch (err) {
    await stopAll([], [dataDir]);
    throw err;
  }
  const client = apiClient(server.url);
  return {
    setup: 'single',
    driver,
    ...client,
    startMs: ready.startMs,
    // A single node's DELETE returns once the instances have stopped.
    remove: async (fnIds) => void (await Promise.all(fnIds.map((id) => client.api('DELETE', `/api/functions/${id}`)))),
    stop: () => stopAll([server], [dataDir]),
  };
}

/** One worker with the driver and one gateway in front of it, on the given engines. */
export async function startCluster(driver: string, services: Services): Promise<AetherServer> {
  const ready = readyLog();
  const dirs = [sandboxDataDir(), sandboxDataDir()];
  const started: AetherProcess[] = [];
  const stop = () => stopAll(started, dirs);
  try {
    // No warm pool: the cluster is compared with a single node without one, and `remove` waits for the worker to have no sandbox.
    const env = { ...services.env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: 'bench-worker', AETHER_WARM_POOL_MB: '0' };
    started.push(await launchAether({ role: 'worker', dataDir: dirs[0]!, token: TOKEN, isolation: driver, env, onLine: ready.onLine }));
    started.push(await launchAether({ role: 'gateway', dataDir: dirs[1]!, token: TOKEN, isolation: driver, env: services.env }));
    await until(
      async () => (await apiClient(started[1]!.url).api<unknown[]>('GET', '/api/workers')).length === 1,
      'the gateway to see the worker',
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const [worker, gateway] = started as [AetherProcess, AetherProcess];
  const client = apiClient(gateway.url);
  return {
    setup: 'cluster',
    driver,
    ...client,
    startMs: ready.startMs,
    async remove(fnIds) {
      await Promise.all(fnIds.map((id) => client.api('DELETE', `/api/functions/${id}`)));
      // The worker stops them when etcd tells it, after the DELETE has returned: wait for its sandboxes to exit.
      await until(async () => sandboxPids(worker.proc.pid!).length === 0, 'the worker to stop the deleted functions');
    },
    stop,
  };
}

/** Its data dir: sandboxes run as other uids and must traverse it to their code. */
function sandboxDataDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-bench-'));
  fs.chmodSync(dir, 0o711);
  return dir;
}

async function stopAll(procs: AetherProcess[], dirs: string[]): Promise<void> {
  // The gateway (started last) first, so that it never routes to a worker already gone.
  for (const p of [...procs].reverse()) await p.stop();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
}

/** Instance start times from the "instance ready" lines of the process that runs the instances. */
function readyLog() {
  const started = new Map<string, number>();
  return {
    onLine(line: string) {
      if (!line.includes('"instance ready"')) return;
      const { instance, ms } = JSON.parse(line) as { instance: string; ms: number };
      started.set(instance, ms);
    },
    async startMs(instanceId: string): Promise<number> {
      const end = Date.now() + LOG_WAIT_MS;
      while (!started.has(instanceId)) {
        if (Date.now() > end) throw new Error(`Aether logged no "instance ready" for instance ${instanceId}`);
        await sleep(5);
      }
      return started.get(instanceId)!;
    },
  };
}

function apiClient(url: string) {
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
  return {
    url,
    port: Number(new URL(url).port),
    api,
    async deploy(spec: Record<string, unknown>, files: Record<string, string | Uint8Array>): Promise<FunctionInfo> {
      const fn = await api<FunctionInfo>('POST', '/api/functions', { runtime: 'node', ...spec });
      const zip = zipSync(
        Object.fromEntries(Object.entries(files).map(([name, data]) => [name, typeof data === 'string' ? strToU8(data) : data])),
      );
      const res = await fetch(`${url}/api/functions/${fn.id}/code`, {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/zip' },
        body: zip,
      });
      if (!res.ok) throw new Error(`upload to ${fn.name}: ${res.status} ${await res.text()}`);
      return { ...fn, ...((await res.json()) as { version: number }) };
    },
    instances: (fnId: string) => api<Array<{ state: string }>>('GET', `/api/functions/${fnId}/instances`),
    invocations: (fnId: string) => api<Invocation[]>('GET', `/api/functions/${fnId}/invocations`),
  };
}

/** The child processes of `pid` (its sandboxes), from every thread's list in /proc. */
/** The process's children but esbuild's service, which fast starts' first bundle leaves running for the next. */
function sandboxPids(pid: number): string[] {
  const tasks = fs.readdirSync(`/proc/${pid}/task`);
  const children = tasks.flatMap((t) => fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
  return children.filter((child) => !cmdline(child).includes('esbuild\0--service='));
}

function cmdline(pid: string): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return ''; // already gone
  }
}

async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  const end = Date.now() + SETTLE_TIMEOUT_MS;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${SETTLE_TIMEOUT_MS} ms waiting for ${what}`);
    await sleep(POLL_MS);
  }
}
