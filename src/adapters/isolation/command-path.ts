/** Where a host command lives, for the places that need its absolute path rather than a PATH lookup. */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import path from 'node:path';

/** The executable `name` would run with `searchPath` as PATH (a name with a slash is taken as a path). */
export async function commandPath(name: string, searchPath = process.env.PATH ?? ''): Promise<string> {
  if (name.includes('/')) return path.resolve(name);
  for (const dir of searchPath.split(':').filter(Boolean)) {
    const file = path.resolve(dir, name);
    if (
      await access(file, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return file;
  }
  throw new Error(`${name} not found on PATH`);
}
