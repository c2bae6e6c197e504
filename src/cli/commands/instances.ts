/** `aether instances NAME`: what runs a function right now. */
import type { Command } from 'commander';
import type { InstanceInfo } from '../../core/types.js';
import { fnPath } from '../client.js';
import { ago, out, printJson, table } from '../output.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, type JsonOption, jsonOption } from './common.js';

export function instancesCommand(program: Command): void {
  jsonOption(clientCommand(program, 'instances', "a function's running instances").argument('<name>', 'function name or id')).action(
    async (name: string, opts: TargetOptions & JsonOption) => {
      const list = await clientFor(opts).json<InstanceInfo[]>('GET', fnPath(name, '/instances'));
      if (opts.json) return printJson(list);
      const cluster = list.some((i) => i.worker_id);
      out(
        table(
          ['ID', 'STATE', 'VERSION', 'STARTED', 'IN FLIGHT', 'SERVED', ...(cluster ? ['WORKER'] : [])],
          list.map((i) => [i.id, i.state, i.version, ago(i.started_at), i.in_flight, i.served, ...(cluster ? [i.worker_id] : [])]),
          `No instances: ${name} is scaled to zero (the next request starts one).`,
        ),
      );
    },
  );
}
