/**
 * Safe extraction of uploaded code archives (zip, tar.gz) into a fresh directory.
 * Usable on its own: the local code store calls it after an upload, cluster workers after
 * fetching an archive from object storage.
 */
import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import type { ArchiveFormat } from '../../core/ports.js';
import { tooLarge } from '../../core/errors.js';
import { DEFAULT_ARCHIVE_LIMITS, formatBytes, type ArchiveLimits } from './archive-limits.js';
import { readTarGz } from './tar-reader.js';
import { TreeWriter } from './tree-writer.js';
import { readZip } from './zip-reader.js';

export {
  DEFAULT_ARCHIVE_LIMITS,
  INFLATION_FLOOR_BYTES,
  MAX_INFLATION_RATIO,
  type ArchiveLimits,
} from './archive-limits.js';

export interface ExtractResult {
  entries: number;
  /** File content bytes written. */
  bytes: number;
}

/**
 * Unpacks `file` into `destDir`, which must not exist yet: it is created 0755 and, if anything
 * about the archive is wrong, removed again, so callers only ever see a complete tree.
 * Only regular files (0644, or 0755 when marked executable) and directories (0755) are created.
 * Rejects with an AetherError: 400 `invalid_archive` / `unsafe_path` / `symlink_not_allowed`,
 * or 413 `too_large` when a limit is exceeded.
 */
export async function extractArchive(
  file: string,
  format: ArchiveFormat,
  destDir: string,
  limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
): Promise<ExtractResult> {
  const { size } = await stat(file);
  if (size > limits.maxCompressedBytes) {
    throw tooLarge(`archive is larger than ${formatBytes(limits.maxCompressedBytes)}`);
  }
  await mkdir(destDir, 0o755);
  try {
    await chmod(destDir, 0o755);
    const tree = new TreeWriter(destDir, limits);
    await (format === 'zip' ? readZip : readTarGz)(file, tree, limits);
    return { entries: tree.entries, bytes: tree.bytes };
  } catch (err) {
    await rm(destDir, { recursive: true, force: true });
    throw err;
  }
}
