import { AGENT_LOG_PREFIX } from './protocol.mjs';

/** The agent's own diagnostics go to stderr, prefixed so that the host can tell them from the function's. */
export function log(message: string): void {
  process.stderr.write(`${AGENT_LOG_PREFIX} ${message}\n`);
}

/** Logs and exits at once: stderr is a pipe, written synchronously, so nothing is lost. */
export function fail(message: string, code: number): never {
  log(message);
  process.exit(code);
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
