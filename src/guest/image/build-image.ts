/**
 * Builds the microVM guest image, cached by the hash of everything that goes into it:
 * - `kernel`: Debian's cloud kernel, or one of your own (KERNEL_PATH);
 * - `initrd`: a small initramfs (busybox, the virtio modules, /init from init-script.ts), so that the
 *   kernel has little to unpack;
 * - `rootfs`: a read-only ext4 image with the host's node binary, the libraries ldd names for it,
 *   busybox as /bin/sh, socat (Firecracker guests relay the agent's sockets to vsock with it) and
 *   the guest agent. Every VM attaches the same file read-only; what a VM
 *   writes goes to its own tmpfs. Keeping node out of the initramfs saves ~2 s of boot under TCG
 *   (no 40 MB gunzip) and ~100 MB of pinned RAM per VM, which makes 128 MB VMs possible.
 * Reproducible: the same inputs give the same bytes (sorted cpio with fixed metadata, gzip without
 * name or time, ext4 with seeded UUIDs, fixed timestamps and mtimes).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { createReadStream } from 'node:fs';
import {
  access,
  chmod,
  copyFile,
  lutimes,
  mkdir,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { agentDir } from '../agent-files.js';
import { GUEST_PATHS } from '../agent/protocol.mjs';
import { debianCloudKernel, type KernelFiles } from './debian-kernel.js';
import { makeExt4Image } from './ext4.js';
import { initScript } from './init-script.js';
import { newcArchive, type CpioEntry } from './newc.js';

const run = promisify(execFile);

/** Bump when the layout changes in a way the inputs do not show. */
const FORMAT = 'aether-microvm-image/1';
/** Load order matters: each needs the ones before it (virtio_blk and virtio_console only virtio_mmio). */
export const GUEST_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_mmio',
  'failover',
  'net_failover',
  'virtio_net',
  'virtio_blk',
  'virtio_console',
];
/** Loaded by init under Firecracker only, after GUEST_MODULES. */
export const GUEST_VSOCK_MODULES = ['vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport'];
const BUSYBOX = '/bin/busybox';
const GUEST_NODE = '/usr/bin/node';
/** Debian's socat (1.7.4) has VSOCK-CONNECT. */
const SOCAT = '/usr/bin/socat';
/** Mount points the init needs in the root image. */
const ROOT_DIRS = ['code', 'dev', 'proc', 'run', 'tmp'];
const FIXED_MTIME = 1_700_000_000;

export interface BuildImageOptions {
  /** Holds downloaded kernels and built images (`images/<hash>/`). */
  cacheDir: string;
  /** Default: Debian's cloud kernel. */
  kernel?: KernelChoice;
  onProgress?: (message: string) => void;
}

/** A guest kernel of your own (KERNEL_PATH), and its `lib/modules/<version>` (KERNEL_MODULES_DIR; none: virtio built in). */
export interface KernelChoice {
  path?: string;
  modulesDir?: string;
}

export interface GuestImage {
  kernel: string;
  initrd: string;
  /** Read-only root filesystem image (ext4), attached to every VM. */
  rootfs: string;
  /** sha256 of the inputs, which names the image directory. */
  hash: string;
}

/** A file going into the image: where it lands in the guest, and where its bytes are on the host. */
interface Input {
  guestPath: string;
  hostPath: string;
  mode: number;
}

