/**
 * QEMU snapshots (docs/microvm.md): a template VM boots with no instance until its agent runs and waits
 * for its token (init's `awaiting-config`), and its migration state is written to a file. A start then
 * resumes that state (`-incoming`, vm.ts) instead of booting: kernel, init and node's start are done.
 *
 * A snapshot fits only the machine it was taken of: the key is a digest of QEMU's version and the
 * whole command line with the per-instance parts left out (image files, so the image's hash; memory;
 * vCPUs; the kernel command line with node's arguments and the guest port; accelerator). Anything
 * else gets another key, so a new snapshot. The code slot holds a placeholder disk in the template;
 * a restore puts the function's disk there and the guest re-reads it. The state file is only ever
 * read (QEMU copies it into the guest's own RAM), so one serves every restore.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, chown, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { INIT_EVENTS } from '../../../../guest/agent/protocol.mjs';
import type { InstanceChannel } from '../../channel.js';
import { launchInstance } from '../../instance/instance.js';
import { GuestConsole } from '../guest.js';
import { PORT_FDS } from './args.js';
import type { ConfinedVm } from './confine.js';
import { Qmp, qmpArgs } from './qmp.js';

const TEMPLATE_QMP_FD = 6;
const STATE_FILE = 'state';
/** The template's code slot: never mounted, only there so that the guest has the disk slot. */
const PLACEHOLDER_BYTES = 1 << 20;

export function snapshotKey(qemuVersion: string, machineArgs: string[]): string {
  return createHash('sha256')
    .update(JSON.stringify([qemuVersion, machineArgs]))
    .digest('hex');
}

/** Snapshots on disk by key, each built once (in the background when a start asks for a missing one). */
export class Snapshots {
  private readonly building = new Map<string, Promise<string>>();
  /** Keys whose build failed, with why: not retried by this process (each try is a whole VM boot). */
  private readonly failed = new Map<string, Error>();

  constructor(readonly dir: string) {}

  /** The template's code disk: a file of zeros, the same for every snapshot. */
  async placeholder(): Promise<string> {
    const file = path.join(this.dir, 'placeholder.img');
    if (!(await exists(file))) {
      await mkdir(this.dir, { recursive: true });
      await writeFile(`${file}.${process.pid}`, Buffer.alloc(PLACEHOLDER_BYTES));
      await rename(`${file}.${process.pid}`, file);
    }
    return file;
  }

  /** The state file when the snapshot exists; else undefined, and its build starts in the background. */
  async find(key: string, build: (out: string) => Promise<void>): Promise<string | undefined> {
    const file = this.stateFile(key);
    if (await exists(file)) return file;
    this.ensure(key, build).catch(() => {}); // a failure is remembered; starts boot meanwhile
    return undefined;
  }

  /** The state file, built first if missing (once, however many ask). */
  ensure(key: string, build: (out: string) => Promise<void>): Promise<string> {
    const failure = this.failed.get(key);
    if (failure) return Promise.reject(failure);
    let pending = this.building.get(key);
    if (!pending) {
      const file = this.stateFile(key);
      pending = (async () => {
        if (await exists(file)) return file;
        await mkdir(path.dirname(file), { recursive: true });
        const partial = `${file}.${process.pid}.partial`;
        try {
          await build(partial);
          await rename(partial, file); // whole or absent: a restore never sees half a state
        } catch (err) {
          await rm(partial, { force: true });
          this.failed.set(key, err instanceof Error ? err : new Error(String(err)));
          throw err;
        }
        return file;
      })().finally(() => this.building.delete(key));
      this.building.set(key, pending);
    }
    return pending;
  }

  private stateFile(key: string): string {
    return path.join(this.dir, key, STATE_FILE);
  }
}

export interface TemplateLaunch {
  id: string;
  qemu: string;
  /** The machine's command line, as for an instance (code slot: the placeholder). */
  args: string[];
  /** The template's own (never used) metadata service: QEMU connects its port at start. */
  channel: InstanceChannel;
  memoryMb: number;
  timeoutMs: number;
  /** Where to write the migration state. */
  out: string;
  confined?: Pick<ConfinedVm, 'uid' | 'exec' | 'release'>;
}

/** Boots the template, waits until its agent waits for a token, migrates it into `out`, ends it. */
export async function takeSnapshot(t: TemplateLaunch): Promise<void> {
  let qmp: Promise<Qmp> | undefined;
  const args = [...t.args, ...qmpArgs(TEMPLATE_QMP_FD)];
  const vm = await launchInstance({
    id: t.id,
    startTimeoutMs: t.timeoutMs,
    onLog: () => {},
    ...(t.confined ? t.confined.exec(t.qemu, args) : { command: t.qemu, args }),
    cleanup: t.confined?.release,
    stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
    channel: t.channel,
    start: (child, output) =>
      new Promise((waiting) => {
        const ports = child.stdio as unknown as Duplex[];
        qmp = Qmp.open(ports[TEMPLATE_QMP_FD]!);
        for (const fd of Object.values(PORT_FDS)) ports[fd]!.on('error', () => {}).resume();
        const guest = new GuestConsole({ memoryMb: t.memoryMb }, (event) => event === INIT_EVENTS.awaitingConfig && waiting());
        output.diagnostics(child.stdout!, (line) => guest.line(line));
        output.diagnostics(child.stderr!, undefined, 'qemu: ');
      }),
  });
  try {
    await migrateTo(await qmp!, t.out, t.confined?.uid);
  } finally {
    await vm.stop(0);
  }
}

/**
 * QEMU 7.2 has no `file:` migration, and an outgoing `fd:` needs the fd sent over QMP (SCM_RIGHTS);
 * so it migrates to a Unix socket this process listens on and copies into the file. Live (not
 * paused first): a resumed copy then runs by itself.
 */
async function migrateTo(qmp: Qmp, out: string, uid: number | undefined): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'aether-migrate-'));
  const socketPath = path.join(dir, 'sock');
  const server = createServer();
  try {
    const received = new Promise<void>((resolve, reject) => {
      server.once('connection', (conn) => {
        server.close();
        pipeline(conn, createWriteStream(out, { mode: 0o600 })).then(resolve, reject);
      });
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(socketPath, resolve));
    if (uid !== undefined) await Promise.all([chown(dir, uid, uid), chown(socketPath, uid, uid)]); // QEMU connects as that uid
    await qmp.execute('migrate', { uri: `unix:${socketPath}` });
    await received;
    for (;;) {
      const info = (await qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
      await sleep(20); // the stream has ended; QEMU sets the status as it tidies up
    }
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}
