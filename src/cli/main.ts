#!/usr/bin/env node
/**
 * The `aether` command. `serve` runs the all-in-one server; later roles (`gateway`, `worker`) and
 * client commands (`deploy`, `invoke`, ...) are further subcommands of this same program.
 */
import { Command } from 'commander';
import { loadClusterConfig, loadConfig, loadWorkerConfig } from '../config.js';
import { errorMessage } from '../core/errors.js';
import { startGateway } from '../gateway.js';
import { buildImage } from '../image/build-image.js';
import { startServer } from '../server.js';
import { startWorker } from '../worker.js';

const program = new Command('aether').description('Serverless functions in isolated sandboxes and microVMs');

program
  .command('serve')
  .description('run the all-in-one server (API, scheduler and worker in one process)')
  .option('-p, --port <port>', 'listen port (PORT)')
  .option('-d, --data-dir <dir>', 'data directory (AETHER_DATA_DIR)')
  .option('-i, --isolation <driver>', 'auto | gvisor | bwrap | none (AETHER_ISOLATION)')
  .action(async (opts: { port?: string; dataDir?: string; isolation?: string }) => {
    const env = { ...process.env };
    if (opts.port) env.PORT = opts.port;
    if (opts.dataDir) env.AETHER_DATA_DIR = opts.dataDir;
    if (opts.isolation) env.AETHER_ISOLATION = opts.isolation;
    untilSignal(await startServer(loadConfig(env)));
  });

program
  .command('gateway')
  .description('run a cluster gateway: the HTTP API, routing invocations to workers (etcd, Redis, S3)')
  .option('-p, --port <port>', 'listen port (PORT)')
  .action(async (opts: { port?: string }) => {
    const env = { ...process.env, ...(opts.port ? { PORT: opts.port } : {}) };
    untilSignal(await startGateway(loadClusterConfig(env)));
  });

program
  .command('worker')
  .description('run a cluster worker: instances of functions on this host, announced in etcd')
  .option('-p, --port <port>', 'listen port for gateways (PORT)')
  .option('-i, --isolation <driver>', 'auto | gvisor | bwrap | none (AETHER_ISOLATION)')
  .action(async (opts: { port?: string; isolation?: string }) => {
    const env = {
      ...process.env,
      ...(opts.port ? { PORT: opts.port } : {}),
      ...(opts.isolation ? { AETHER_ISOLATION: opts.isolation } : {}),
    };
    untilSignal(await startWorker(loadWorkerConfig(env)));
  });

program
  .command('image')
  .description('microVM guest image')
  .command('build')
  .description('build (or find, cached by content hash) the kernel, initramfs and root image microVMs boot')
  .option('--cache-dir <dir>', 'where images are kept (AETHER_VM_CACHE)')
  .option('--kernel <path>', 'a guest kernel of your own (KERNEL_PATH)')
  .action(async (opts: { cacheDir?: string; kernel?: string }) => {
    const env = { ...process.env, ...(opts.cacheDir ? { AETHER_VM_CACHE: opts.cacheDir } : {}) };
    const { vmCacheDir } = loadConfig(env);
    const image = await buildImage({ cacheDir: vmCacheDir, kernelPath: opts.kernel, onProgress: (m) => process.stderr.write(`${m}\n`) });
    process.stdout.write(`${JSON.stringify(image, null, 2)}\n`);
  });

/** Runs until SIGINT/SIGTERM, then closes cleanly (instances stopped, registrations withdrawn). */
function untilSignal(server: { close(): Promise<void> }): void {
  const stop = () => {
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

program.parseAsync().catch((err: unknown) => {
  // Configuration and start-up errors: one clear line, no stack.
  process.stderr.write(`aether: ${errorMessage(err)}\n`);
  process.exit(2);
});
