/** Where the built guest agent lives on the host, and how every driver starts it. */
import { existsSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENT_MODULES } from './agent/protocol.mjs';

/** V8's heap limit as a share of the instance's memory: the rest is code, buffers and native memory. */
const HEAP_SHARE = 0.75;
const MIN_HEAP_MB = 16;

/**
 * Host path of the compiled agent directory (`dist/guest/agent`), holding only builtin-importing
 * modules: drivers mount it read-only into every instance, the microVM image copies it. This file
 * sits at the same depth in src/ and dist/, so this works under tsx and when built.
 */
export function agentDir(): string {
  const dir = resolve(fileURLToPath(import.meta.url), '../../../dist/guest/agent');
  if (!existsSync(resolve(dir, AGENT_MODULES.main))) {
    throw new Error(`the guest agent is not built (${dir}/${AGENT_MODULES.main} is missing): run npm run build`);
  }
  return dir;
}

/** node's arguments to run the agent found in `dir` (as the instance sees that path). */
export function agentNodeArgs(memoryMb: number, dir: string): string[] {
  const heapMb = Math.max(MIN_HEAP_MB, Math.floor(memoryMb * HEAP_SHARE));
  return [`--max-old-space-size=${heapMb}`, posix.join(dir, AGENT_MODULES.main)];
}
