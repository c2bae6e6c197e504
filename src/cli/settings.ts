/**
 * A function's settings for `deploy`: `aether.json` (or `aether.yaml`) in its folder, under the API's
 * own field names, then --env-file, then the flags, which win. The server validates the values; here
 * only the shape is checked, so a typo is reported against the file it is in.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseEnv } from 'node:util';
import YAML from 'yaml';
import { FUNCTION_DEFAULTS } from '../core/function-spec.js';
import { usageError } from './exit.js';

export const SETTINGS_FILES = ['aether.json', 'aether.yaml', 'aether.yml'];
const KNOWN = new Set(['name', 'runtime', ...Object.keys(FUNCTION_DEFAULTS)]);

/** The create/update body, in the API's field names. */
export type Settings = Record<string, unknown> & { name?: string; env_vars?: Record<string, string> };

export interface SettingsFile {
  file?: string;
  settings: Settings;
}

export function readSettingsFile(dir: string): SettingsFile {
  const present = SETTINGS_FILES.filter((f) => fs.existsSync(path.join(dir, f)));
  if (present.length > 1) throw usageError(`${dir} has both ${present.join(' and ')}: keep one`);
  const name = present[0];
  if (!name) return { settings: {} };
  const file = path.join(dir, name);
  let parsed: unknown;
  try {
    const text = fs.readFileSync(file, 'utf8');
    parsed = name.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw usageError(`${file}: ${(err as Error).message.split('\n')[0]}`);
  }
  if (parsed === null || parsed === undefined) return { file, settings: {} };
  if (typeof parsed !== 'object' || Array.isArray(parsed))
    throw usageError(`${file}: expected an object of settings, e.g. {"memory_mb": 256}`);
  const unknown = Object.keys(parsed).filter((k) => !KNOWN.has(k));
  if (unknown.length > 0) throw usageError(`${file}: unknown setting ${unknown.join(', ')}; known: ${[...KNOWN].join(', ')}`);
  const settings = parsed as Settings;
  if (settings.env_vars !== undefined) settings.env_vars = stringMap(settings.env_vars, `${file}: env_vars`);
  return { file, settings };
}

function stringMap(value: unknown, where: string): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw usageError(`${where} must be an object of NAME: value`);
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => {
      if (typeof v === 'object' && v !== null) throw usageError(`${where}.${k} must be a string`);
      return [k, String(v)];
    }),
  );
}

export function readEnvFile(file: string): Record<string, string> {
  try {
    return parseEnv(fs.readFileSync(file, 'utf8')) as Record<string, string>;
  } catch (err) {
    throw usageError(`--env-file ${file}: ${(err as Error).message}`);
  }
}

/** `KEY=VALUE` pairs from --env; the value may contain "=" and may be empty. */
export function parseEnvFlags(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw usageError(`--env ${pair}: expected KEY=VALUE`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

/** A function name from a folder name: lowercase, "-" for anything a DNS label cannot hold. */
export function nameFromFolder(dir: string): string {
  return path
    .basename(path.resolve(dir))
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
}
