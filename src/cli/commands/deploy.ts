/**
 * `aether deploy [DIR]`: from a folder of code to a live function. Zips the folder, creates the
 * function or updates its settings, uploads the code (skipped when the server already has exactly
 * this archive), then sends one GET to the function's root so that a first instance starts, and
 * reports how long that took.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import type { FunctionRecord, InvocationRecord } from '../../core/types.js';
import { type Client, apiErrorOf, fnPath, REQUEST_ID_HEADER } from '../client.js';
import { CliError, EXIT, usageError } from '../exit.js';
import { bytes, duration, keyValues, note, out, printJson } from '../output.js';
import { pack } from '../pack.js';
import { counting } from '../progress.js';
import { nameFromFolder, parseEnvFlags, readEnvFile, readSettingsFile, type Settings } from '../settings.js';
import type { TargetOptions } from '../target.js';
import { clientCommand, clientFor, collect, integer, type JsonOption, jsonOption } from './common.js';

interface Opts extends TargetOptions, JsonOption {
  name?: string;
  runtime?: string;
  entrypoint?: string;
  env?: string[];
  envFile?: string;
  memory?: number;
  vcpu?: number;
  timeout?: number;
  concurrency?: number;
  minInstances?: number;
  maxInstances?: number;
  idleTimeout?: number;
  wait: boolean;
}

/** How long to look for the first request's invocation record: 10 x 100 ms. */
const RECORD_POLLS = 10;
const RECORD_POLL_MS = 100;

/** Flags and the API fields they set. */
const FLAG_FIELDS = [
  ['runtime', 'runtime'],
  ['entrypoint', 'entrypoint'],
  ['memory', 'memory_mb'],
  ['vcpu', 'vcpu'],
  ['timeout', 'timeout_ms'],
  ['concurrency', 'concurrency'],
  ['minInstances', 'min_instances'],
  ['maxInstances', 'max_instances'],
  ['idleTimeout', 'idle_timeout_s'],
] as const satisfies [keyof Opts, string][];

export interface DeployResult {
  name: string;
  id: string;
  created: boolean;
  version: number;
  code_hash: string | null;
  code_size: number | null;
  code_uploaded: boolean;
  url: string;
  /** The GET / that deploy sent (absent with --no-wait): status, request to response in ms, and whether it cold-started. */
  first_response?: FirstResponse;
}

interface FirstResponse {
  status: number;
  ms: number;
  /** From the invocation record; null if the server's records did not say. */
  cold_start: boolean | null;
}

export function deployCommand(program: Command): void {
  jsonOption(
    clientCommand(program, 'deploy', 'zip a folder and deploy it as a function (created, or updated if it exists)')
      .argument('[dir]', 'the folder with the code', '.')
      .option('--name <name>', 'function name (default: aether.json "name", else the folder name)')
      .option('--runtime <runtime>', 'runtime (default node)')
      .option('--entrypoint <file>', 'entry module inside the folder (default: handler.js, index.js, ... or package.json main)')
      .option('-e, --env <KEY=VALUE>', 'an environment variable (repeatable)', collect)
      .option('--env-file <file>', 'environment variables from a .env file')
      .option('--memory <MB>', 'memory limit per instance', integer(1))
      .option('--vcpu <n>', 'vCPUs per instance', integer(1))
      .option('--timeout <ms>', 'time limit per request', integer(1))
      .option('--concurrency <n>', 'requests one instance takes at once', integer(1))
      .option('--min-instances <n>', 'instances kept warm', integer(0))
      .option('--max-instances <n>', 'instances at most', integer(1))
      .option('--idle-timeout <s>', 'seconds idle before the last instance stops', integer(1))
      .option('--no-wait', 'return once the code is uploaded, without starting an instance'),
  )
    .addHelpText(
      'after',
      `
Settings can live in the folder as aether.json or aether.yaml, under the API's field names, e.g.
  {"name": "hello", "memory_mb": 256, "timeout_ms": 10000, "env_vars": {"WHO": "world"}}
Flags override the file, and --env the --env-file. An existing function keeps every setting not given;
env vars, when any are given, replace its env vars as a whole.
The zip holds every file in the folder except .git and what .aetherignore (gitignore syntax) excludes.
Unless --no-wait, deploy sends GET / to the function and waits for its first instance to answer.`,
    )
    .action(async (dir: string, opts: Opts) => deploy(dir, opts));
}

