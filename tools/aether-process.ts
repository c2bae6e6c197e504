/**
 * The built CLI (`dist/cli/main.js serve|gateway|worker`) as a child process on a free loopback port,
 * ready once it logs "aether is serving": the one launcher behind the test harness and the benchmark.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '..');
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
/** How much of its output a failed start quotes. */
const TAIL_LINES = 20;

export type Role = 'serve' | 'gateway' | 'worker';

export interface LaunchOptions {
  role: Role;
  dataDir: string;
  token: string;
  isolation: string;
  /** On top of the defaults (and of this process's environment). */
  env?: Record<string, string>;
  /** Each line Aether writes, stdout and stderr, for as long as it runs. */
  onLine?: (line: string) => void;
  /** The installation to run (its root, holding dist/): default this checkout. */
  root?: string;
}

export interface AetherProcess {
  proc: ChildProcess;
  /** Where it serves, on the loopback address. */
  url: string;
  exited: Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** SIGTERM, and SIGKILL if it has not exited within 10 s. */
  stop(): Promise<void>;
}

/** Starts Aether; rejects (with its last words) if it exits or stays silent before serving. */
export async function launchAether(opts: LaunchOptions): Promise<AetherProcess> {
  const proc = spawn(process.execPath, [path.join(opts.root ?? ROOT, 'dist/cli/main.js'), opts.role], {
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      AETHER_DATA_DIR: opts.dataDir,
      AETHER_API_TOKEN: opts.token,
      AETHER_ISOLATION: opts.isolation,
      AETHER_LOG_LEVEL: 'info',
      ...opts.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const running = () => proc.exitCode === null && proc.signalCode === null;
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    if (running()) proc.kill(signal);
    await exited;
  };
  const stop = async () => {
    if (!running()) return;
    const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await kill('SIGTERM');
    clearTimeout(timer);
  };

  const tail: string[] = [];
  let serving: ((url: string) => void) | undefined;
  const url = new Promise<string>((resolve) => (serving = resolve));
  const onLine = (line: string) => {
    opts.onLine?.(line);
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
    if (line.includes('"aether is serving"')) serving?.(JSON.parse(line).url.replace('0.0.0.0', '127.0.0.1'));
  };
  // Both pipes are read for the process's whole life: a full pipe would block it.
  readLines(proc.stdout!, onLine);
  readLines(proc.stderr!, onLine);

  let timer: NodeJS.Timeout | undefined;
  const failed = new Promise<never>((_, reject) => {
    const fail = (why: string) => reject(new Error(`aether ${opts.role} ${why}:\n${tail.join('\n')}`));
    timer = setTimeout(() => fail(`was not serving within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    // 'close' rather than 'exit': by then its last words have been read.
    proc.once('close', (code, signal) => fail(`exited with ${code ?? signal} before serving`));
  });
  failed.catch(() => {}); // only awaited until serving; an exit after that is the caller's business
  try {
    return { proc, url: await Promise.race([url, failed]), exited, kill, stop };
  } catch (err) {
    await kill();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function readLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
  stream.on('end', () => buf && onLine(buf));
}
