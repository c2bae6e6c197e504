/** `aether invoke NAME [PATH]`: one request to a function, its answer on stdout (like curl). */
import fs from 'node:fs';
import type { Command } from 'commander';
import { apiErrorOf } from '../client.js';
import { CliError, EXIT, usageError } from '../exit.js';
import { out } from '../output.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, collect } from './common.js';

interface Opts extends TargetOptions {
  request?: string;
  data?: string;
  header?: string[];
  include?: boolean;
}

export function invokeCommand(program: Command): void {
  clientCommand(program, 'invoke', 'send a request to a function and print its answer')
    .argument('<name>', 'function name or id')
    .argument('[path]', 'path and query the function sees', '/')
    .option('-X, --request <method>', 'HTTP method (default GET, or POST with -d)')
    .option('-d, --data <data>', 'request body: text, @file, or @- for stdin')
    .option('-H, --header <header>', '"Name: value" request header (repeatable)', collect)
    .option('-i, --include', 'print the status line and response headers first')
    .addHelpText(
      'after',
      '\nThe body goes to stdout as it arrives. Exit code 0 for a 1xx-3xx answer, 1 for 4xx/5xx, 3 when the function\n' +
        'does not exist. The API token is never sent to the function. -d sets Content-Type application/json when\n' +
        'the data is JSON, else application/octet-stream, unless -H gives one.',
    )
    .action(async (name: string, path: string, opts: Opts) => {
      const headers: Record<string, string> = {};
      for (const h of opts.header ?? []) {
        const colon = h.indexOf(':');
        if (colon <= 0) throw usageError(`-H ${h}: expected "Name: value"`);
        headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
      }
      const body = opts.data === undefined ? undefined : readData(opts.data);
      if (body !== undefined && !headers['content-type'])
        headers['content-type'] = isJson(body) ? 'application/json' : 'application/octet-stream';
      const method = opts.request ?? (body === undefined ? 'GET' : 'POST');

      const res = await clientFor(opts).invoke(name, path, { method, headers, body });
      if (opts.include) {
        out(`HTTP ${res.statusCode}\n`);
        for (const [k, v] of Object.entries(res.headers)) for (const one of [v].flat()) out(`${k}: ${one}\n`);
        out('\n');
      }
      if (res.statusCode < 400) {
        for await (const chunk of res.body) process.stdout.write(chunk);
        return;
      }
      // Aether's own errors (no such function, crashed, timed out, no capacity) as one line on stderr.
      const text = await res.body.text();
      const error = apiErrorOf(text);
      if (error === undefined || opts.include) out(text);
      if (res.statusCode === 404 && error?.code === 'not_found') {
        throw new CliError(EXIT.notFound, `${error.message} (\`aether ls\` lists the functions)`);
      }
      throw new CliError(EXIT.api, `${name} answered ${res.statusCode}${error ? `: ${error.message}` : ''}`);
    });
}

function readData(data: string): Buffer {
  if (!data.startsWith('@')) return Buffer.from(data);
  const file = data.slice(1);
  try {
    return file === '-' ? fs.readFileSync(0) : fs.readFileSync(file);
  } catch (err) {
    throw usageError(`-d ${data}: ${(err as Error).message}`);
  }
}

function isJson(body: Buffer): boolean {
  try {
    JSON.parse(body.toString('utf8'));
    return true;
  } catch {
    return false;
  }
}
