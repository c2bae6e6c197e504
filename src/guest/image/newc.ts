/**
 * A cpio archive in the "newc" format (what the kernel unpacks as an initramfs), written in plain
 * code rather than with cpio(1): every field is ours to fix, so the output depends on nothing but the
 * entries (sorted paths, inode numbers in that order, mtime 0, owner root), and no tool is needed.
 */

export type CpioEntry =
  | { path: string; type: 'dir'; mode: number }
  | { path: string; type: 'file'; mode: number; data: Buffer }
  | { path: string; type: 'symlink'; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const TRAILER = 'TRAILER!!!';

/** The archive of `entries` (paths relative, without a leading slash), in path order. */
export function newcArchive(entries: readonly CpioEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const parts: Buffer[] = [];
  sorted.forEach((entry, i) => {
    if (!entry.path || entry.path.startsWith('/')) throw new Error(`invalid cpio path ${JSON.stringify(entry.path)}`);
    if (i > 0 && sorted[i - 1]!.path === entry.path) throw new Error(`duplicate cpio path ${entry.path}`);
    const [mode, data] =
      entry.type === 'dir'
        ? [S_IFDIR | entry.mode, Buffer.alloc(0)]
        : entry.type === 'file'
          ? [S_IFREG | entry.mode, entry.data]
          : [S_IFLNK | 0o777, Buffer.from(entry.target)];
    parts.push(...record(i + 1, mode, entry.type === 'dir' ? 2 : 1, entry.path, data));
  });
  parts.push(...record(0, 0, 1, TRAILER, Buffer.alloc(0)));
  return Buffer.concat(parts);
}

function record(ino: number, mode: number, nlink: number, name: string, data: Buffer): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`);
  // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
  const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`);
  return [header, nameBytes, pad(header.length + nameBytes.length), data, pad(data.length)];
}

function pad(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}
