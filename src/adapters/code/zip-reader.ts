import yauzl, { type Entry, type ZipFile } from 'yauzl';
import { asArchiveError, inflatesTooMuch, invalidArchive, linkNotAllowed, quote, tooManyEntries } from './archive-errors.js';
import { inflationAllowance, type ArchiveLimits } from './archive-limits.js';
import type { TreeWriter } from './tree-writer.js';

// Unix mode bits live in the high 16 bits of a zip entry's external attributes.
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const MSDOS_DIRECTORY = 0x10;

export async function readZip(file: string, tree: TreeWriter, limits: ArchiveLimits): Promise<void> {
  let zip: ZipFile | undefined;
  try {
    // decodeStrings: false so that unsafe names reach our own checks (and error codes) instead of
    // failing inside yauzl; validateEntrySizes also fails entries inflating to other than they declare.
    zip = await yauzl.openPromise(file, { lazyEntries: true, decodeStrings: false, validateEntrySizes: true });
    if (zip.entryCount > limits.maxEntries) throw tooManyEntries(limits.maxEntries);
    for await (const entry of zip.eachEntry()) await addEntry(zip, entry, tree);
  } catch (err) {
    throw asArchiveError(err, 'zip');
  } finally {
    zip?.close();
  }
}

async function addEntry(zip: ZipFile, entry: Entry, tree: TreeWriter): Promise<void> {
  // strictFileNames keeps backslashes: entrySegments treats them as separators, and messages show the real name.
  const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, true);
  const mode = entry.externalFileAttributes >>> 16;
  const type = mode & S_IFMT;
  if (type === S_IFLNK) throw linkNotAllowed(name, 'symbolic link');
  if (type !== 0 && type !== S_IFREG && type !== S_IFDIR) {
    throw invalidArchive(`entry ${quote(name)} is a special file; only regular files and directories are allowed`);
  }
  if (/[/\\]$/.test(name) || type === S_IFDIR || entry.externalFileAttributes & MSDOS_DIRECTORY) {
    return tree.dir(name);
  }
  if (entry.isEncrypted()) throw invalidArchive(`entry ${quote(name)} is encrypted`);
  await tree.file(name, (mode & 0o111) !== 0, inflate(zip, entry, name));
}

/** The entry's data, checked against its compressed size (which is real: it frames the data). */
async function* inflate(zip: ZipFile, entry: Entry, name: string): AsyncGenerator<Buffer> {
  const allowance = inflationAllowance(entry.compressedSize);
  let inflated = 0;
  for await (const chunk of await zip.openReadStreamPromise(entry)) {
    inflated += chunk.length;
    if (inflated > allowance) throw inflatesTooMuch(`entry ${quote(name)}`);
    yield chunk;
  }
}
