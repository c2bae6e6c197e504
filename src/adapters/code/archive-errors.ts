import { AetherError, badRequest, tooLarge } from '../../core/errors.js';
import { formatBytes, MAX_INFLATION_RATIO } from './archive-limits.js';

/** An entry name as it appears in messages: quoted, escaped, and cut short if absurdly long. */
export function quote(name: string): string {
  const shown = name.length > 200 ? `${name.slice(0, 200)}…` : name;
  return JSON.stringify(shown);
}

export const invalidArchive = (message: string) => badRequest(message, 'invalid_archive');
export const unsafePath = (name: string, why: string) => badRequest(`entry ${quote(name)} ${why}`, 'unsafe_path');
export const linkNotAllowed = (name: string, kind: string) =>
  badRequest(`entry ${quote(name)} is a ${kind}; links are not allowed in code archives`, 'symlink_not_allowed');

export const tooManyEntries = (max: number) => tooLarge(`archive has more than ${max} entries`);
export const tooMuchData = (name: string, max: number) =>
  tooLarge(`entry ${quote(name)} takes the unpacked size past the limit of ${formatBytes(max)}`);
export const inflatesTooMuch = (what: string) =>
  tooLarge(`${what} inflates more than ${MAX_INFLATION_RATIO}:1; refusing a likely zip bomb`);

/**
 * Parser and decompressor errors mean the archive is broken; errors carrying a `syscall`
 * (disk full, permissions) are the server's problem and pass through unchanged.
 */
export function asArchiveError(err: unknown, format: string): unknown {
  if (err instanceof AetherError || (err as NodeJS.ErrnoException)?.syscall) return err;
  return invalidArchive(`not a valid ${format} archive: ${(err as Error)?.message ?? String(err)}`);
}
