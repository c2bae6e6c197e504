/**
 * The proxy baseline: Debian's nginx (`nginx-light`) reverse-proxying to the direct node server with
 * keep-alive upstream connections, one worker. What a lean, mature proxy costs on this machine in the
 * same run: Aether's throughput target is a ratio against it.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { freePort } from '../src/adapters/free-port.js';
import type { DirectServer } from './direct.js';
import { firstByte } from './first-byte.js';

const NGINX = '/usr/sbin/nginx';
const START_TIMEOUT_MS = 10_000;

function config(dir: string, port: number, upstream: URL): string {
  return `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream direct {
    server ${upstream.host};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://direct;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
}

/** nginx in front of `upstream`; rejects (with the reason) when nginx is not installed or does not start. */
export async function startNginx(upstream: string): Promise<DirectServer> {
  if (!fs.existsSync(NGINX)) throw new Error(`${NGINX} not found (apt-get install nginx-light, or node scripts/setup.mjs as root)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-bench-nginx-'));
  const port = await freePort();
  fs.writeFileSync(path.join(dir, 'nginx.conf'), config(dir, port, new URL(upstream)));
  const child = spawn(NGINX, ['-c', path.join(dir, 'nginx.conf'), '-p', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM'); // nginx's fast shutdown: the master takes its worker down with it
      await exited;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    const exited = once(child, 'exit').then(() => {
      throw new Error(`nginx exited: ${stderr.trim() || fs.readFileSync(path.join(dir, 'error.log'), 'utf8').trim()}`);
    });
    const { status } = await Promise.race([firstByte(port, '/', performance.now(), START_TIMEOUT_MS), exited]);
    if (status !== 200) throw new Error(`nginx in front of ${upstream} answered ${status}`);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `http://127.0.0.1:${port}`, stop };
}