export async function buildImage(opts: BuildImageOptions): Promise<GuestImage> {
  const progress = opts.onProgress ?? (() => {});
  const kernel = await resolveKernel(opts, progress);
  const modules = kernel.modulesDir ? await findModules(kernel.modulesDir, GUEST_MODULES) : [];
  const vsockModules = kernel.modulesDir ? await findModules(kernel.modulesDir, GUEST_VSOCK_MODULES) : [];
  const names = (inputs: Input[]) => inputs.map((m) => path.basename(m.guestPath, '.ko'));
  const script = initScript(names(modules), names(vsockModules));
  const initrdInputs = [{ guestPath: '/bin/busybox', hostPath: await staticBusybox(), mode: 0o755 }, ...modules, ...vsockModules];
  await access(SOCAT).catch(() => {
    throw new Error(`${SOCAT} not found: apt-get install socat`);
  });
  const rootInputs = [
    { guestPath: '/bin/busybox', hostPath: BUSYBOX, mode: 0o755 },
    ...uniqueGuestPaths([...(await withLibraries(await realpath(process.execPath), GUEST_NODE)), ...(await withLibraries(SOCAT, SOCAT))]),
    ...(await agentFiles()),
  ];

  const hash = await inputsHash(await DigestCache.open(opts.cacheDir), kernel.kernel, script, initrdInputs, rootInputs);
  const dir = path.join(opts.cacheDir, 'images', hash);
  const image = { kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.gz'), rootfs: path.join(dir, 'rootfs.ext4'), hash };
  if (await exists(dir)) return image;

  progress(`building guest image ${hash.slice(0, 12)}`);
  const tmp = `${dir}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await mkdir(tmp, { recursive: true });
    await copyFile(kernel.kernel, path.join(tmp, 'vmlinuz'));
    await writeFile(path.join(tmp, 'initrd.gz'), gzipSync(await initramfs(script, initrdInputs), { level: 9 }));
    const stage = path.join(tmp, 'root');
    await stageTree(stage, rootInputs);
    progress('building the root image (mkfs.ext4)');
    await makeExt4Image(stage, path.join(tmp, 'rootfs.ext4'), { label: 'aether-root', seed: hash, reproducible: true });
    await rm(stage, { recursive: true });
    await chmod(tmp, 0o755);
    await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
      // Another build of the same inputs got there first: theirs is as good as ours.
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return image;
}

async function resolveKernel(opts: BuildImageOptions, progress: (msg: string) => void): Promise<KernelFiles> {
  const { path: kernelPath, modulesDir } = opts.kernel ?? {};
  if (!kernelPath) return debianCloudKernel(opts.cacheDir, progress);
  await access(kernelPath, constants.R_OK);
  return { kernel: kernelPath, modulesDir };
}

/** `wanted` modules as shipped with the kernel; those it has built in are skipped. */
async function findModules(modulesDir: string, wanted: readonly string[]): Promise<Input[]> {
  const files = await readdir(path.join(modulesDir, 'kernel'), { recursive: true });
  const builtin = await readFile(path.join(modulesDir, 'modules.builtin'), 'utf8').catch(() => '');
  const inputs: Input[] = [];
  for (const name of wanted) {
    const file = files.find((f) => path.basename(f) === `${name}.ko`);
    if (file) inputs.push({ guestPath: `/lib/modules/${name}.ko`, hostPath: path.join(modulesDir, 'kernel', file), mode: 0o644 });
    else if (!builtin.split('\n').some((line) => path.basename(line) === `${name}.ko`)) {
      throw new Error(`kernel module ${name} is neither in ${modulesDir} nor built in (uncompressed .ko files expected)`);
    }
  }
  return inputs;
}

/** The initramfs has no libc: only a statically linked busybox runs there. */
async function staticBusybox(): Promise<string> {
  await access(BUSYBOX).catch(() => {
    throw new Error(`${BUSYBOX} not found: apt-get install busybox-static`);
  });
  type Output = { stdout?: string; stderr?: string };
  const said = await run('ldd', [BUSYBOX]).then(
    (r: Output) => `${r.stdout}${r.stderr}`,
    (err: Output) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
  );
  if (!/not a dynamic executable|statically linked/.test(said)) {
    throw new Error(`${BUSYBOX} is dynamically linked: apt-get install busybox-static`);
  }
  return BUSYBOX;
}

/** A host binary and what `ldd` says it loads, each at the path the dynamic loader will look for it. */
async function withLibraries(binary: string, guestPath: string): Promise<Input[]> {
  const { stdout } = await run('ldd', [binary]);
  const libs = [...stdout.matchAll(/^\s*(?:\S+ => )?(\/\S+) \(0x[0-9a-f]+\)$/gm)].map((m) => m[1]!);
  if (!libs.some((lib) => lib.includes('/ld-linux'))) throw new Error(`ldd ${binary} named no dynamic loader:\n${stdout}`);
  return [
    { guestPath, hostPath: binary, mode: 0o755 },
    ...(await Promise.all(libs.map(async (lib) => ({ guestPath: lib, hostPath: await realpath(lib), mode: 0o755 })))),
  ];
}

/** Binaries share libraries (libc, the loader): each goes in once. */
function uniqueGuestPaths(inputs: Input[]): Input[] {
  return [...new Map(inputs.map((input) => [input.guestPath, input])).values()];
}

async function agentFiles(): Promise<Input[]> {
  const dir = agentDir();
  const names = (await readdir(dir)).filter((f) => f.endsWith('.mjs')).sort();
  return names.map((name) => ({ guestPath: path.posix.join(GUEST_PATHS.agent, name), hostPath: path.join(dir, name), mode: 0o644 }));
}

async function inputsHash(digests: DigestCache, kernel: string, script: string, ...groups: Input[][]): Promise<string> {
  const hash = createHash('sha256')
    .update(`${FORMAT}\n`)
    .update(script)
    .update(await digests.of(kernel));
  for (const [i, group] of groups.entries()) {
    for (const input of [...group].sort((a, b) => a.guestPath.localeCompare(b.guestPath))) {
      hash.update(`\n${i} ${input.guestPath} ${input.mode.toString(8)} ${await digests.of(input.hostPath)}`);
    }
  }
  await digests.save();
  return hash.digest('hex');
}

/**
 * sha256 of input files, remembered in the cache dir by path, inode, size and mtime: finding an
 * already built image must not re-read node's ~100 MB on every start of Aether.
 */
class DigestCache {
  private changed = false;
  private constructor(
    private readonly file: string,
    private readonly known: Record<string, string>,
  ) {}

  static async open(cacheDir: string): Promise<DigestCache> {
    const file = path.join(cacheDir, 'digests.json');
    const known = await readFile(file, 'utf8').then(
      (text) => JSON.parse(text) as Record<string, string>,
      () => ({}),
    );
    return new DigestCache(file, known);
  }

  async of(file: string): Promise<string> {
    const st = await stat(file);
    const key = `${await realpath(file)} ${st.dev}:${st.ino} ${st.size} ${st.mtimeMs}`;
    const known = this.known[key];
    if (known) return known;
    const digest = await new Promise<string>((resolve, reject) => {
      const hash = createHash('sha256');
      createReadStream(file)
        .on('error', reject)
        .on('data', (chunk) => hash.update(chunk))
        .on('end', () => resolve(hash.digest('hex')));
    });
    this.known[key] = digest;
    this.changed = true;
    return digest;
  }

  /** Written atomically; entries of files that changed since simply stop matching. */
  async save(): Promise<void> {
    if (!this.changed) return;
    await mkdir(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(this.known));
    await rename(tmp, this.file);
  }
}

async function initramfs(script: string, inputs: Input[]): Promise<Buffer> {
  const dirs = new Set(['dev', 'proc', 'sys', 'mnt', 'mnt/root']);
  const entries: CpioEntry[] = [{ path: 'init', type: 'file', mode: 0o755, data: Buffer.from(script) }];
  for (const input of inputs) {
    const rel = input.guestPath.slice(1);
    for (let d = path.posix.dirname(rel); d !== '.'; d = path.posix.dirname(d)) dirs.add(d);
    entries.push({ path: rel, type: 'file', mode: input.mode, data: await readFile(input.hostPath) });
  }
  for (const d of dirs) entries.push({ path: d, type: 'dir', mode: 0o755 });
  return newcArchive(entries);
}

/** Lays out the root image's tree with fixed modes and mtimes, for mkfs.ext4 -d. */
async function stageTree(stage: string, inputs: Input[]): Promise<void> {
  const dirs = new Set<string>(['.', ...ROOT_DIRS]);
  for (const input of inputs) {
    for (let d = path.posix.dirname(input.guestPath.slice(1)); d !== '.'; d = path.posix.dirname(d)) dirs.add(d);
  }
  for (const d of dirs) await mkdir(path.join(stage, d), { recursive: true, mode: 0o755 });
  for (const input of inputs) {
    const target = path.join(stage, input.guestPath);
    await copyFile(input.hostPath, target);
    await chmod(target, input.mode);
  }
  await symlink('busybox', path.join(stage, 'bin/sh'));
  const all = [...inputs.map((i) => i.guestPath.slice(1)), 'bin/sh', ...[...dirs].sort().reverse()];
  for (const rel of all) {
    const p = path.join(stage, rel);
    if ((await stat(p).catch(() => undefined))?.isDirectory()) await chmod(p, 0o755);
    await lutimes(p, FIXED_MTIME, FIXED_MTIME);
  }
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}
