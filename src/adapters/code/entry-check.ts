/**
 * Catches the common packaging mistakes at upload, before anything is stored: code whose entry point
 * cannot resolve (no handler.js/index.js/package.json "main", a configured entrypoint the archive
 * lacks, or everything inside one top folder such as `app/`). The rules are the agent's own
 * (guest/agent/entry.mts): an upload passes here exactly when an instance would find its module.
 */
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { DEFAULT_ENTRIES, resolveEntry } from '../../guest/agent/entry.mjs';
import { badRequest, errorMessage } from '../../core/errors.js';

/** Left by archivers, never code: not counted as a top folder's siblings. */
const JUNK = new Set(['__MACOSX', '.DS_Store', 'Thumbs.db']);
const LISTED = 10;

/** Throws a 400 `no_entry_point` naming what the archive contains and how to fix it. */
export function checkEntry(codeDir: string, entrypoint: string | null): void {
  try {
    resolveEntry(codeDir, entrypoint);
  } catch (err) {
    throw badRequest(diagnose(codeDir, entrypoint, errorMessage(err)), 'no_entry_point');
  }
}

function diagnose(codeDir: string, entrypoint: string | null, why: string): string {
  const top = readdirSync(codeDir, { withFileTypes: true })
    .filter((e) => !JUNK.has(e.name))
    .map((e) => (e.isDirectory() ? `${e.name}/` : e.name))
    .sort();
  if (top.length === 0) return 'the archive is empty: zip the files of the function (e.g. handler.js) and upload that';
  const contains = `the archive contains ${top.slice(0, LISTED).join(', ')}${top.length > LISTED ? `, … (${top.length} entries)` : ''}`;
  const main = !entrypoint && /package\.json main/.test(why);
  const wanted = entrypoint
    ? `its entrypoint ${entrypoint} does not resolve (${why})`
    : main
      ? `its package.json "main" does not resolve (${why})`
      : `it has no entry point: none of ${DEFAULT_ENTRIES.join(', ')} or a package.json "main" at its top level`;
  const folder = top.length === 1 && top[0]!.endsWith('/') ? top[0]! : undefined;
  const nested = folder && entryIn(join(codeDir, folder), entrypoint);
  if (folder && nested) {
    const inFolder = relative(codeDir, nested);
    return (
      `${wanted}; ${contains}: the code sits in the folder ${folder}. Zip what is inside the folder rather than the folder ` +
      `(cd ${folder} && zip -r ../code.zip .)${entrypoint ? '' : `, or set the function's "entrypoint" to ${inFolder}`}`
    );
  }
  const typescript = top.some((name) => /\.(c|m)?ts$/.test(name)) ? '; TypeScript is not compiled here: upload the built .js' : '';
  const fix = entrypoint
    ? `upload code that has ${entrypoint}, or change the function's "entrypoint"`
    : main
      ? 'point "main" in package.json at a file in the archive (is the build output missing?)'
      : `add ${DEFAULT_ENTRIES[0]}, set "main" in package.json, or set the function's "entrypoint" to the file to load`;
  return `${wanted}; ${contains}. Fix: ${fix}${typescript}`;
}

/** The entry the code would have if the folder were the top of the archive. */
function entryIn(dir: string, entrypoint: string | null): string | undefined {
  try {
    return resolveEntry(dir, entrypoint);
  } catch {
    return undefined;
  }
}
