/**
 * The root of a pre-started (pooled) sandbox, into which its function's code is mounted after the
 * sandbox started. Each slot is a bind mount of the read-only root skeleton made a shared mount of
 * its own, and the sandbox's `/` is a bind of the slot: bwrap makes the sandbox's mounts slaves of
 * the host's, and so does runsc for its gofer, so a mount made on the host at `<slot>/code` later
 * appears in the running sandbox at `/code`. A mount propagates with the flags it has when it
 * arrives: the code is bound read-only in a private staging place first and then moved in.
 *
 * The code lands on a directory inside the slot, not on top of the sandbox's root: gVisor's gofer
 * holds the root open and sees what is mounted below it, not on it. Slots live under one private
 * mount (so that neither the staging places nor the slots propagate anywhere else, whatever the
 * host's own mounts do) and each slot is its own peer group: a mount into one reaches no other sandbox.
 */
import { type ChildProcessWithoutNullStreams, execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdir, readdir, readFile, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { GUEST_PATHS } from '../../../guest/agent/protocol.mjs';

const run = promisify(execFile);
const STAGE = '.stage';

/**
 * Mounting the code is on the path of every cold start from the pool, where two runs of mount(8)
 * cost 6 ms on an idle host and 15-40 ms on a busy one: one perl process (perl-base is part of every
 * Debian) stays running and makes the three mount(2) calls for each request it reads on stdin (the
 * code dir, the staging place and the slot's code dir, a line each), answering `ok` or `error <why>`.
 */
const MOUNT_HELPER = String.raw`
use strict; use warnings; use Config;
$| = 1;
my %SYS_MOUNT = (x86_64 => 165, aarch64 => 40);
my $sys_mount = $SYS_MOUNT{(split /-/, $Config{archname})[0]} or die "unsupported architecture $Config{archname}
";
use constant { MS_RDONLY => 1, MS_REMOUNT => 32, MS_BIND => 4096, MS_MOVE => 8192 };
sub mnt { my ($src, $dst, $flags) = @_; my $type = ''; syscall($sys_mount, $src, $dst, $type, $flags, 0) == 0 ? '' : "$!" }
while (defined(my $code = <STDIN>)) {
  my ($stage, $slot) = (scalar <STDIN>, scalar <STDIN>);
  last unless defined $slot;
  chomp($code, $stage, $slot);
  my $err = mnt($code, $stage, MS_BIND) || mnt('', $stage, MS_REMOUNT | MS_BIND | MS_RDONLY) || mnt($stage, $slot, MS_MOVE);
  print $err eq '' ? "ok\n" : "error $err\n";
}`;

export class CodeSlots {
  readonly dir: string;
  private readonly env: NodeJS.ProcessEnv;
  private prepared?: Promise<void>;
  private helper?: MountHelper;

  constructor(
    stateDir: string,
    private readonly rootDir: string,
    hostPath: string,
  ) {
    this.dir = path.join(stateDir, 'slots');
    this.env = { PATH: hostPath };
  }

  /** A new slot: the root skeleton, as the shared mount a sandbox's `/` is bound from. */
  async create(id: string): Promise<CodeSlot> {
    this.prepared ??= this.preparePrivate().catch((err: unknown) => {
      this.prepared = undefined;
      throw err;
    });
    await this.prepared;
    const slot = this.slot(id);
    await mkdir(slot.root, { mode: 0o711 });
    await mkdir(slot.stage, { mode: 0o700 });
    try {
      await this.mount('--bind', this.rootDir, slot.root);
      await this.mount('--make-shared', slot.root);
    } catch (err) {
      await slot.remove();
      throw err;
    }
    return slot;
  }

  /** Unmounts and removes what a previous life left behind (its sandboxes died with it). */
  async sweep(): Promise<number> {
    const ids = (await readdir(this.dir).catch(() => [])).filter((name) => !name.endsWith(STAGE));
    await Promise.all(ids.map((id) => this.slot(id).remove()));
    return ids.length;
  }

  private slot(id: string): CodeSlot {
    const root = path.join(this.dir, id);
    return new CodeSlot(root, `${root}${STAGE}`, this.env, (...paths) => this.mountCode(...paths));
  }

  /** Through the helper, started on first use and again after it ended. */
  private mountCode(codeDir: string, stage: string, target: string): Promise<void> {
    this.helper ??= new MountHelper(this.env, () => (this.helper = undefined));
    return this.helper.mountCode(codeDir, stage, target);
  }

  /** Once every slot is gone: the private mount goes too, so the data dir can be removed. */
  async close(): Promise<void> {
    this.helper?.close();
    await this.sweep();
    if (await isMountPoint(this.dir)) await run('umount', [this.dir], { env: this.env });
    this.prepared = undefined;
  }

  /** The slots' directory as a private mount of its own (once; it stays until close). */
  private async preparePrivate(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o711 });
    if (await isMountPoint(this.dir)) return;
    await this.mount('--bind', this.dir, this.dir);
    await this.mount('--make-private', this.dir);
  }

  private async mount(...args: string[]): Promise<void> {
    await run('mount', args, { env: this.env });
  }
}

