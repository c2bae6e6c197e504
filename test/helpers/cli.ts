/** Runs the built `aether` CLI as a child process, with only the environment given (no inherited tokens or URLs). */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ROOT } from '../../tools/aether-process.ts';

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
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd, env: { PATH: process.env.PATH, ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
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
