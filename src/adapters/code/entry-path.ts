import { unsafePath } from './archive-errors.js';

/**
 * Turns an archive entry name into path segments relative to the extraction root, or rejects it.
 * Backslashes count as separators: archives made on Windows use them, and a literal "..\x"
 * must not slip past the ".." check. An empty result means the root itself (tar's "./").
 */
export function entrySegments(name: string): string[] {
  if (name.includes('\0')) throw unsafePath(name, 'contains a NUL byte');
  const slashed = name.replaceAll('\\', '/');
  // "C:" also covers drive-relative "C:x"; a leading "//" is a UNC path.
  if (slashed.startsWith('/') || /^[A-Za-z]:/.test(slashed)) throw unsafePath(name, 'has an absolute path');
  const segments = slashed.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.includes('..')) throw unsafePath(name, 'points outside the archive root');
  return segments;
}
