/**
 * The QEMU driver: each instance is a QEMU `-M microvm` guest booting the shared image of
 * src/guest/image, with the function's code on a read-only disk. The metadata service is the same
 * per-instance, single-use-token service as for the sandboxes (channel.ts), reached by the guest over
 * a virtio-serial port; requests come in through hostfwd to the agent's listen mode. A start resumes
 * the machine's snapshot when there is one (snapshot.ts), else boots while one is built in the
 * background. See docs/microvm.md.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { errorMessage } from '../../../../core/errors.js';
import type { InstanceSpec, IsolationDriver } from '../../../../core/ports.js';
import { agentNodeArgs } from '../../../../guest/agent-files.js';
import { AGENT_MODULES, GUEST_PATHS, MMDS_SOCKET } from '../../../../guest/agent/protocol.mjs';
import { buildImage, type GuestImage, type KernelChoice } from '../../../../guest/image/build-image.js';
import { freePort } from '../../../free-port.js';
import { ISOLATION_DRIVERS } from '../../drivers.js';
import { agentConfig, openChannel, type InstanceChannel } from '../../channel.js';
import { CodeDisks } from '../code-disk.js';
import { guestMemoryMb, guestVcpus } from '../guest.js';
import { probeAccel, type ProbeResult } from './accel.js';
import { qemuArgs, type Accel, type VmLaunch } from './args.js';
import { confineVm, type ConfinedVm, type QemuConfinement } from './confine.js';
import { Snapshots, snapshotKey, takeSnapshot } from './snapshot.js';
import { hostTscKhz } from './tsc.js';
import { launchVm, type VmInstance } from './vm.js';

const run = promisify(execFile);
/** Where the agent listens in the guest (unless the function wants that port). */
const AGENT_PORT = 50_000;
/** QEMU binds the hostfwd port itself: if another process took it since we looked, try another. */
const PORT_ATTEMPTS = 3;

export interface QemuDriverOptions {
  /** Where the per-instance channel directories (metadata sockets) are created. */
  runDir: string;
  /** Kernels, built images and code disks. */
  cacheDir: string;
  /** `auto` boots a probe VM under KVM and falls back to TCG. */
  accel?: 'auto' | Accel;
  /** The guest kernel (KERNEL_PATH, KERNEL_MODULES_DIR; default: Debian's cloud kernel). */
  kernel?: KernelChoice;
  qemuBinary?: string;
  kvmProbeTimeoutMs?: number;
  onProgress?: (message: string) => void;
  /**
   * Under TCG a boot takes 5-7 s here (several times that on a busy host), so start timeouts meant for
   * sandboxes are raised to this (default 60 s).
   */
  tcgMinStartTimeoutMs?: number;
  /** Resume snapshots of VMs whose agent already runs, instead of booting (default true; AETHER_VM_SNAPSHOTS). */
  snapshots?: boolean;
  /** Where snapshots are kept (default `<cacheDir>/snapshots`). */
  snapshotDir?: string;
  /** How long a snapshot's template may take to boot (default 120 s). */
  templateTimeoutMs?: number;
  /** Run each QEMU in its own cgroups as its own unprivileged uid (confine.ts); unset: as this process. */
  confine?: QemuConfinement;
}

/** What a snapshot must match, besides the image: the machine's size and what the guest runs. */
type Machine = Pick<VmLaunch, 'memoryMb' | 'vcpus' | 'guestPort' | 'nodeArgs'>;
/** The per-instance parts of a VM's command line. */
type Attachments = Pick<VmLaunch, 'codeDisk' | 'mmdsSocket' | 'hostPort'>;

export class QemuDriver implements IsolationDriver {
  readonly name = 'qemu';
  private readonly codeDisks: CodeDisks;
  private readonly snapshots?: Snapshots;

  private constructor(
    private readonly opts: QemuDriverOptions,
    private readonly qemu: string,
    private readonly qemuVersion: string,
    readonly image: GuestImage,
    readonly accel: ProbeResult,
    private readonly tscKhz: number | undefined,
  ) {
    this.codeDisks = new CodeDisks(path.join(opts.cacheDir, 'code'));
    if (opts.snapshots !== false) this.snapshots = new Snapshots(opts.snapshotDir ?? path.join(opts.cacheDir, 'snapshots'));
  }

  /** Builds (or finds) the guest image and settles the accelerator, once per driver. */
  static async create(opts: QemuDriverOptions): Promise<QemuDriver> {
    const qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
    const { stdout: version } = await run(qemu, ['--version']).catch((err: NodeJS.ErrnoException) => {
      throw new Error(
        err.code === 'ENOENT' ? `${qemu} not found: ${ISOLATION_DRIVERS.qemu.install}` : `${qemu} --version failed: ${err.message}`,
      );
    });
    const image = await buildImage({ cacheDir: opts.cacheDir, kernel: opts.kernel, onProgress: opts.onProgress });
    const accel =
      opts.accel === 'kvm' || opts.accel === 'tcg'
        ? { accel: opts.accel, detail: 'configured' }
        : await probeAccel(qemu, image, opts.kvmProbeTimeoutMs ?? 8000);
    // Under KVM the guest has kvmclock; only TCG guests need to be told the TSC's rate.
    const tscKhz = accel.accel === 'tcg' ? await hostTscKhz() : undefined;
    return new QemuDriver(opts, qemu, version.trim(), image, accel, tscKhz);
  }

