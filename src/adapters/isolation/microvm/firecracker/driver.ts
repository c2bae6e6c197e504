/**
 * The Firecracker driver: each instance is a Firecracker microVM configured over its HTTP API
 * (api.ts), booting the shared guest image (src/guest/image) with the function's code on a read-only
 * disk (the same code disks as QEMU's), a TAP on the host bridge (network.ts) for MMDS and optional
 * egress, and vsock for the agent's channel and output. A generic booted VM can be snapshotted once
 * and restored for each cold start. See docs/microvm.md for what the guest side must do and what
 * is verified only against the API double.
 */
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { constants } from 'node:fs';
import { access, chown, link, mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { AetherError, errorMessage } from '../../../../core/errors.js';
import type { InstanceHandle, InstanceSpec, IsolationDriver } from '../../../../core/ports.js';
import { agentNodeArgs } from '../../../../guest/agent-files.js';
import {
  AGENT_SOCKET,
  FIRECRACKER_VSOCK,
  GUEST_PATHS,
  INIT_EVENTS,
  KERNEL_PARAMS,
  MMDS_KEY,
  MMDS_SOCKET,
  type MmdsInstance,
} from '../../../../guest/agent/protocol.mjs';
import { buildImage, type GuestImage, type KernelChoice } from '../../../../guest/image/build-image.js';
import { agentConfig, openChannel, type InstanceChannel } from '../../channel.js';
import { commandPath } from '../../command-path.js';
import { launchInstance } from '../../instance/instance.js';
import type { InstanceOutput } from '../../instance/output.js';
import { CodeDisks } from '../code-disk.js';
import { GuestConsole, guestMemoryMb, guestVcpus } from '../guest.js';
import { FirecrackerApi } from './api.js';
import { directPlacement, IdPool, jailedPlacement, type JailerConfig, type Placement } from './jailer.js';
import { HostNetwork, type Attachment } from './network.js';
import { API_SOCKET, GUEST_CID, VSOCK_NAME, vmmPlan } from './vmm.js';

const run = promisify(execFile);
/** A probe VM boots the image and powers off at once: the smallest guest does. */
const PROBE_SIZE = { memoryMb: 128 };

export interface FirecrackerDriverOptions {
  /** Per-instance directories (channel sockets, API socket, vsock sockets). */
  runDir: string;
  /** Kernels, images and code disks. */
  cacheDir: string;
  /** Default `firecracker` on PATH. */
  binary?: string;
  /** Default: built by src/guest/image (an x86 Firecracker needs an uncompressed vmlinux: see the docs). */
  image?: Pick<GuestImage, 'kernel' | 'initrd' | 'rootfs'>;
  /** The kernel the image is built with (KERNEL_PATH, KERNEL_MODULES_DIR), when it is built. */
  kernel?: KernelChoice;
  /** Default: the real bridge, TAPs and nftables rules (root only). */
  network?: HostNetwork;
  /** Run Firecracker through the jailer (FIRECRACKER_JAILER: see jailer.ts's jailerConfig). */
  jailer?: JailerConfig;
}

/** A paused, booted, not yet specialised VM saved to disk: restored for each cold start of the same size. */
export interface FirecrackerSnapshot {
  snapshotPath: string;
  memPath: string;
  memoryMb: number;
  vcpus: number;
  /** The template's code disk: a restored VM reopens its drives at the template's paths before the PATCH. */
  placeholder: string;
}

export class FirecrackerDriver implements IsolationDriver {
  readonly name = 'firecracker';
  readonly binary: string;
  private readonly codeDisks: CodeDisks;
  private readonly network: HostNetwork;
  private readonly jailer?: JailerConfig;
  /** Offsets of the jailed uids in use. */
  private readonly ids = new IdPool();
  private template?: FirecrackerSnapshot;

  constructor(
    private readonly opts: FirecrackerDriverOptions,
    readonly image: Pick<GuestImage, 'kernel' | 'initrd' | 'rootfs'>,
  ) {
    this.binary = opts.binary ?? 'firecracker';
    this.codeDisks = new CodeDisks(path.join(opts.cacheDir, 'code'));
    this.network = opts.network ?? new HostNetwork();
    this.jailer = opts.jailer;
  }

  /** Finds the binary and the image (building it if needed). Whether KVM works is `probe()`'s question. */
  static async create(opts: FirecrackerDriverOptions): Promise<FirecrackerDriver> {
    const { jailer } = opts;
    // The jailer needs the binary's path (--exec-file).
    const binary = jailer ? await commandPath(opts.binary ?? 'firecracker') : (opts.binary ?? 'firecracker');
    if (jailer)
      await access(jailer.jailer, constants.X_OK).catch(() => {
        throw new Error(`the jailer ${jailer.jailer} (FIRECRACKER_JAILER) is not an executable file`);
      });
    await run(binary, ['--version']).catch((err: NodeJS.ErrnoException) => {
      throw new Error(
        err.code === 'ENOENT' ? `${binary} not found (set its path or put it on PATH)` : `${binary} --version failed: ${err.message}`,
      );
    });
    return new FirecrackerDriver({ ...opts, binary }, opts.image ?? (await buildImage({ cacheDir: opts.cacheDir, kernel: opts.kernel })));
  }

  /**
   * Boots a probe VM (with `aether.probe=1` init says probe-ok and reboots at once): usable only if that finishes
   * within the timeout. /dev/kvm existing proves nothing (see the QEMU driver's accel.ts).
   */
  async probe(timeoutMs = 8000, kvmDevice = '/dev/kvm'): Promise<{ ok: boolean; detail: string }> {
    if (
      !(await access(kvmDevice, constants.R_OK | constants.W_OK).then(
        () => true,
        () => false,
      ))
    ) {
      return { ok: false, detail: `${kvmDevice} is not usable` };
    }
    await mkdir(this.opts.runDir, { recursive: true, mode: 0o711 });
    const dir = await mkdtemp(path.join(this.opts.runDir, 'probe-'));
    const started = Date.now();
    let probed!: () => void;
    const ok = new Promise<void>((resolve) => (probed = resolve));
    const placement = await this.placement(path.basename(dir), dir, PROBE_SIZE.memoryMb, 1);
    try {
      const vm = await launchInstance(
        vmmPlan({
          id: path.basename(dir),
          startTimeoutMs: timeoutMs,
          placement,
          guest: new GuestConsole(PROBE_SIZE, (event) => event === INIT_EVENTS.probeOk && probed()),
          boot: async (api) => {
            await api.put('/machine-config', { vcpu_count: 1, mem_size_mib: PROBE_SIZE.memoryMb });
            await api.put('/boot-source', {
              kernel_image_path: await placement.place(this.image.kernel),
              initrd_path: await placement.place(this.image.initrd),
              boot_args: bootArgs([`${KERNEL_PARAMS.probe}=1`]),
            });
            await api.put('/drives/rootfs', rootDrive(await placement.place(this.image.rootfs)));
            await api.put('/actions', { action_type: 'InstanceStart' });
            await ok;
          },
          cleanup: async () => {
            await placement.release();
            await rm(dir, { recursive: true, force: true });
          },
        }),
      );
      await vm.stop(0);
      return { ok: true, detail: `KVM probe boot in ${Date.now() - started} ms` };
    } catch (err) {
      return { ok: false, detail: `probe failed: ${errorMessage(err)}` };
    }
  }

  /**
   * Boots a generic VM of this size (no instance in MMDS, a placeholder code disk), waits until its
   * init polls MMDS, pauses it and writes a full snapshot into `dir`. Later starts of the same size
   * restore it instead of booting.
   */
  async snapshot(dir: string, memoryMb: number, vcpu: number, timeoutMs = 60_000): Promise<FirecrackerSnapshot> {
    await mkdir(dir, { recursive: true });
    const empty = await mkdtemp(path.join(dir, 'placeholder-'));
    const placeholder = await this.codeDisks.diskFor(empty);
    const id = `template-${path.basename(empty).slice('placeholder-'.length)}`;
    const placement = await this.placement(id, dir, memoryMb, vcpu);
    const net = await this.network.attach(placement.owner?.uid);
    let booted!: () => void;
    const awaiting = new Promise<void>((resolve) => (booted = resolve));
    const snap: FirecrackerSnapshot = {
      snapshotPath: path.join(dir, 'vm.snap'),
      memPath: path.join(dir, 'vm.mem'),
      memoryMb,
      vcpus: guestVcpus(vcpu),
      placeholder,
    };
    const snapFile = placement.output('vm.snap');
    const memFile = placement.output('vm.mem');
    const vm = await launchInstance(
      vmmPlan({
        id,
        startTimeoutMs: timeoutMs,
        placement,
        guest: new GuestConsole({ memoryMb }, (event) => event === INIT_EVENTS.awaitingConfig && booted()),
        boot: async (api) => {
          await this.boot(api, placement, { memoryMb, vcpu, codeDisk: placeholder, net });
          await awaiting;
        },
        cleanup: async () => {
          await net.release();
          await placement.release();
          await rm(empty, { recursive: true, force: true });
          await rm(path.join(dir, API_SOCKET), { force: true }); // a killed Firecracker leaves its socket behind
        },
      }),
    );
    try {
      const api = new FirecrackerApi(placement.apiSocket);
      await api.patch('/vm', { state: 'Paused' });
      await api.put('/snapshot/create', { snapshot_type: 'Full', snapshot_path: snapFile.vmmPath, mem_file_path: memFile.vmmPath });
      // A jailed Firecracker wrote them into its chroot, which goes with it (same filesystem: see jailer.ts).
      await rename(snapFile.hostPath, snap.snapshotPath);
      await rename(memFile.hostPath, snap.memPath);
      this.template = snap;
      return snap;
    } finally {
      await vm.stop(0);
    }
  }

  async start(spec: InstanceSpec): Promise<InstanceHandle> {
    const codeDisk = await this.codeDisks.diskFor(spec.codeDir);
    const placement = await this.placement(spec.instanceId, path.resolve(this.opts.runDir, spec.instanceId), spec.memoryMb, spec.vcpu);
    const owner = placement.owner;
    let channel: InstanceChannel;
    try {
      // A jailed Firecracker connects to the channel's sockets as its own uid.
      channel = await openChannel({
        runDir: this.opts.runDir,
        instanceId: spec.instanceId,
        config: agentConfig(spec),
        uid: owner?.uid,
        gid: owner?.gid,
      });
    } catch (err) {
      await placement.release();
      throw err;
    }
    let net: Awaited<ReturnType<HostNetwork['attach']>>;
    try {
      net = await this.network.attach(owner?.uid);
    } catch (err) {
      await channel.close();
      await placement.release();
      throw new AetherError('start_failed', `instance ${spec.instanceId} failed to start: no network: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    try {
      await exposeChannel(channel.dir, placement.vsockHostDir);
    } catch (err) {
      await channel.close();
      await net.release();
      await placement.release();
      throw err;
    }
    const template = this.template;
    const restore = template && template.memoryMb === spec.memoryMb && template.vcpus === guestVcpus(spec.vcpu) ? template : undefined;
    const instance: MmdsInstance = {
      token: channel.token,
      config: agentConfig(spec),
      network: { ip: net.guestIp, gateway: net.gateway },
      seed: randomBytes(32).toString('hex'),
    };
    const guest = new GuestConsole(spec);
    const logServers: Server[] = [];
    const spawnedAt = Date.now();
    const launched = await launchInstance(
      vmmPlan({
        id: spec.instanceId,
        startTimeoutMs: spec.startTimeoutMs,
        onLog: spec.onLog,
        placement,
        channel,
        guest,
        boot: async (api, output) => {
          await listenForOutput(placement, output, logServers);
          if (restore) {
            // Jailed, the chroot must hold what the snapshot names (a no-op when not jailed).
            await placement.place(this.image.rootfs);
            await placement.place(restore.placeholder);
            await api.put('/snapshot/load', {
              snapshot_path: await placement.place(restore.snapshotPath),
              mem_backend: { backend_type: 'File', backend_path: await placement.place(restore.memPath) },
              network_overrides: [{ iface_id: 'eth0', host_dev_name: net.tap }],
              vsock_override: { uds_path: placement.vsock },
              resume_vm: true,
            });
            // The running guest waits for its instance in MMDS, and mounts the code only then.
            await api.patch('/drives/code', { drive_id: 'code', path_on_host: await placement.place(codeDisk) });
            // The resumed guest's clock is the template's: it sets the host's, read as the instance is handed over.
            await api.put('/mmds', { [MMDS_KEY]: { ...instance, time: Math.round(Date.now() / 1000) } });
          } else {
            await this.boot(api, placement, { memoryMb: spec.memoryMb, vcpu: spec.vcpu, codeDisk, net, instance });
          }
          await channel.ready;
          // The agent has its config: nothing in the guest needs MMDS's copy (token included) any more.
          await api.put('/mmds', {});
        },
        explainExit: (exit) => guest.explain('firecracker', exit),
        cleanup: async () => {
          for (const server of logServers) server.close();
          await net.release();
          await placement.release();
        },
      }),
    );
    // A booted VM's phases (for the cold-start metrics); a restored one did not boot and reports none.
    return Object.assign(launched, { boot: guest.bootTimings(spawnedAt, Date.now()) });
  }

  /** Firecracker for one VM: run directly, or jailed with cgroups for its size. */
  private placement(id: string, dir: string, memoryMb: number, vcpu: number): Promise<Placement> {
    if (!this.jailer) return Promise.resolve(directPlacement(this.binary, dir, API_SOCKET, VSOCK_NAME));
    return jailedPlacement(this.jailer, {
      firecracker: this.binary,
      instanceId: id,
      memoryMb: guestMemoryMb(memoryMb),
      vcpu,
      ids: this.ids,
      apiSocket: API_SOCKET,
      vsockName: VSOCK_NAME,
    });
  }

  /** The pre-boot calls, then InstanceStart. Without `instance` the guest boots and waits for one in MMDS. */
  private async boot(
    api: FirecrackerApi,
    placement: Placement,
    vm: { memoryMb: number; vcpu: number; codeDisk: string; net: Attachment; instance?: MmdsInstance },
  ): Promise<void> {
    const nodeArgs = agentNodeArgs(vm.memoryMb, GUEST_PATHS.agent);
    await api.put('/machine-config', { vcpu_count: guestVcpus(vm.vcpu), mem_size_mib: guestMemoryMb(vm.memoryMb) });
    await api.put('/boot-source', {
      kernel_image_path: await placement.place(this.image.kernel),
      initrd_path: await placement.place(this.image.initrd),
      boot_args: bootArgs([
        `${KERNEL_PARAMS.ip}=${vm.net.guestIp}`,
        `${KERNEL_PARAMS.gateway}=${vm.net.gateway}`,
        `${KERNEL_PARAMS.nodeArgs}=${nodeArgs.join(',')}`,
      ]),
    });
    await api.put('/drives/rootfs', rootDrive(await placement.place(this.image.rootfs)));
    await api.put('/drives/code', {
      drive_id: 'code',
      path_on_host: await placement.place(vm.codeDisk),
      is_root_device: false,
      is_read_only: true,
    });
    await api.put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: vm.net.tap, guest_mac: vm.net.mac });
    await api.put('/vsock', { guest_cid: GUEST_CID, uds_path: placement.vsock });
    await api.put('/mmds/config', { version: 'V2', network_interfaces: ['eth0'] });
    if (vm.instance) await api.put('/mmds', { [MMDS_KEY]: vm.instance });
    await api.put('/actions', { action_type: 'InstanceStart' });
  }
}

/** `reboot=k`: the guest's reboot (after ctrl-alt-del, or init's end) exits Firecracker. */
function bootArgs(aether: string[]): string {
  return ['console=ttyS0', 'reboot=k', 'panic=1', 'pci=off', 'quiet', `${KERNEL_PARAMS.vmm}=firecracker`, ...aether].join(' ');
}

export const vsockPath = (dir: string, port: number) => path.join(dir, `${VSOCK_NAME}_${port}`);

/**
 * Guest dials on the agent and metadata ports land on the channel's own sockets (as every sandbox's
 * agent dials them). Hard links, not symlinks: a jailed Firecracker resolves names inside its chroot,
 * where a link to the same socket inode still connects (the chroot is on the run directory's
 * filesystem, see jailer.ts).
 */
async function exposeChannel(channelDir: string, vsockDir: string): Promise<void> {
  await link(path.join(channelDir, AGENT_SOCKET), vsockPath(vsockDir, FIRECRACKER_VSOCK.agent));
  await link(path.join(channelDir, MMDS_SOCKET), vsockPath(vsockDir, FIRECRACKER_VSOCK.mmds));
}

/** The function's stdout and stderr: the guest dials one vsock port per stream; the dialer is Firecracker's uid. */
async function listenForOutput(placement: Placement, output: InstanceOutput, servers: Server[]): Promise<void> {
  for (const stream of ['stdout', 'stderr'] as const) {
    const socketPath = vsockPath(placement.vsockHostDir, FIRECRACKER_VSOCK[stream]);
    await rm(socketPath, { force: true });
    const server = createServer((socket) => output.function(stream, socket));
    servers.push(server);
    server.listen(socketPath);
    await once(server, 'listening');
    if (placement.owner) await chown(socketPath, placement.owner.uid, placement.owner.gid);
  }
}

const rootDrive = (rootfs: string) => ({ drive_id: 'rootfs', path_on_host: rootfs, is_root_device: true, is_read_only: true });
