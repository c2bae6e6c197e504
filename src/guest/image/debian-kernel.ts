/**
 * The default guest kernel: Debian's cloud kernel, fetched with apt (`apt-get download`, the archive
 * is reachable here) and unpacked with dpkg-deb, once per package version into the cache.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const META_PACKAGE = 'linux-image-cloud-amd64';
const APT_LISTS = '/var/lib/apt/lists';

export interface KernelFiles {
  /** The bzImage QEMU boots. */
  kernel: string;
  /** `lib/modules/<version>` of the same build, when the kernel has modules. */
  modulesDir?: string;
}

export async function debianCloudKernel(cacheDir: string, onProgress: (msg: string) => void): Promise<KernelFiles> {
  const pkg = await currentPackage(cacheDir);
  const dir = path.join(cacheDir, 'kernels', pkg);
  const found = await unpacked(dir);
  if (found) return found;
  onProgress(`downloading ${pkg}`);
  const tmp = `${dir}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await mkdir(tmp, { recursive: true });
    await run('apt-get', ['download', '-q', pkg], { cwd: tmp }).catch(explain(`apt-get download ${pkg}`));
    const deb = (await readdir(tmp)).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb`);
    await run('dpkg-deb', ['-x', deb, 'root'], { cwd: tmp }).catch(explain('dpkg-deb -x'));
    await rename(path.join(tmp, 'root'), dir);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  const files = await unpacked(dir);
  if (!files) throw new Error(`${pkg} holds no boot/vmlinuz-*`);
  return files;
}

/**
 * The versioned package the meta package points to now, e.g. linux-image-6.1.0-56-cloud-amd64.
 * apt-cache takes ~0.8 s, on every start of Aether: its answer is kept until apt's lists change.
 */
async function currentPackage(cacheDir: string): Promise<string> {
  const remembered = path.join(cacheDir, 'kernels', 'current.json');
  const lists = String((await stat(APT_LISTS).catch(() => undefined))?.mtimeMs);
  const known = await readFile(remembered, 'utf8').then(
    (text) => JSON.parse(text) as { lists: string; pkg: string },
    () => undefined,
  );
  if (known?.lists === lists) return known.pkg;
  const pkg = await askApt();
  await mkdir(path.dirname(remembered), { recursive: true });
  await writeFile(remembered, JSON.stringify({ lists, pkg }));
  return pkg;
}

async function askApt(): Promise<string> {
  const { stdout } = await run('apt-cache', ['depends', META_PACKAGE]).catch(explain(`apt-cache depends ${META_PACKAGE}`));
  const pkg = /Depends:\s*(linux-image-\S+)/.exec(stdout)?.[1];
  if (!pkg) {
    throw new Error(`apt-cache knows no ${META_PACKAGE} (run apt-get update, or set KERNEL_PATH to a kernel of your own)`);
  }
  return pkg;
}

async function unpacked(dir: string): Promise<KernelFiles | undefined> {
  const boot = await readdir(path.join(dir, 'boot')).catch(() => []);
  const vmlinuz = boot.find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuz) return undefined;
  const version = vmlinuz.slice('vmlinuz-'.length);
  return { kernel: path.join(dir, 'boot', vmlinuz), modulesDir: path.join(dir, 'lib/modules', version) };
}

function explain(what: string) {
  return (err: NodeJS.ErrnoException & { stderr?: string }): never => {
    throw new Error(`${what} failed: ${err.code === 'ENOENT' ? 'command not found' : err.stderr?.trim() || err.message}`);
  };
}
