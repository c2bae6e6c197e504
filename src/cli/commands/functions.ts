/** `aether ls`, `aether describe NAME`, `aether rm NAME`: the functions, their state, settings, versions and aliases. */
import type { Command } from 'commander';
import type { FunctionView, InstanceInfo } from '../../core/types.js';
import type { AliasRecord } from '../../core/types.js';
import { type Client, fnPath } from '../client.js';
import { ago, bytes, duration, keyValues, out, printJson, table } from '../output.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, type JsonOption, jsonOption } from './common.js';

type Opts = TargetOptions & JsonOption;

export function functionCommands(program: Command): void {
  jsonOption(clientCommand(program, 'ls', 'list the functions: state, instances, version, settings')).action(async (opts: Opts) => {
    const client = clientFor(opts);
    const fns = await client.json<FunctionView[]>('GET', '/api/functions');
    if (opts.json) return printJson(fns);
    const running = await Promise.all(fns.map((f) => instancesOf(client, f)));
    out(
      table(
        ['NAME', 'STATE', 'INSTANCES', 'VERSION', 'CODE', 'MEMORY', 'TIMEOUT', 'UPDATED'],
        fns.map((f, i) => [
          f.name,
          stateOf(f, running[i]!),
          running[i]!.length,
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
    clientCommand(program, 'describe', "a function's state, configuration, code and instances").argument('<name>', 'function name or id'),
  ).action(async (name: string, opts: Opts) => {
    const client = clientFor(opts);
    const fn = await client.json<FunctionView>('GET', fnPath(name));
    if (opts.json) return printJson(fn);
    const [instances, versions, aliases] = await Promise.all([
      instancesOf(client, fn),
      client.json<{ version: number }[]>('GET', fnPath(fn.id, '/versions')),
      client.json<AliasRecord[]>('GET', fnPath(fn.id, '/aliases')),
    ]);
    const envNames = Object.keys(fn.env_vars).sort();
    const byState = new Map<string, number>();
    for (const i of instances) byState.set(i.state, (byState.get(i.state) ?? 0) + 1);
    const failing: [string, string][] =
      fn.status === 'failing' ? [['last error', `${fn.last_error} (failing since ${fn.failing_since})`]] : [];
    out(
      keyValues([
        ['name', fn.name],
        ['id', fn.id],
        ['state', stateOf(fn, instances)],
        ...failing,
        ['url', `${client.url}/functions/${fn.name}/`],
        ['runtime', fn.runtime],
        ['entrypoint', fn.entrypoint ?? '(found in the code)'],
        ['version', fn.version],
        ['versions', versions.length ? `${versions.map((v) => v.version).join(', ')} (kept, newest first)` : 'none yet'],
        ['aliases', aliases.length ? aliases.map(describeAlias).join('; ') : 'none'],
        ['code', fn.code_hash ? `${bytes(fn.code_size)}, sha256 ${fn.code_hash}` : 'none yet: `aether deploy DIR`'],
        ['memory', `${fn.memory_mb} MB`],
        ['vcpu', fn.vcpu],
        ['timeout', duration(fn.timeout_ms)],
        ['concurrency', `${fn.concurrency} requests per instance`],
        ['instances', `${fn.min_instances} to ${fn.max_instances}, the last one stops after ${fn.idle_timeout_s} s idle`],
        ['running', instances.length ? [...byState].map(([state, n]) => `${n} ${state}`).join(', ') : 'none'],
        ['env vars', envNames.length ? `${envNames.join(', ')} (values hidden)` : 'none'],
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

const instancesOf = (client: Client, fn: FunctionView) => client.json<InstanceInfo[]>('GET', fnPath(fn.id, '/instances'));

/** `prod -> 7`, or with a canary `prod -> 7 (90 %), 8 (10 %)`. */
function describeAlias(a: AliasRecord): string {
  const extra = Object.entries(a.additional_version_weights);
  if (extra.length === 0) return `${a.name} -> ${a.version}`;
  const pct = (w: number) => `${Math.round(w * 1000) / 10} %`;
  const rest = 1 - extra.reduce((sum, [, w]) => sum + w, 0);
  return `${a.name} -> ${[`${a.version} (${pct(rest)})`, ...extra.map(([v, w]) => `${v} (${pct(w)})`)].join(', ')}`;
}

/** One word for people: no code, failing, ready, starting, or scaled to zero. */
function stateOf(fn: FunctionView, instances: InstanceInfo[]): string {
  if (!fn.code_hash) return 'no code';
  if (fn.status === 'failing') return 'failing';
  if (instances.some((i) => i.state === 'ready')) return 'ready';
  if (instances.some((i) => i.state === 'starting')) return 'starting';
  return 'scaled to zero';
}
