/** The baseline: the function run by plain `node -e` on a local port, no Aether, no sandbox. */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { firstByte } from './first-byte.js';
import { directSource, type Mode } from './functions.js';
import { freePort } from '../src/adapters/free-port.js';

const START_TIMEOUT_MS = 10_000;

export interface DirectServer {
  url: string;
  stop(): Promise<void>;
}

/** A port that was free a moment ago (the child binds it itself, so this cannot be race-free). */

function spawnNode(args: string[], port: number): ChildProcess {
  // Plain node: nothing preloaded through NODE_OPTIONS (the agent in a sandbox gets none either).
  const { NODE_OPTIONS: _, ...env } = process.env;
  return spawn(process.execPath, args, {
    env: { ...env, PORT: String(port) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

/** Spawn to first response byte of a fresh `node -e` server: the cold start without any sandbox. */
export function directColdStart(mode: Mode): Promise<number> {
  return spawnToFirstByte(['-e', directSource(mode)], `direct ${mode} server`);
}

/** The same for a server in a file (a real app). */
export function directFileColdStart(file: string): Promise<number> {
  return spawnToFirstByte([file], `direct ${file}`);
}

async function spawnToFirstByte(args: string[], what: string): Promise<number> {
  const port = await freePort();
  const since = performance.now();
  const child = spawnNode(args, port);
  try {
    const { ms, status } = await firstByte(port, '/', since, START_TIMEOUT_MS);
    if (status !== 200) throw new Error(`${what} answered ${status}`);
    return ms;
  } finally {
    await kill(child);
  }
}

export async function startDirect(mode: Mode): Promise<DirectServer> {
  const port = await freePort();
  const child = spawnNode(['-e', directSource(mode)], port);
  try {
    await firstByte(port, '/', performance.now(), START_TIMEOUT_MS);
  } catch (err) {
    await kill(child);
    throw err;
  }
  return { url: `http://127.0.0.1:${port}`, stop: () => kill(child) };
}
