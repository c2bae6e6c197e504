/** `aether invocations NAME`: the latest requests to a function, newest first. */
import type { Command } from 'commander';
import type { InvocationRecord } from '../../core/types.js';
import { fnPath } from '../client.js';
import { ago, duration, note, out, printJson, table } from '../output.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, integer, type JsonOption, jsonOption } from './common.js';

/** The API's page size when no --limit is given. */
const DEFAULT_PAGE = 100;

interface Opts extends TargetOptions, JsonOption {
  limit?: number;
  before?: string;
  errors?: boolean;
  cold?: boolean;
}

export function invocationsCommand(program: Command): void {
  jsonOption(
    clientCommand(program, 'invocations', 'the latest invocations of a function: status, duration, cold start, error')
      .argument('<name>', 'function name or id')
      .option('-n, --limit <n>', 'how many (newest first)', integer(1, 1000))
      .option('--before <id>', 'the next page: invocations older than this record id (the last one shown)')
      .option('--errors', 'only failed ones (an error, or a 5xx answer)')
      .option('--cold', 'only cold starts'),
  ).action(async (name: string, opts: Opts) => {
    const query = new URLSearchParams();
    if (opts.limit) query.set('limit', String(opts.limit));
    if (opts.before) query.set('before', opts.before);
    if (opts.errors) query.set('status', 'error');
    if (opts.cold) query.set('cold_start', 'true');
    const qs = query.size ? `?${query}` : '';
    const list = await clientFor(opts).json<InvocationRecord[]>('GET', fnPath(name, `/invocations${qs}`));
    if (opts.json) return printJson(list);
    out(
      table(
        ['WHEN', 'STATUS', 'DURATION', 'COLD', 'INSTANCE', 'REQUEST ID', 'ERROR'],
        list.map((i) => [
          ago(i.started_at),
          i.status,
          duration(i.duration_ms),
          i.cold_start ? 'cold' : '',
          i.instance_id,
          i.request_id,
          i.error,
        ]),
        `No invocations of ${name} yet: \`aether invoke ${name}\` sends one.`,
      ),
    );
    const last = list.at(-1);
    if (last && list.length === (opts.limit ?? DEFAULT_PAGE)) note(`Older ones: aether invocations ${name} --before ${last.id}`);
  });
}
