/**
 * No isolation at all: the agent runs as a plain child process of the host, with the host's user,
 * filesystem and network. For debugging only (the caller warns); server-mode functions listen on
 * the host's own ports here.
 */
import { resolve } from 'node:path';
import type { InstanceHandle, InstanceSpec, IsolationDriver } from '../../../core/ports.js';
import { agentDir, agentNodeArgs } from '../../../guest/agent-files.js';
import { AGENT_ENV } from '../../../guest/agent/protocol.mjs';
import { agentConfig, openChannel } from '../channel.js';
import { launchInstance } from '../instance/instance.js';
import { agentProcess } from './host.js';

export interface NoIsolationOptions {
  /** Where the per-instance channel directories are created. */
  runDir: string;
}

export class NoIsolationDriver implements IsolationDriver {
  readonly name = 'none';
  private readonly agent = agentDir();

  constructor(private readonly options: NoIsolationOptions) {}

  async start(spec: InstanceSpec): Promise<InstanceHandle> {
    const channel = await openChannel({ runDir: this.options.runDir, instanceId: spec.instanceId, config: agentConfig(spec) });
    return launchInstance(
      agentProcess(spec, channel, {
        command: process.execPath,
        args: agentNodeArgs(spec.memoryMb, this.agent),
        env: {
          PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
          [AGENT_ENV.runDir]: channel.dir,
          [AGENT_ENV.codeDir]: resolve(spec.codeDir),
        },
      }),
    );
  }
}
