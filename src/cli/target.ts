/**
 * Which Aether the client commands talk to, and with which token. In order: --url/--token, then
 * AETHER_URL/AETHER_TOKEN, then what `aether login` saved, then an `aether serve` on this machine
 * (http://127.0.0.1:8080 and the token file in its data dir). A saved or local token is only ever sent
 * to the URL it belongs to, so pointing --url elsewhere never leaks it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { tokenFile } from '../api-token.js';
import { type ClientConfig, loadClientConfig } from '../config.js';
import { usageError } from './exit.js';

export interface Target {
  url: string;
  token?: string;
  /** Where the token came from, for error messages (never the token itself). */
  tokenSource?: string;
}

export interface TargetOptions {
  url?: string;
  token?: string;
}

interface Saved {
  url: string;
  token: string;
}

export function readSaved(config: ClientConfig): Saved | undefined {
  const file = config.loginFile;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw usageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    const saved = JSON.parse(text) as Partial<Saved>;
    if (typeof saved.url === 'string' && typeof saved.token === 'string') return { url: normalizeUrl(saved.url, file), token: saved.token };
  } catch {}
  throw usageError(`${file} is not a saved login: run \`aether login\` again, or delete it`);
}

/** Saves the login readable by its owner only (the folder 0700, the file 0600), replacing it atomically. */
export function save(config: ClientConfig, saved: Saved): void {
  const file = config.loginFile;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(saved, null, 2)}\n`, { mode: 0o600 });
  fs.chmodSync(tmp, 0o600); // whatever the umask
  fs.renameSync(tmp, file);
}

/** Removes the saved login; whether there was one. */
export function forget(config: ClientConfig): boolean {
  try {
    fs.unlinkSync(config.loginFile);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** The URL without a trailing slash; anything but http(s) is a usage error naming where it came from. */
export function normalizeUrl(raw: string, from: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw usageError(`${from}: "${raw}" is not a URL (e.g. http://127.0.0.1:8080)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usageError(`${from}: "${raw}" must be an http:// or https:// URL`);
  return url.href.replace(/\/+$/, '');
}

export function resolveTarget(opts: TargetOptions, config: ClientConfig = loadClientConfig()): Target {
  const saved = readSaved(config);
  const url = opts.url
    ? normalizeUrl(opts.url, '--url')
    : config.url
      ? normalizeUrl(config.url, 'AETHER_URL')
      : (saved?.url ?? config.local.url);
  if (opts.token) return { url, token: opts.token, tokenSource: '--token' };
  if (config.token) return { url, token: config.token, tokenSource: 'AETHER_TOKEN' };
  if (saved?.url === url) return { url, token: saved.token, tokenSource: config.loginFile };
  if (isLoopback(url)) {
    if (config.local.token) return { url, token: config.local.token, tokenSource: 'AETHER_API_TOKEN' };
    const file = tokenFile(config.local.dataDir);
    try {
      return { url, token: fs.readFileSync(file, 'utf8').trim(), tokenSource: file };
    } catch {}
  }
  return { url };
}

function isLoopback(url: string): boolean {
  const host = new URL(url).hostname;
  return host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
