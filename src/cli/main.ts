#!/usr/bin/env node
/**
 * The `aether` command. The server roles (`serve`, `gateway`, `worker`, `image build`) and the client
 * commands (`deploy`, `invoke`, `logs`, ..., in ./commands, talking to any Aether over its HTTP API)
 * are subcommands of this same program.
 */
import fs from 'node:fs';
import { Command, type CommanderError } from 'commander';
import { ISOLATION_DRIVERS, ISOLATION_MODES } from '../adapters/isolation/drivers.js';
import { loadClusterConfig, loadConfig, loadWorkerConfig } from '../config.js';
import { errorMessage } from '../core/errors.js';
import { clientCommands } from './commands/index.js';
import { CliError, EXIT } from './exit.js';
import { untilSignal } from './until-signal.js';

const { version } = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const ISOLATION_HELP = `${ISOLATION_MODES.join(' | ')} (AETHER_ISOLATION; listed below)`;
/** After the options of the roles that run functions: every driver and what an instance is under it. */
const DRIVERS_HELP = [
  '\nIsolation drivers, strongest first:',
  `  ${'auto'.padEnd(12)} the strongest one that really starts a function on this host (the log says which and why)`,
  ...Object.entries(ISOLATION_DRIVERS).map(([name, d]) => `  ${name.padEnd(12)} ${d.what}`),
].join('\n');

const program = new Command('aether')
  .description('Serverless functions in isolated sandboxes and microVMs')
  .version(version, '-V, --version')
  // Bad flags and arguments exit with 2 (usage), as documented for scripts; --help and --version with 0.
  .exitOverride((err: CommanderError) => process.exit(err.exitCode === 0 ? 0 : EXIT.usage))
  // Commander's own errors (unknown option, missing argument) in the same one-line form as ours.
  .configureOutput({ outputError: (text, write) => write(`aether: ${text.trim().replace(/^error: /, '')} (--help shows the usage)\n`) })
  .addHelpText(
    'after',
    `
Exit codes: 0 ok, 1 the server or the function answered with an error, 2 usage or configuration,
3 no such function, 4 no token or a rejected one, 5 server unreachable, 6 deployed but not starting.`,
  );

program.commandsGroup('Functions (talk to any Aether over its HTTP API):');
clientCommands(program);
program.commandsGroup('Run Aether:');

program
  .command('serve')
  .description('run the all-in-one server (API, scheduler and worker in one process)')
  .option('-p, --port <port>', 'listen port (PORT)')
  .option('-d, --data-dir <dir>', 'data directory (AETHER_DATA_DIR)')
  .option('-i, --isolation <driver>', ISOLATION_HELP)
  .addHelpText('after', DRIVERS_HELP)
  .action(async (opts: { port?: string; dataDir?: string; isolation?: string }) => {
    const env = { ...process.env };
    if (opts.port) env.PORT = opts.port;
    if (opts.dataDir) env.AETHER_DATA_DIR = opts.dataDir;
    if (opts.isolation) env.AETHER_ISOLATION = opts.isolation;
    const { startServer } = await import('../server.js'); // the roles load their engines only when run: client commands start fast
    untilSignal(await startServer(loadConfig(env)));
  });

program
  .command('gateway')
  .description('run a cluster gateway: the HTTP API, routing invocations to workers (etcd, Redis, S3)')
  .option('-p, --port <port>', 'listen port (PORT)')
  .action(async (opts: { port?: string }) => {
    const env = { ...process.env, ...(opts.port ? { PORT: opts.port } : {}) };
    const { startGateway } = await import('../gateway.js');
    untilSignal(await startGateway(loadClusterConfig(env)));
  });

program
  .command('worker')
  .description('run a cluster worker: instances of functions on this host, announced in etcd')
  .option('-p, --port <port>', 'listen port for gateways (PORT)')
  .option('-i, --isolation <driver>', ISOLATION_HELP)
  .addHelpText('after', DRIVERS_HELP)
  .action(async (opts: { port?: string; isolation?: string }) => {
    const env = {
      ...process.env,
      ...(opts.port ? { PORT: opts.port } : {}),
      ...(opts.isolation ? { AETHER_ISOLATION: opts.isolation } : {}),
    };
    const { startWorker } = await import('../worker.js');
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
    const env = {
      ...process.env,
      ...(opts.cacheDir ? { AETHER_VM_CACHE: opts.cacheDir } : {}),
      ...(opts.kernel ? { KERNEL_PATH: opts.kernel } : {}),
    };
    const { vmCacheDir, kernel } = loadConfig(env);
    const { buildImage } = await import('../guest/image/build-image.js');
    const image = await buildImage({ cacheDir: vmCacheDir, kernel, onProgress: (m) => process.stderr.write(`${m}\n`) });
    process.stdout.write(`${JSON.stringify(image, null, 2)}\n`);
  });

program.parseAsync().catch((err: unknown) => {
  // Client errors carry their exit code; configuration and start-up errors are usage errors (2).
  // Either way: one clear line, no stack.
  process.stderr.write(`aether: ${errorMessage(err)}\n`);
  process.exit(err instanceof CliError ? err.exitCode : EXIT.usage);
});
