import { createReadStream } from 'node:fs';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { tooLarge } from '../../core/errors.js';
import { asArchiveError, inflatesTooMuch, invalidArchive, linkNotAllowed, quote } from './archive-errors.js';
import { formatBytes, inflationAllowance, type ArchiveLimits } from './archive-limits.js';
import type { TreeWriter } from './tree-writer.js';

// Headers, padding and long-name metadata a tar stream may carry per entry besides file content,
// and how far gunzip may run ahead of the writer, which enforces the exact content limit.
const TAR_OVERHEAD_PER_ENTRY = 4096;
const READ_AHEAD_BYTES = 1024 * 1024;

/**
 * Gunzips with zlib (not node-tar's sniffing) so a non-gzip body is rejected and the inflation
 * ratio is measured on exact byte counts, then feeds node-tar's Parser and writes each entry,
 * one at a time, through the TreeWriter.
 */
export async function readTarGz(file: string, tree: TreeWriter, limits: ArchiveLimits): Promise<void> {
  const maxTarBytes = limits.maxUncompressedBytes + (limits.maxEntries + 1) * TAR_OVERHEAD_PER_ENTRY + READ_AHEAD_BYTES;
  const { sink, settled } = tarSink(tree);
  let compressed = 0;
  let inflated = 0;
  try {
    await pipeline(
      createReadStream(file),
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          compressed += chunk.length;
          yield chunk;
        }
      },
      createGunzip(),
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          inflated += chunk.length;
          if (inflated > inflationAllowance(compressed)) throw inflatesTooMuch('archive');
          // Bounds inflating what writes no content: metadata, and padding after the end-of-archive marker.
          if (inflated > maxTarBytes) throw tooLarge(`tar stream is longer than ${formatBytes(maxTarBytes)}`);
          yield chunk;
        }
      },
      sink,
    );
  } catch (err) {
    throw asArchiveError(err, 'tar.gz');
  } finally {
    // The caller deletes the tree next: no entry may still be writing into it.
    await settled();
  }
}

/**
 * A Writable around node-tar's Parser. Entries are written one after another; the sink finishes
 * only after the last one is on disk, and when it is destroyed the entry in progress is aborted.
 */
function tarSink(tree: TreeWriter): { sink: Writable; settled: () => Promise<void> } {
  const parser = new Parser({ strict: true });
  let work = Promise.resolve();
  let latest: ReadEntry | undefined; // node-tar emits an entry only once the previous one was read
  let sawEnd = false;
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      // After the end-of-archive blocks only padding follows; node-tar would buffer it all.
      if (sawEnd) return done();
      if (parser.write(chunk)) done();
      else parser.once('drain', () => done());
    },
    final(done) {
      const ended = once(parser, 'end');
      parser.end();
      ended.then(() => work).then(() => done(), done);
    },
    destroy(err, done) {
      // A listener must exist or the error would throw here; a writer waiting on the entry gets it too.
      latest?.on('error', () => {}).destroy(err ?? new Error('extraction aborted'));
      done(err);
    },
  });
  const fail = (err: unknown) => sink.destroy(err as Error);
  parser.on('error', fail);
  parser.on('eof', () => (sawEnd = true));
  // Entries of types node-tar does not understand (sparse files, tape volumes, ...) would be skipped silently.
  parser.on('ignoredEntry', (entry: ReadEntry) =>
    fail(invalidArchive(`entry ${quote(entry.path)} has an unsupported type (${entry.type})`)),
  );
  parser.on('entry', (entry: ReadEntry) => {
    latest = entry;
    work = work.then(() => (sink.destroyed ? undefined : addEntry(entry, tree)));
    work.catch(fail);
  });
  return { sink, settled: () => work.catch(() => {}) };
}

async function addEntry(entry: ReadEntry, tree: TreeWriter): Promise<void> {
  switch (entry.type) {
    case 'File':
    case 'OldFile':
    case 'ContiguousFile':
      return tree.file(entry.path, ((entry.mode ?? 0) & 0o111) !== 0, entry);
    case 'Directory':
    case 'GNUDumpDir': // a directory whose body lists its contents, which we do not need
      entry.resume();
      return tree.dir(entry.path);
    case 'SymbolicLink':
      throw linkNotAllowed(entry.path, `symbolic link to ${quote(entry.linkpath ?? '')}`);
    case 'Link':
      throw linkNotAllowed(entry.path, `hard link to ${quote(entry.linkpath ?? '')}`);
    default:
      throw invalidArchive(`entry ${quote(entry.path)} is a ${entry.type}; only regular files and directories are allowed`);
  }
}
