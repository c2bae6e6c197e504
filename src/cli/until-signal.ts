import { errorMessage } from '../core/errors.js';

/**
 * Runs a server role until SIGINT/SIGTERM, then closes it cleanly (instances stopped, registrations
 * withdrawn) and exits 0; a close that fails says why before exiting 1.
 */
export function untilSignal(server: { close(): Promise<void> }): void {
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`aether: could not shut down cleanly: ${errorMessage(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
