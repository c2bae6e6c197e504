/** `aether ls`, `aether describe NAME`, `aether rm NAME`: the function records. */
import type { Command } from 'commander';
import type { FunctionRecord, InstanceInfo } from '../../core/types.js';
import { fnPath } from '../client.js';
import { ago, bytes, duration, keyValues, out, printJson, table } from '../output.js';
import { clientCommand, clientFor, type JsonOption, jsonOption } from './common.js';
import type { TargetOptions } from '../target.js';

type Opts = TargetOptions & JsonOption;

/** Fields a newer server may add to a record (function status, issue 8); shown when present. */
type Described = FunctionRecord & { status?: string; last_error?: string | null; failing_since?: string | null };

export function functionCommands(program: Command): void {
  jsonOption(clientCommand(program, 'ls', 'list the functions')).action(async (opts: Opts) => {
    const fns = await clientFor(opts).json<Described[]>('GET', '/api/functions');
    if (opts.json) return printJson(fns);
    out(
      table(
        ['NAME', 'STATUS', 'VERSION', 'CODE', 'MEMORY', 'TIMEOUT', 'UPDATED'],
        fns.map((f) => [
          f.name,
          statusOf(f),
          f.version,
          bytes(f.code_size),
          `${f.memory_mb} MB`,
          duration(f.timeout_ms),
          ago(f.updated_at),
        ]),
        'No functions yet: `aether deploy DIR` creates one.',
      ),
    );
  });

  jsonOption(
    clientCommand(program, 'describe', "a function's configuration, code and instances").argument('<name>', 'function name or id'),
  ).action(async (name: string, opts: Opts) => {
    const client = clientFor(opts);
    const [fn, instances] = await Promise.all([
      client.json<Described>('GET', fnPath(name)),
      client.json<InstanceInfo[]>('GET', fnPath(name, '/instances')),
    ]);
    if (opts.json) return printJson(fn);
    const envNames = Object.keys(fn.env_vars).sort();
    const byState = new Map<string, number>();
    for (const i of instances) byState.set(i.state, (byState.get(i.state) ?? 0) + 1);
    const states = [...byState].map(([state, n]) => `${n} ${state}`);
    out(
      keyValues([
        ['name', fn.name],
        ['id', fn.id],
        ['status', statusOf(fn)],
        ...(fn.last_error ? ([['last error', fn.last_error]] as [string, string][]) : []),
        ['url', `${client.url}/functions/${fn.name}/`],
        ['runtime', fn.runtime],
        ['entrypoint', fn.entrypoint ?? '(found in the code)'],
        ['version', fn.version],
        ['code', fn.code_hash ? `${bytes(fn.code_size)}, sha256 ${fn.code_hash}` : 'none yet: `aether deploy DIR`'],
        ['memory', `${fn.memory_mb} MB`],
        ['vcpu', fn.vcpu],
        ['timeout', duration(fn.timeout_ms)],
        ['concurrency', `${fn.concurrency} requests per instance`],
        ['instances', `${fn.min_instances} to ${fn.max_instances}, idle ones stop after ${fn.idle_timeout_s} s`],
        ['env vars', envNames.length ? `${envNames.join(', ')} (values hidden)` : 'none'],
        ['running', instances.length ? states.join(', ') : 'no instances (scaled to zero)'],
        ['created', `${fn.created_at} (${ago(fn.created_at)})`],
        ['updated', `${fn.updated_at} (${ago(fn.updated_at)})`],
      ]),
    );
  });

  clientCommand(program, 'rm', 'delete a function: stops its instances and removes its code')
    .argument('<name>', 'function name or id')
    .action(async (name: string, opts: TargetOptions) => {
      await clientFor(opts).json('DELETE', fnPath(name));
      out(`Deleted ${name}\n`);
    });
}

function statusOf(f: Described): string {
  if (f.status) return f.status;
  return f.code_hash ? 'deployed' : 'no code';
}
