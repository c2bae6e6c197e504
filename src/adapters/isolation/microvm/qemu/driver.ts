/**
 * The QEMU driver: each instance is a QEMU `-M microvm` guest booting the shared image of
 * src/guest/image, with the function's code on a read-only disk. The metadata service is the same
 * per-instance, single-use-token service as for the sandboxes (channel.ts), reached by the guest over
 * a virtio-serial port; requests come in through hostfwd to the agent's listen mode. See docs/microvm.md.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import type { InstanceSpec, IsolationDriver } from '../../../../core/ports.js';
import { agentNodeArgs } from '../../../../guest/agent-files.js';
import { AGENT_MODULES, GUEST_PATHS, MMDS_SOCKET } from '../../../../guest/agent/protocol.mjs';
import { buildImage, type GuestImage, type KernelChoice } from '../../../../guest/image/build-image.js';
import { freePort } from '../../../free-port.js';
import { ISOLATION_DRIVERS } from '../../drivers.js';
import { agentConfig, openChannel } from '../../channel.js';
import { CodeDisks } from '../code-disk.js';
import { guestMemoryMb, guestVcpus } from '../guest.js';
import { probeAccel, type ProbeResult } from './accel.js';
import { qemuArgs, type Accel } from './args.js';
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
}

export class QemuDriver implements IsolationDriver {
  readonly name = 'qemu';
  private readonly codeDisks: CodeDisks;

  private constructor(
    private readonly opts: QemuDriverOptions,
    private readonly qemu: string,
    readonly image: GuestImage,
    readonly accel: ProbeResult,
    private readonly tscKhz: number | undefined,
  ) {
    this.codeDisks = new CodeDisks(path.join(opts.cacheDir, 'code'));
  }

  /** Builds (or finds) the guest image and settles the accelerator, once per driver. */
  static async create(opts: QemuDriverOptions): Promise<QemuDriver> {
    const qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
    await run(qemu, ['--version']).catch((err: NodeJS.ErrnoException) => {
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
    return new QemuDriver(opts, qemu, image, accel, tscKhz);
  }

  async start(requested: InstanceSpec): Promise<VmInstance> {
    const floor = this.accel.accel === 'tcg' ? (this.opts.tcgMinStartTimeoutMs ?? 60_000) : 0;
    const spec = { ...requested, startTimeoutMs: Math.max(requested.startTimeoutMs, floor) };
    const codeDisk = await this.codeDisks.diskFor(spec.codeDir);
    const guestPort = spec.port === AGENT_PORT ? AGENT_PORT + 1 : AGENT_PORT;
    const nodeArgs = [
      '--import',
      path.posix.join(GUEST_PATHS.agent, AGENT_MODULES.listenMode),
      ...agentNodeArgs(spec.memoryMb, GUEST_PATHS.agent),
    ];
    for (let attempt = 1; ; attempt++) {
      const hostPort = await freePort();
      const channel = await openChannel({ runDir: this.opts.runDir, instanceId: spec.instanceId, config: agentConfig(spec) });
      let args: string[];
      try {
        args = qemuArgs({
          image: this.image,
          accel: this.accel.accel,
          memoryMb: guestMemoryMb(spec.memoryMb),
          vcpus: guestVcpus(spec.vcpu),
          codeDisk,
          mmdsSocket: path.join(channel.dir, MMDS_SOCKET),
          hostPort,
          guestPort,
          nodeArgs,
          tscKhz: this.tscKhz,
        });
      } catch (err) {
        await channel.close();
        throw err;
      }
      try {
        return await launchVm({ spec, channel, qemu: this.qemu, args, hostPort });
      } catch (err) {
        const clash = err instanceof Error && err.message.includes('Could not set up host forwarding rule');
        if (!clash || attempt === PORT_ATTEMPTS) throw err;
      }
    }
  }
}
