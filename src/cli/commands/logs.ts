/**
 * `aether logs NAME [-f]`: what a function printed and what happened to its instances, from
 * `GET /api/functions/{id}/logs` (filters: since, until, limit, instance, request_id, stream), and with
 * -f its Server-Sent Events stream (`?follow=1`) until interrupted.
 */
import type { Command } from 'commander';
import { createParser } from 'eventsource-parser';
import parseDuration from 'parse-duration';
import { fnPath } from '../client.js';
import { CliError, EXIT, usageError } from '../exit.js';
import { out } from '../output.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, integer, type JsonOption, jsonOption } from './common.js';

interface Opts extends TargetOptions, JsonOption {
  follow?: boolean;
  since?: string;
  until?: string;
  limit?: number;
  instance?: string;
  requestId?: string;
  stream?: string;
}

/** One log line as the API returns it. */
export interface LogLine {
  time: string;
  instance_id?: string | null;
  version?: number;
  stream: string;
  request_id?: string | null;
  message: string;
}

export function logsCommand(program: Command): void {
  jsonOption(
    clientCommand(program, 'logs', "a function's output and its instances' events (started, crashed, out of memory, timed out)")
      .argument('<name>', 'function name or id')
      .option('-f, --follow', 'keep streaming new lines until Ctrl-C')
      .option('--since <when>', 'from this long ago (10m, 2h, 1d) or this time (ISO 8601)')
      .option('--until <when>', 'up to this long ago or this time')
      .option('-n, --limit <n>', 'at most this many lines (the latest)', integer(1, 1000))
      .option('--instance <id>', 'only this instance')
      .option('--request-id <id>', 'only lines written while handling this request')
      .option('--stream <stream>', "only stdout, stderr or platform (the instances' events)"),
  )
    .addHelpText('after', '\nWith --json, one JSON object per line (NDJSON).')
    .action(async (name: string, opts: Opts) => {
      const query = new URLSearchParams();
      if (opts.since) query.set('since', when(opts.since, '--since'));
      if (opts.until) query.set('until', when(opts.until, '--until'));
      if (opts.limit) query.set('limit', String(opts.limit));
      if (opts.instance) query.set('instance', opts.instance);
      if (opts.requestId) query.set('request_id', opts.requestId);
      if (opts.stream) query.set('stream', opts.stream);
      const print = (line: LogLine) => out(opts.json ? `${JSON.stringify(line)}\n` : format(line));
      const client = clientFor(opts);

      if (!opts.follow) {
        const { lines } = await client.json<{ lines: LogLine[] }>('GET', fnPath(name, `/logs?${query}`));
        lines.forEach(print);
        return;
      }
      query.set('follow', '1');
      const res = await client.stream('GET', fnPath(name, `/logs?${query}`), { headers: { accept: 'text/event-stream' }, noTimeout: true });
      const parser = createParser({ onEvent: (event) => print(JSON.parse(event.data) as LogLine) });
      for await (const chunk of res.body) parser.feed(chunk.toString('utf8'));
      throw new CliError(EXIT.unreachable, `${client.url} closed the log stream: run \`aether logs -f ${name}\` again`);
    });
}

/** A time for the API: "10m" means 10 minutes ago; anything else must be a date. */
export function when(value: string, flag: string, now = Date.now()): string {
  const ago = /^\d+(\.\d+)?\s*[a-z]+$/i.test(value) ? parseDuration(value) : null;
  if (typeof ago === 'number') return new Date(now - ago).toISOString();
  const at = Date.parse(value);
  if (Number.isNaN(at)) throw usageError(`${flag} ${value}: expected a duration such as 10m or 2h, or a time such as 2026-12-01T09:30:00Z`);
  return new Date(at).toISOString();
}

function format(line: LogLine): string {
  const instance = line.instance_id ? line.instance_id.slice(0, 8) : '-';
  return `${line.time} ${instance} ${line.stream.padEnd(6)} ${line.message}\n`;
}
