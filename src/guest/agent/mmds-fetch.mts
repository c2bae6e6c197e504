/**
 * Firecracker guests only: the init runs this once, as root in the root image, to read its instance
 * from Firecracker's MMDS (V2: a session token from `PUT /latest/api/token`, then `GET /aether` with
 * it). busybox's wget cannot PUT, and node is on the root disk anyway. Prints one line for the
 * shell, `<token> <ip/prefix> <gateway> <seed hex> <unix seconds, 0: keep the clock>`, and exits 0.
 *
 * No instance yet means a generic VM booted to be snapshotted: it says `awaiting-config` on the
 * console (the driver pauses and snapshots it then) and keeps polling; a restored copy finds its
 * instance on the next poll. Usage: mmds-fetch.mjs <console prefix> [MMDS base URL].
 */
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, fail } from './log.mjs';
import { EXIT_CONFIG, INIT_EVENTS, INIT_LOG_PREFIX, MMDS_ADDRESS, MMDS_KEY, type MmdsInstance } from './protocol.mjs';

const [prefix = INIT_LOG_PREFIX, base = `http://${MMDS_ADDRESS}`] = process.argv.slice(2);
const POLL_MS = 10;
/** Consecutive failed polls (no route, no answer) before giving up: ~10 s. */
const MAX_FAILURES = 1000;

type Instance = Pick<MmdsInstance, 'token' | 'network' | 'seed' | 'time'>;

function call(method: string, path: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, base), { method, headers, timeout: 2000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** The instance, or undefined while MMDS has none (404: Firecracker's answer for a missing path). */
async function poll(): Promise<Instance | undefined> {
  // A fresh token per poll: a template may wait in a snapshot for longer than any TTL.
  const session = await call('PUT', '/latest/api/token', { 'X-metadata-token-ttl-seconds': '60' });
  if (session.status !== 200) throw new Error(`MMDS token: ${session.status} ${session.body}`);
  const res = await call('GET', `/${MMDS_KEY}`, { 'X-metadata-token': session.body.trim(), accept: 'application/json' });
  if (res.status === 404) return undefined;
  if (res.status !== 200) throw new Error(`MMDS /${MMDS_KEY}: ${res.status} ${res.body}`);
  return JSON.parse(res.body) as Instance;
}

function valid(instance: Instance): boolean {
  const { token, network, seed, time } = instance;
  return (
    /^[0-9a-f]{16,128}$/.test(String(token)) &&
    /^[0-9a-f]{64}$/.test(String(seed)) &&
    (time === undefined || (Number.isInteger(time) && time > 0)) &&
    /^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(String(network?.ip)) &&
    /^\d{1,3}(\.\d{1,3}){3}$/.test(String(network?.gateway))
  );
}

let announced = false;
let failures = 0;
for (;;) {
  let instance: Instance | undefined;
  try {
    instance = await poll();
    failures = 0;
  } catch (err) {
    if (++failures >= MAX_FAILURES) fail(`MMDS unreachable: ${errorMessage(err)}`, EXIT_CONFIG);
  }
  if (instance) {
    if (!valid(instance)) fail(`MMDS /${MMDS_KEY} is not an instance (token, network.ip, network.gateway, seed, time)`, EXIT_CONFIG);
    const { token, network, seed, time } = instance;
    process.stdout.write(`${token} ${network.ip} ${network.gateway} ${seed} ${time ?? 0}\n`);
    break;
  }
  if (!announced && failures === 0) {
    announced = true;
    const up = readFileSync('/proc/uptime', 'utf8').split(' ')[0];
    process.stderr.write(`${prefix} ${INIT_EVENTS.awaitingConfig} up=${up}\n`);
  }
  await sleep(POLL_MS);
}
