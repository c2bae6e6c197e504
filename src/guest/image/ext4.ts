/**
 * Read-only ext4 images of a directory (mkfs.ext4 -d, from e2fsprogs): the guest's root image and the
 * functions' code disks. ext4 is built into Debian's cloud kernel, so no module is needed to mount it.
 * Written to a temporary name and renamed, so a path that exists is always a complete image.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lstat, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const BLOCK = 4096;
/** Filesystem timestamps of a reproducible image (e2fsprogs reads it instead of the clock). */
const FIXED_TIME = '1700000000';
const fixedClock = { ...process.env, E2FSPROGS_FAKE_TIME: FIXED_TIME };

export interface TreeUsage {
  /** Bytes the tree takes in 4 KiB blocks, one block per directory and symlink included. */
  bytes: number;
  /** Every path in the tree, relative. */
  paths: string[];
}

export async function treeUsage(dir: string): Promise<TreeUsage> {
  let bytes = 0;
  const paths = await readdir(dir, { recursive: true });
  for (const name of paths) {
    const stat = await lstat(path.join(dir, name));
    bytes += Math.max(BLOCK, Math.ceil(stat.size / BLOCK) * BLOCK);
  }
  return { bytes, paths };
}

export interface Ext4Options {
  label: string;
  /** Seeds the filesystem UUID and directory hash seed. */
  seed: string;
  /**
   * Same seed and tree, same image bytes: mkfs copies each file's ctime (which no one can set) and
   * atime (which reading the tree changes), so both are rewritten afterwards with debugfs.
   * Only for trees with plain names (ours, not user code).
   */
  reproducible?: boolean;
}

/** Builds `out` holding a copy of `srcDir` (owners, modes, mtimes and symlinks as they are there). */
export async function makeExt4Image(srcDir: string, out: string, opts: Ext4Options): Promise<void> {
  const usage = await treeUsage(srcDir);
  // Room for metadata (inode tables, bitmaps, directories) on top of the data, and a floor for tiny trees.
  const kib = Math.ceil((usage.bytes * 1.1) / 1024) + 4096;
  const uuid = uuidFrom(opts.seed);
  const tmp = `${out}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await run(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-b',
        String(BLOCK),
        '-I',
        '256',
        '-N',
        String(usage.paths.length + 64),
        '-m',
        '0',
        '-O',
        '^has_journal,^resize_inode',
        '-L',
        opts.label,
        '-U',
        uuid,
        '-E',
        `hash_seed=${uuid},root_owner=0:0`,
        '-d',
        srcDir,
        tmp,
        `${kib}k`,
      ],
      { env: fixedClock },
    ).catch((err: NodeJS.ErrnoException & { stderr?: string }) => {
      throw new Error(
        err.code === 'ENOENT' ? 'mkfs.ext4 not found: apt-get install e2fsprogs' : `mkfs.ext4 failed: ${err.stderr?.trim() || err.message}`,
      );
    });
    if (opts.reproducible) await fixTimes(tmp, usage.paths);
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

async function fixTimes(image: string, paths: string[]): Promise<void> {
  const plain = /^[\w./+-]+$/;
  const bad = paths.find((p) => !plain.test(p));
  if (bad) throw new Error(`cannot make an image reproducible with the path ${JSON.stringify(bad)}`);
  const script = ['', ...paths].flatMap((p) => ['ctime', 'atime'].map((field) => `sif /${p} ${field} @${FIXED_TIME}\n`)).join('');
  const cmds = `${image}.debugfs`;
  await writeFile(cmds, script);
  try {
    await run('debugfs', ['-w', '-f', cmds, image], { env: fixedClock });
  } finally {
    await rm(cmds, { force: true });
  }
}

function uuidFrom(seed: string): string {
  const h = createHash('sha256').update(seed).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}