async function deploy(dirArg: string, opts: Opts): Promise<void> {
  const dir = path.resolve(dirArg);
  if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory())
    throw usageError(`${dirArg} is not a folder: deploy takes the folder with the code`);
  const { file: settingsFile, settings: fromFile } = readSettingsFile(dir);
  const settings = mergeSettings(fromFile, opts);
  const name = opts.name ?? (typeof fromFile.name === 'string' ? fromFile.name : nameFromFolder(dir));
  if (!name) throw usageError(`cannot make a function name from ${dir}: pass --name`);
  delete settings.name;
  const say = opts.json ? () => {} : note;
  const client = clientFor(opts);

  const packed = await pack(dir);
  try {
    say(
      `Packed ${packed.files} file${packed.files === 1 ? '' : 's'} from ${dirArg} (${bytes(packed.size)})${settingsFile ? `, settings from ${path.basename(settingsFile)}` : ''}`,
    );
    const existing = await client.jsonOrMissing<FunctionRecord>(fnPath(name));
    let fn = existing
      ? await withSettingsHint(client.json<FunctionRecord>('PATCH', fnPath(name), settings))
      : await withSettingsHint(client.json<FunctionRecord>('POST', '/api/functions', { name, runtime: 'node', ...settings }));
    say(existing ? `Updating ${fn.name}` : `Created ${fn.name}`);

    const uploaded = fn.code_hash !== packed.sha256;
    if (uploaded) {
      const body = fs.createReadStream(packed.file).pipe(counting(packed.size, 'Uploading'));
      const res = await client.stream('POST', fnPath(fn.id, '/code'), {
        body,
        headers: { 'content-type': 'application/zip', 'content-length': String(packed.size) },
      });
      const code = (await res.body.json()) as Pick<FunctionRecord, 'code_hash' | 'code_size' | 'version'>;
      fn = { ...fn, ...code };
    } else {
      say(`Code unchanged (sha256 ${packed.sha256.slice(0, 12)}), not uploaded`);
    }

    const url = `${client.url}/functions/${fn.name}/`;
    const result: DeployResult = {
      name: fn.name,
      id: fn.id,
      created: !existing,
      version: fn.version,
      code_hash: fn.code_hash,
      code_size: fn.code_size,
      code_uploaded: uploaded,
      url,
    };
    if (opts.wait) {
      say('Waiting for the first instance to answer GET / ...');
      result.first_response = await firstResponse(client, fn.name);
    }
    if (opts.json) return printJson(result);
    out(
      keyValues([
        ['Deployed', `${fn.name}, version ${fn.version}`],
        ['URL', url],
        ...(result.first_response ? [describeFirst(result.first_response)] : []),
      ]),
    );
  } finally {
    packed.remove();
  }
}

/** The file's settings, then --env-file, then flags; env_vars only when some were given. */
function mergeSettings(fromFile: Settings, opts: Opts): Settings {
  const settings: Settings = { ...fromFile };
  for (const [flag, field] of FLAG_FIELDS) if (opts[flag] !== undefined) settings[field] = opts[flag];
  const envFile = opts.envFile ? readEnvFile(opts.envFile) : {};
  const envFlags = parseEnvFlags(opts.env ?? []);
  if (fromFile.env_vars || opts.envFile || opts.env) settings.env_vars = { ...fromFile.env_vars, ...envFile, ...envFlags };
  return settings;
}

/** A 400 on create/update is about the settings: say where they came from. */
async function withSettingsHint<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (err instanceof CliError && err.status === 400) {
      throw new CliError(EXIT.usage, `invalid function settings (aether.json/aether.yaml and flags): ${err.message}`);
    }
    throw err;
  }
}

/** GET / until an instance answers; Aether's own 5xx errors mean it did not start. */
async function firstResponse(client: Client, name: string): Promise<FirstResponse> {
  const requestId = randomUUID();
  const started = performance.now();
  const res = await client.invoke(name, '/', { method: 'GET', headers: { [REQUEST_ID_HEADER]: requestId } });
  const ms = Math.round(performance.now() - started);
  const text = await res.body.text();
  const error = res.statusCode >= 500 ? apiErrorOf(text) : undefined;
  if (error) {
    throw new CliError(
      EXIT.notStarted,
      `${name} is deployed but its first instance did not answer (HTTP ${res.statusCode}: ${error.message}): see \`aether logs ${name}\``,
    );
  }
  return { status: res.statusCode, ms, cold_start: await wasColdStart(client, name, requestId) };
}

/** Whether the request had to wait for a new instance, from its invocation record (written just after the answer). */
async function wasColdStart(client: Client, name: string, requestId: string): Promise<boolean | null> {
  for (let attempt = 0; attempt < RECORD_POLLS; attempt++) {
    const recent = await client.json<InvocationRecord[]>('GET', fnPath(name, '/invocations?limit=20'));
    const record = recent.find((r) => r.request_id === requestId);
    if (record) return record.cold_start;
    await sleep(RECORD_POLL_MS);
  }
  return null;
}

function describeFirst(first: FirstResponse): [string, string] {
  const answer = `HTTP ${first.status} in ${duration(first.ms)}`;
  if (first.cold_start === false) return ['First answer', `${answer} (an instance was already running)`];
  return ['Cold start', answer];
}