  async start(requested: InstanceSpec): Promise<VmInstance> {
    const floor = this.accel.accel === 'tcg' ? (this.opts.tcgMinStartTimeoutMs ?? 60_000) : 0;
    const spec = { ...requested, startTimeoutMs: Math.max(requested.startTimeoutMs, floor) };
    const codeDisk = await this.codeDisks.diskFor(spec.codeDir);
    const machine = this.machine(spec);
    const state = await this.findSnapshot(machine, spec.onLog);
    if (state) {
      try {
        return await this.launch(spec, machine, codeDisk, state);
      } catch (err) {
        spec.onLog('stderr', `[aether-vm] resuming the snapshot failed (${errorMessage(err)}); booting instead`);
      }
    }
    return this.launch(spec, machine, codeDisk);
  }

  /**
   * The snapshot that starts of this size and port resume, built now if missing (starts build it in
   * the background by themselves; this is for those who want to wait, e.g. before measuring).
   */
  async prepareSnapshot(spec: Pick<InstanceSpec, 'memoryMb' | 'vcpu' | 'port'>): Promise<string> {
    if (!this.snapshots) throw new Error('snapshots are off for this driver');
    const machine = this.machine(spec);
    return this.snapshots.ensure(await this.snapshotKey(machine), (out) => this.buildSnapshot(machine, out));
  }

  private machine(spec: Pick<InstanceSpec, 'memoryMb' | 'vcpu' | 'port'>): Machine {
    return {
      memoryMb: guestMemoryMb(spec.memoryMb),
      vcpus: guestVcpus(spec.vcpu),
      guestPort: spec.port === AGENT_PORT ? AGENT_PORT + 1 : AGENT_PORT,
      nodeArgs: [
        '--import',
        path.posix.join(GUEST_PATHS.agent, AGENT_MODULES.listenMode),
        ...agentNodeArgs(spec.memoryMb, GUEST_PATHS.agent),
      ],
    };
  }

  private args(machine: Machine, attached: Attachments): string[] {
    return qemuArgs({ ...machine, ...attached, image: this.image, accel: this.accel.accel, tscKhz: this.tscKhz });
  }

  private async snapshotKey(machine: Machine): Promise<string> {
    const placeholder = await this.snapshots!.placeholder();
    return snapshotKey(this.qemuVersion, this.args(machine, { codeDisk: placeholder, mmdsSocket: '', hostPort: 0 }));
  }

  private async findSnapshot(machine: Machine, onLog: InstanceSpec['onLog']): Promise<string | undefined> {
    if (!this.snapshots) return undefined;
    try {
      return await this.snapshots.find(await this.snapshotKey(machine), (out) => this.buildSnapshot(machine, out));
    } catch (err) {
      onLog('stderr', `[aether-vm] no snapshot (${errorMessage(err)}); booting`);
      return undefined;
    }
  }

  private async buildSnapshot(machine: Machine, out: string): Promise<void> {
    const id = `template-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const hostPort = await freePort();
    const spec: InstanceSpec = {
      instanceId: id,
      functionId: id,
      codeDir: '',
      env: {},
      port: machine.guestPort,
      memoryMb: machine.memoryMb,
      vcpu: machine.vcpus,
      concurrency: 1,
      startTimeoutMs: 0,
      onLog: () => {},
    };
    const confined = await this.confineVm(id, machine.memoryMb, machine.vcpus);
    const channel = await openChannel({ runDir: this.opts.runDir, instanceId: id, config: agentConfig(spec), uid: confined?.uid }).catch(
      async (err) => {
        await confined?.release();
        throw err;
      },
    );
    this.opts.onProgress?.(`snapshot: booting a template (${machine.memoryMb} MB, ${machine.vcpus} vCPU)`);
    const started = Date.now();
    await takeSnapshot({
      confined,
      id,
      qemu: this.qemu,
      args: this.args(machine, {
        codeDisk: await this.snapshots!.placeholder(),
        mmdsSocket: path.join(channel.dir, MMDS_SOCKET),
        hostPort,
      }),
      channel,
      memoryMb: machine.memoryMb,
      timeoutMs: this.opts.templateTimeoutMs ?? 120_000,
      out,
    });
    this.opts.onProgress?.(`snapshot: taken in ${Date.now() - started} ms`);
  }

  private confineVm(id: string, memoryMb: number, vcpu: number): Promise<ConfinedVm | undefined> {
    return this.opts.confine ? confineVm(this.opts.confine, id, { accel: this.accel.accel, memoryMb, vcpu }) : Promise.resolve(undefined);
  }

  /** Boots, or resumes `state`; QEMU binds the hostfwd port itself, so a port taken meanwhile means another try. */
  private async launch(spec: InstanceSpec, machine: Machine, codeDisk: string, state?: string): Promise<VmInstance> {
    for (let attempt = 1; ; attempt++) {
      const hostPort = await freePort();
      const confined = await this.confineVm(spec.instanceId, machine.memoryMb, spec.vcpu);
      let channel: InstanceChannel | undefined;
      let args: string[];
      try {
        channel = await openChannel({
          runDir: this.opts.runDir,
          instanceId: spec.instanceId,
          config: agentConfig(spec),
          uid: confined?.uid,
        });
        args = this.args(machine, { codeDisk, mmdsSocket: path.join(channel.dir, MMDS_SOCKET), hostPort });
      } catch (err) {
        await channel?.close();
        await confined?.release();
        throw err;
      }
      try {
        return await launchVm({ spec, channel, qemu: this.qemu, args, hostPort, state, confined });
      } catch (err) {
        const clash = err instanceof Error && err.message.includes('Could not set up host forwarding rule');
        if (!clash || attempt === PORT_ATTEMPTS) throw err;
      }
    }
  }
}
