import { createHash, randomUUID } from 'node:crypto';
import { chmodSync, createWriteStream, mkdirSync, readdirSync, rmSync, type Stats } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { badGateway, notFound, tooLarge } from '../../core/errors.js';
import type { ArchiveFormat, CodeStore, PutOptions, StoredCode } from '../../core/ports.js';
import { extractArchive } from './archive.js';
import { checkEntry } from './entry-check.js';
import { DEFAULT_ARCHIVE_LIMITS, formatBytes, type ArchiveLimits } from './archive-limits.js';
import { fsyncPath, fsyncTree } from './fsync-tree.js';

const TMP_PREFIX = '.tmp-';
const HASH = /^[0-9a-f]{64}$/;
const FORMATS: readonly ArchiveFormat[] = ['zip', 'tar.gz'];

/** Whether `hash` has the shape of a content hash (lowercase sha256 hex), i.e. is safe in paths and keys. */

/**
 * Code on the local disk, by content hash: `root/<hash>/` is the unpacked tree that sandboxes
 * bind-mount read-only, `root/<hash>.zip|.tar.gz` the archive as uploaded (cluster mode ships it
 * to object storage). The directory's existence is the commit point: it is renamed into place
 * only after the archive, fully extracted and fsynced, and removed before the archive.
 * Work in progress lives under `root/.tmp-*`, which is swept when a store opens the root, so
 * one process at a time may own a root.
 */
export class LocalCodeStore implements CodeStore {
  constructor(
    private readonly root: string,
    private readonly limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
  ) {
    mkdirSync(root, { recursive: true });
    // Sandboxes run as other uids: they may traverse root to their code, but not list it.
    chmodSync(root, 0o711);
    for (const name of readdirSync(root)) {
      if (name.startsWith(TMP_PREFIX)) rmSync(join(root, name), { recursive: true, force: true });
    }
  }

  /**
   * `expectedHash` is for archives fetched from elsewhere by hash (object storage): when the bytes
   * do not hash to it, the source served something else (502 `code_corrupt`) and nothing is stored.
   * A failed `check` stores nothing either.
   */
  async put(archive: NodeJS.ReadableStream, format: ArchiveFormat, opts: PutOptions & { expectedHash?: string } = {}): Promise<StoredCode> {
    const { check, expectedHash } = opts;
    const upload = this.tmpPath();
    const unpacked = this.tmpPath();
    try {
      const stored = await this.receive(archive, upload);
      if (expectedHash !== undefined && stored.hash !== expectedHash) {
        throw badGateway(`code archive has sha256 ${stored.hash}, expected ${expectedHash}`, 'code_corrupt');
      }
      const dir = join(this.root, stored.hash);
      if (await isDirectory(dir)) {
        if (check) checkEntry(dir, check.entrypoint); // the same code, maybe for a function with another entrypoint
      } else {
        await extractArchive(upload, format, unpacked, this.limits);
        if (check) checkEntry(unpacked, check.entrypoint);
        await fsyncTree(unpacked);
        await rename(upload, join(this.root, `${stored.hash}.${format}`));
        await commitDir(unpacked, dir);
        await fsyncPath(this.root);
      }
      return stored;
    } finally {
      await Promise.all([rm(upload, { force: true }), rm(unpacked, { recursive: true, force: true })]);
    }
  }

  async dir(hash: string): Promise<string> {
    const dir = join(this.root, checkHash(hash));
    if (!(await isDirectory(dir))) throw notFound(`code ${hash} not found`);
    return dir;
  }

  /** The archive as uploaded, when this store holds it (cluster mode ships it to object storage). */
  async archive(hash: string): Promise<{ path: string; format: ArchiveFormat } | undefined> {
    for (const format of FORMATS) {
      const path = join(this.root, `${checkHash(hash)}.${format}`);
      if (await exists(path)) return { path, format };
    }
    return undefined;
  }

  async remove(hash: string): Promise<void> {
    const dir = join(this.root, checkHash(hash));
    // Move the tree out of sight first: a crash mid-delete leaves a temp dir, never a partial tree.
    const doomed = this.tmpPath();
    await rename(dir, doomed).catch(ignoreMissing);
    await rm(doomed, { recursive: true, force: true });
    await Promise.all(FORMATS.map((ext) => rm(join(this.root, `${hash}.${ext}`), { force: true })));
  }

  /** Streams the upload to `path`, hashing it and stopping as soon as it exceeds the size limit. */
  private async receive(archive: NodeJS.ReadableStream, path: string): Promise<StoredCode> {
    const max = this.limits.maxCompressedBytes;
    const sha256 = createHash('sha256');
    let size = 0;
    await pipeline(
      archive,
      async function* (chunks: AsyncIterable<Buffer | string>) {
        for await (const chunk of chunks) {
          const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
          size += bytes.length;
          if (size > max) throw tooLarge(`archive is larger than ${formatBytes(max)}`);
          sha256.update(bytes);
          yield bytes;
        }
      },
      createWriteStream(path, { flags: 'wx', mode: 0o600, flush: true }),
    );
    return { hash: sha256.digest('hex'), size };
  }

  private tmpPath(): string {
    return join(this.root, `${TMP_PREFIX}${randomUUID()}`);
  }
}

/** A malformed hash is simply not there (404): it never becomes a path or an S3 key. */
export function checkHash(hash: string): string {
  if (!HASH.test(hash)) throw notFound(`code ${hash} not found`);
  return hash;
}

async function isDirectory(path: string): Promise<boolean> {
  return (await statOrUndefined(path))?.isDirectory() ?? false;
}

async function exists(path: string): Promise<boolean> {
  return (await statOrUndefined(path)) !== undefined;
}

async function statOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (err) {
    ignoreMissing(err);
    return undefined;
  }
}

/** A concurrent upload of the same archive may have committed first; its tree is identical. */
async function commitDir(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
  }
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
}
