/**
 * `aether logs NAME [-f]`: what a function printed and what happened to its instances, from
 * `GET /api/functions/{id}/logs` (filters: since, until, limit, instance, request_id, stream), and with
 * -f its Server-Sent Events stream (`?follow=1`) until interrupted. Times go to the server as given
 * (`10m`, a timestamp or epoch ms), so "10 minutes ago" is by the server's clock.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import { createParser } from 'eventsource-parser';
import type { LogLine, LogPage } from '../../core/logs.js';
import { type Client, fnPath } from '../client.js';
import { CliError, EXIT } from '../exit.js';
import { note, out } from '../output.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, integer, type JsonOption, jsonOption } from './common.js';

interface Opts extends TargetOptions, JsonOption {
  follow?: boolean;
  since?: string;
  until?: string;
  limit?: number;
  before?: string;
  instance?: string;
  requestId?: string;
  stream?: string;
}

/** A dropped follow stream (server restart, a proxy's idle timeout) is resumed this often before giving up. */
const FOLLOW_RETRIES = 5;
const FOLLOW_RETRY_MS = 1000;

export function logsCommand(program: Command): void {
  jsonOption(
    clientCommand(program, 'logs', "a function's output and its instances' events (started, crashed, out of memory, timed out)")
      .argument('<name>', 'function name or id')
      .option('-f, --follow', 'keep printing new lines, from every instance, until Ctrl-C')
      .option('--since <when>', 'from this long ago (30s, 10m, 2h, 7d) or this time (ISO 8601, epoch ms)')
      .option('--until <when>', 'up to this long ago or this time')
      .option('-n, --limit <n>', 'at most this many lines, the latest (default 100)', integer(1, 1000))
      .option('--before <cursor>', 'the page before this one (the cursor a previous answer named)')
      .option('--instance <id>', 'only this instance')
      .option('--request-id <id>', 'only lines written while handling this request (handler mode)')
      .option('--stream <stream>', "only stdout, stderr or platform (the instances' events)"),
  )
    .addHelpText('after', '\nLines are oldest first. With --json, one JSON object per line (NDJSON).')
    .action(async (name: string, opts: Opts) => {
      const query = new URLSearchParams();
      const params = { since: opts.since, until: opts.until, limit: opts.limit, before: opts.before };
      for (const [key, value] of Object.entries({ ...params, instance: opts.instance, request_id: opts.requestId, stream: opts.stream })) {
        if (value !== undefined) query.set(key, String(value));
      }
      const print = (line: LogLine) => out(opts.json ? `${JSON.stringify(line)}\n` : format(line));
      const client = clientFor(opts);
      if (opts.follow) return follow(client, name, query, print);

      const page = await client.json<LogPage>('GET', fnPath(name, `/logs?${query}`));
      page.lines.forEach(print);
      if (page.before) note(`Older lines: aether logs ${name} --before ${page.before}`);
    });
}

/** Prints new lines as they come; a dropped stream resumes after the last line seen (Last-Event-ID). */
async function follow(client: Client, name: string, query: URLSearchParams, print: (line: LogLine) => void): Promise<never> {
  query.set('follow', '1');
  let lastId: string | undefined;
  for (let failures = 0; ; ) {
    try {
      const res = await client.stream('GET', fnPath(name, `/logs?${query}`), {
        headers: { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) },
        noTimeout: true,
      });
      if (failures === 0 && lastId === undefined) note(`Following ${name} (Ctrl-C stops)`);
      failures = 0;
      const parser = createParser({
        onEvent: (event) => {
          if (event.id) lastId = event.id;
          print(JSON.parse(event.data) as LogLine);
        },
      });
      const text = new TextDecoder(); // a character may be split between chunks
      try {
        for await (const chunk of res.body) parser.feed(text.decode(chunk, { stream: true }));
      } catch {} // cut off mid-stream: resume below
    } catch (err) {
      if (!(err instanceof CliError && err.exitCode === EXIT.unreachable) || ++failures > FOLLOW_RETRIES) throw err;
    }
    await sleep(FOLLOW_RETRY_MS);
  }
}

function format(line: LogLine): string {
  const instance = line.instance_id ? line.instance_id.slice(0, 8) : '-';
  return `${line.time} ${instance} ${line.stream.padEnd(8)} ${line.message}\n`;
}