export class CodeSlot {
  constructor(
    /** Host path of the sandbox's root. */
    readonly root: string,
    readonly stage: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly mount: (codeDir: string, stage: string, target: string) => Promise<void>,
  ) {}

  /** Makes `codeDir` appear read-only at /code in the sandbox bound from this slot. */
  mountCode(codeDir: string): Promise<void> {
    return this.mount(codeDir, this.stage, path.join(this.root, GUEST_PATHS.code));
  }

  /** The same for the function's prepared start (fast-start.ts), at GUEST_PATHS.start. */
  mountStart(startDir: string): Promise<void> {
    return this.mount(startDir, this.stage, path.join(this.root, GUEST_PATHS.start));
  }

  /**
   * Unmounts the code and the slot (nothing uses them once the sandbox is gone) and removes both
   * directories, which are empty then: rmdir, never a recursive delete that could reach into a mount.
   */
  async remove(): Promise<void> {
    for (const dir of [this.root, this.stage]) {
      if (await isMountPoint(dir)) await run('umount', ['--recursive', '--lazy', dir], { env: this.env });
      await rmdir(dir).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  }
}

/** Whether `dir` is a mount point in this process's mount table. */
async function isMountPoint(dir: string): Promise<boolean> {
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  // Field 5 is the mount point, with spaces and the like octal-escaped.
  const escaped = path.resolve(dir).replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  return table.split('\n').some((line) => line.split(' ')[4] === escaped);
}

/** The running MOUNT_HELPER: requests are answered in order. */
class MountHelper {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly waiting: Array<{ resolve(): void; reject(err: Error): void }> = [];
  private gone?: Error;

  constructor(env: NodeJS.ProcessEnv, onExit: () => void) {
    this.proc = spawn('perl', ['-e', MOUNT_HELPER], { env, stdio: 'pipe' });
    const stderr: string[] = [];
    this.proc.stderr.on('data', (chunk: Buffer) => stderr.push(chunk.toString()));
    this.proc.stdin.on('error', () => {}); // the exit reports it
    this.proc.on('error', () => {}); // as does the exit (or the close) after a failed spawn
    this.proc.on('close', (code, signal) => {
      this.gone = new Error(`the mount helper ended (${signal ?? `code ${code}`})${stderr.length ? `: ${stderr.join('').trim()}` : ''}`);
      for (const w of this.waiting.splice(0)) w.reject(this.gone);
      onExit();
    });
    createInterface({ input: this.proc.stdout }).on('line', (line) => {
      const w = this.waiting.shift();
      if (line === 'ok') w?.resolve();
      else w?.reject(new Error(`mounting the code failed: ${line.replace(/^error /, '')}`));
    });
  }

  mountCode(codeDir: string, stage: string, target: string): Promise<void> {
    if (this.gone) return Promise.reject(this.gone);
    const paths = [codeDir, stage, target];
    if (paths.some((p) => p.includes('\n'))) return Promise.reject(new Error('a path with a line break cannot be mounted'));
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.proc.stdin.write(`${paths.join('\n')}\n`);
    });
  }

  close(): void {
    this.proc.stdin.end();
  }
}
