import { constants } from 'node:fs';
import { chmod, mkdir, open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArchive, quote, tooManyEntries, tooMuchData } from './archive-errors.js';
import type { ArchiveLimits } from './archive-limits.js';
import { entrySegments } from './entry-path.js';

// Never reuse or follow anything already on disk: every file is new, and a symlink would fail.
const CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const DIR_MODE = 0o755;

/**
 * Writes archive entries into a fresh directory, enforcing the entry limit and the unpacked size
 * limit on the bytes actually inflated (headers may lie), and rejecting duplicates. It remembers
 * everything it created, so it never has to trust (or stat) what is on disk. Modes are set
 * explicitly: the umask must not narrow what sandbox uids can read.
 */
export class TreeWriter {
  entries = 0;
  bytes = 0;
  private readonly declared = new Set<string>();
  private readonly created = new Map<string, 'dir' | 'file'>([['', 'dir']]);

  constructor(
    private readonly root: string,
    private readonly limits: ArchiveLimits,
  ) {}

  async dir(name: string): Promise<void> {
    const segments = this.accept(name);
    if (segments.length === 0) return; // the root itself, e.g. tar's "./"
    this.declare(name, segments);
    await mapFsError(name, this.makeDirs(name, segments));
  }

  /** `data` is only iterated once the entry has been accepted, so a rejected entry is never inflated. */
  async file(name: string, executable: boolean, data: AsyncIterable<Buffer>): Promise<void> {
    const segments = this.accept(name);
    if (segments.length === 0) throw invalidArchive(`entry ${quote(name)} is a file without a name`);
    const rel = this.declare(name, segments);
    if (this.created.has(rel)) throw invalidArchive(`entry ${quote(name)} is both a directory and a file`);
    await mapFsError(name, this.writeFile(name, segments, executable ? 0o755 : 0o644, data));
  }

  private accept(name: string): string[] {
    if (++this.entries > this.limits.maxEntries) throw tooManyEntries(this.limits.maxEntries);
    return entrySegments(name);
  }

  private declare(name: string, segments: string[]): string {
    const rel = segments.join('/');
    if (this.declared.has(rel)) throw invalidArchive(`entry ${quote(name)} duplicates an earlier entry`);
    this.declared.add(rel);
    return rel;
  }

  private async makeDirs(name: string, segments: string[]): Promise<void> {
    for (let i = 1; i <= segments.length; i++) {
      const rel = segments.slice(0, i).join('/');
      const kind = this.created.get(rel);
      if (kind === 'file') throw invalidArchive(`entry ${quote(name)} needs ${quote(rel)} as a directory, but it is a file`);
      if (kind) continue;
      const path = join(this.root, rel);
      await mkdir(path, DIR_MODE);
      await chmod(path, DIR_MODE);
      this.created.set(rel, 'dir');
    }
  }

  private async writeFile(name: string, segments: string[], mode: number, data: AsyncIterable<Buffer>) {
    await this.makeDirs(name, segments.slice(0, -1));
    const rel = segments.join('/');
    this.created.set(rel, 'file');
    const file = await open(join(this.root, rel), CREATE_FILE, mode);
    try {
      await file.chmod(mode);
      for await (const chunk of data) {
        this.bytes += chunk.length;
        if (this.bytes > this.limits.maxUncompressedBytes) throw tooMuchData(name, this.limits.maxUncompressedBytes);
        await writeFully(file, chunk);
      }
    } finally {
      await file.close();
    }
  }
}

async function writeFully(file: FileHandle, chunk: Buffer): Promise<void> {
  for (let at = 0; at < chunk.length; ) at += (await file.write(chunk, at)).bytesWritten;
}

/** A name the file system cannot hold is the archive's fault, not the server's. */
async function mapFsError(name: string, work: Promise<void>): Promise<void> {
  try {
    await work;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENAMETOOLONG') {
      throw invalidArchive(`entry ${quote(name)} has a name too long for the file system`);
    }
    throw err;
  }
}
