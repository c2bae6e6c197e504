/** Runs the built `aether` CLI as a child process, with only the environment given (no inherited tokens or URLs). */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { ROOT } from '../../tools/aether-process.ts';
import { until } from './wait.ts';

const CLI = path.join(ROOT, 'dist/cli/main.js');

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  cwd: string;
  /** On top of PATH; a key set to undefined is left out. */
  env: Record<string, string | undefined>;
  /** Written to its stdin, which is then closed. */
  input?: string;
}

export function runCli(args: string[], opts: CliOptions): Promise<CliRun> {
  const cli = startCli(args, opts);
  return new Promise((resolve, reject) => {
    cli.child.on('error', reject);
    cli.child.on('close', (code) => resolve({ code, stdout: cli.stdout, stderr: cli.stderr }));
  });
}

/** A CLI that keeps running (e.g. `logs -f`): its output so far, and a way to wait for some of it. */
export interface RunningCli {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  /** Resolves once stdout or stderr matches. */
  waitFor(pattern: RegExp, what: string, timeoutMs?: number): Promise<void>;
}

export function startCli(args: string[], opts: CliOptions): RunningCli {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd, env: { PATH: process.env.PATH, ...opts.env } });
  const cli: RunningCli = {
    child,
    stdout: '',
    stderr: '',
    waitFor: (pattern, what, timeoutMs = 10_000) =>
      until(async () => pattern.test(cli.stdout) || pattern.test(cli.stderr), timeoutMs, what, 20),
  };
  child.stdout.on('data', (c) => (cli.stdout += c));
  child.stderr.on('data', (c) => (cli.stderr += c));
  child.stdin.end(opts.input ?? '');
  return cli;
}

/** `ok` asserts exit 0; `fails` asserts the exit code and one `aether: ...` line on stderr, returned as `message`. */
export function cliAsserts(run: (args: string[], opts?: Partial<CliOptions>) => Promise<CliRun>) {
  return {
    async ok(args: string[], opts?: Partial<CliOptions>): Promise<CliRun> {
      const r = await run(args, opts);
      assert.equal(r.code, 0, `aether ${args.join(' ')} failed: ${r.stderr}`);
      return r;
    },
    async fails(code: number, args: string[], opts?: Partial<CliOptions>): Promise<CliRun & { message: string }> {
      const r = await run(args, opts);
      assert.equal(r.code, code, `aether ${args.join(' ')}: exit ${r.code}, stderr ${r.stderr}`);
      const lines = r.stderr.trim().split('\n');
      assert.match(lines.at(-1)!, /^aether: /);
      return { ...r, message: lines.at(-1)! };
    },
  };
}
