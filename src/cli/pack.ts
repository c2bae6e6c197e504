/**
 * Zips a function's folder for upload: every file under it except `.git` and what `.aetherignore`
 * (gitignore syntax) excludes, symlinks followed. The archive is reproducible (sorted entries, fixed
 * times and modes), so unchanged code hashes the same as what the server already runs and
 * `deploy` can skip the upload.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import ignore from 'ignore';
import yazl from 'yazl';
import { usageError } from './exit.js';

export const IGNORE_FILE = '.aetherignore';
/** Zip's epoch (DOS time starts in 1980): the same for every file and every build. */
const FIXED_MTIME = new Date(1980, 0, 1);

export interface Packed {
  /** A temporary zip file; `remove()` deletes it. */
  file: string;
  size: number;
  files: number;
  sha256: string;
  remove(): void;
}

export async function pack(dir: string): Promise<Packed> {
  const ig = ignore().add('.git');
  const rules = path.join(dir, IGNORE_FILE);
  if (fs.existsSync(rules)) ig.add(fs.readFileSync(rules, 'utf8'));

  const entries = listFiles(dir, ig);
  if (entries.length === 0) throw usageError(`nothing to deploy in ${dir}: it has no files, or ${IGNORE_FILE} excludes them all`);

  const zip = new yazl.ZipFile();
  for (const { abs, rel, mode } of entries) zip.addFile(abs, rel, { mtime: FIXED_MTIME, mode });
  zip.end();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-deploy-'));
  const file = path.join(tmp, 'code.zip');
  const hash = createHash('sha256');
  zip.outputStream.on('data', (chunk: Buffer) => hash.update(chunk));
  await pipeline(zip.outputStream, fs.createWriteStream(file));
  return {
    file,
    size: fs.statSync(file).size,
    files: entries.length,
    sha256: hash.digest('hex'),
    remove: () => fs.rmSync(tmp, { recursive: true, force: true }),
  };
}

interface Entry {
  abs: string;
  /** Path in the archive, with "/" separators. */
  rel: string;
  mode: number;
}

function listFiles(root: string, ig: ReturnType<typeof ignore>): Entry[] {
  const found: Entry[] = [];
  /** `above`: real paths of the folders on the way down, where a symlink loop ends. */
  const walk = (abs: string, rel: string, above: Set<string>) => {
    const real = fs.realpathSync(abs);
    if (above.has(real)) throw usageError(`${abs} links back to a folder above it: remove the link or add it to ${IGNORE_FILE}`);
    const trail = new Set(above).add(real);
    for (const name of fs.readdirSync(abs).sort()) {
      const childAbs = path.join(abs, name);
      const childRel = rel ? `${rel}/${name}` : name;
      let stat: fs.Stats;
      try {
        stat = fs.statSync(childAbs); // follows symlinks: the archive holds what they point to
      } catch {
        throw usageError(`${childAbs} is a broken symlink: remove it or add it to ${IGNORE_FILE}`);
      }
      if (stat.isDirectory()) {
        if (!ig.ignores(`${childRel}/`)) walk(childAbs, childRel, trail);
      } else if (stat.isFile() && !ig.ignores(childRel)) {
        found.push({ abs: childAbs, rel: childRel, mode: stat.mode & 0o111 ? 0o100755 : 0o100644 });
      }
    }
  };
  walk(root, '', new Set());
  return found;
}
