/** How an instance's end is told, the same way for every driver. */
import { constants } from 'node:os';
import { EXIT_CONFIG } from '../../../guest/agent/protocol.mjs';

/** How the host process of an instance ended. */
export interface ProcessExit {
  code: number | null;
  signal: string | null;
  /** Set when the process could not be spawned at all. */
  spawnError?: string;
}

export function describeExit(exit: ProcessExit): string {
  if (exit.spawnError) return `could not be spawned: ${exit.spawnError}`;
  if (exit.signal) return `killed by ${exit.signal}`;
  if (exit.code === EXIT_CONFIG) return `agent refused to start (exit code ${EXIT_CONFIG})`;
  return `exited with code ${exit.code}`;
}

/** A shell's exit status (128+n for signal n: how a VM's init reports the agent's) as code or signal. */
export function fromShellStatus(status: number): { code: number | null; signal: string | null } {
  if (status <= 128) return { code: status, signal: null };
  const name = Object.entries(constants.signals).find(([, n]) => n === status - 128)?.[0];
  return { code: null, signal: name ?? `signal ${status - 128}` };
}
