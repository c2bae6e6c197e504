/**
 * Real etcd, Redis and S3 (s3rver) servers for cluster tests: free loopback ports, their own data
 * dirs, stoppable and restartable on the same port and data (for the outage tests).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import S3rver from 's3rver';
import { freePort } from '../../src/adapters/free-port.js';

export { freePort };

async function waitForPort(port: number, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on ${port} within ${timeoutMs} ms`);
}

/** A server process that can be stopped (even with -9) and started again with the same port and data. */
export class ServiceProcess {
  private proc?: ChildProcess;
  private exited?: Promise<void>;
  constructor(
    readonly name: string,
    readonly port: number,
    private readonly command: string,
    private readonly args: string[],
  ) {}

  async start(): Promise<void> {
    const proc = spawn(this.command, this.args, { stdio: 'ignore' });
    this.proc = proc;
    this.exited = new Promise((r) => proc.once('exit', () => r()));
    await waitForPort(this.port, 15_000, this.name);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }
}

export interface Services {
  etcd: ServiceProcess;
  redis: ServiceProcess;
  s3: { port: number; endpoint: string; stop(): Promise<void>; start(): Promise<void> };
  env: Record<string, string>;
  stop(): Promise<void>;
}

export async function startServices(): Promise<Services> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-services-'));
  const [etcdPort, peerPort, redisPort, s3Port] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const etcdUrl = `http://127.0.0.1:${etcdPort}`;
  const etcd = new ServiceProcess('etcd', etcdPort, 'etcd', [
    '--name',
    'test',
    '--data-dir',
    path.join(dir, 'etcd'),
    '--listen-client-urls',
    etcdUrl,
    '--advertise-client-urls',
    etcdUrl,
    '--listen-peer-urls',
    `http://127.0.0.1:${peerPort}`,
    '--initial-advertise-peer-urls',
    `http://127.0.0.1:${peerPort}`,
    '--initial-cluster',
    `test=http://127.0.0.1:${peerPort}`,
    '--log-level',
    'error',
  ]);
  const redis = redisProcess(redisPort, dir);
  let s3server: S3rver | undefined;
  const s3 = {
    port: s3Port,
    endpoint: `http://127.0.0.1:${s3Port}`,
    async start() {
      s3server = new S3rver({ port: s3Port, address: '127.0.0.1', directory: path.join(dir, 's3'), silent: true });
      await s3server.run();
    },
    async stop() {
      await s3server?.close();
      s3server = undefined;
    },
  };
  await Promise.all([etcd.start(), redis.start(), s3.start()]);
  return {
    etcd,
    redis,
    s3,
    env: {
      ETCD_ENDPOINTS: etcdUrl,
      REDIS_ADDR: `127.0.0.1:${redisPort}`,
      MINIO_ENDPOINT: s3.endpoint,
      MINIO_ACCESS_KEY: 'S3RVER',
      MINIO_SECRET_KEY: 'S3RVER',
      MINIO_BUCKET: 'function-code',
    },
    async stop() {
      await Promise.all([etcd.stop(), redis.stop(), s3.stop()]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A redis-server on loopback without persistence (its dump, if any, goes to `dir`). */
export function redisProcess(port: number, dir?: string): ServiceProcess {
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
  return new ServiceProcess('redis', port, 'redis-server', dir ? [...args, '--dir', dir] : args);
}
