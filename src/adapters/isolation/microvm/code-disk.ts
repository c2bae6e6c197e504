/**
 * A function's code reaches its VM as a read-only ext4 disk, built once per version of the code and
 * shared by every VM running it. The key is a digest of the tree's listing (path, type, mode, size,
 * mtime): code directories are unpacked once and never modified, so this names the content without
 * reading every byte on each start; a different tree at the same path gets a different disk.
 */
import { createHash } from 'node:crypto';
import { access, lstat, mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { makeExt4Image } from '../../../guest/image/ext4.js';

export class CodeDisks {
  /** Builds in progress, so that concurrent starts of one function build its disk once. */
  private readonly building = new Map<string, Promise<string>>();

  constructor(private readonly dir: string) {}

  /** Host path of the disk image holding `codeDir`. */
  async diskFor(codeDir: string): Promise<string> {
    const key = await treeKey(codeDir);
    const out = path.join(this.dir, `${key}.ext4`);
    if (
      await access(out).then(
        () => true,
        () => false,
      )
    )
      return out;
    let build = this.building.get(key);
    if (!build) {
      build = (async () => {
        await mkdir(this.dir, { recursive: true });
        await makeExt4Image(codeDir, out, { label: 'aether-code', seed: key });
        return out;
      })().finally(() => this.building.delete(key));
      this.building.set(key, build);
    }
    return build;
  }
}

async function treeKey(dir: string): Promise<string> {
  const hash = createHash('sha256');
  const names = (await readdir(dir, { recursive: true })).sort();
  for (const name of names) {
    const s = await lstat(path.join(dir, name));
    hash.update(`${JSON.stringify(name)} ${s.mode.toString(8)} ${s.size} ${s.mtimeMs}\n`);
  }
  return hash.digest('hex');
}
