/** What every client command shares: where to find Aether (--url/--token) and --json. */
import { type Command, InvalidArgumentError } from 'commander';
import { Client } from '../client.js';
import { resolveTarget, type TargetOptions } from '../target.js';

export interface JsonOption {
  json?: boolean;
}

/** A subcommand that talks to an Aether server over its HTTP API. */
export function clientCommand(program: Command, spec: string, description: string): Command {
  return program
    .command(spec)
    .description(description)
    .option('--url <url>', 'the Aether server or gateway (AETHER_URL; default: the saved login, else http://127.0.0.1:8080)')
    .option('--token <token>', "API token (AETHER_TOKEN; default: the saved login, else a local server's .aether/api-token)");
}

export const jsonOption = (cmd: Command) => cmd.option('--json', "print the API's JSON instead of a table (for scripts)");

export const clientFor = (opts: TargetOptions) => new Client(resolveTarget(opts));

/** Commander argument parser for a whole number in [min, max]; a bad one is a usage error (exit 2). */
export function integer(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(
        max === Number.MAX_SAFE_INTEGER ? `expected a whole number of at least ${min}` : `expected a whole number from ${min} to ${max}`,
      );
    }
    return n;
  };
}

/** Commander collector for repeatable options (`--env A=1 --env B=2`). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];
