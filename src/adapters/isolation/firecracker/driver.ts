/**
 * The Firecracker driver: each instance is a Firecracker microVM configured over its HTTP API
 * (api.ts), booting the shared guest image (src/image) with the function's code on a read-only disk
 * (the same code disks as QEMU's), a TAP on the host bridge (network.ts) for MMDS and optional
 * egress, and vsock for the agent's channel (vmm.ts). A generic booted VM can be snapshotted once
 * and restored for each cold start. See docs/microvm.md for what the guest side must do and what
 * is verified only against the API double.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { AetherError } from '../../../core/errors.js';
import type { InstanceHandle, InstanceSpec, IsolationDriver } from '../../../core/ports.js';
import { buildImage, type GuestImage } from '../../../image/build-image.js';
import { GUEST_AGENT_DIR } from '../../../image/init-script.js';
import { agentNodeArgs } from '../agent-path.js';
import { agentConfig, openChannel, type AgentConfig } from '../channel.js';
import { CodeDisks } from '../qemu/code-disk.js';
import { GUEST_OVERHEAD_MB } from '../qemu/driver.js';
import type { FirecrackerApi } from './api.js';
import { FirecrackerInstance } from './instance.js';
import { directPlacement, IdPool, jailedPlacement, jailerFromEnv, type JailerConfig, type Placement } from './jailer.js';
import { HostNetwork, type Attachment } from './network.js';
import { API_SOCKET, CONSOLE, GUEST_CID, VSOCK_NAME, Vmm } from './vmm.js';

const run = promisify(execFile);

export interface FirecrackerDriverOptions {
  /** Per-instance directories (channel sockets, API socket, vsock sockets). */
  runDir: string;
  /** Kernels, images and code disks. */
  cacheDir: string;
  /** Default `firecracker` on PATH. */
  binary?: string;
  /** Default: built by src/image (an x86 Firecracker needs an uncompressed vmlinux: see the docs). */
  image?: Pick<GuestImage, 'kernel' | 'initrd' | 'rootfs'>;
  /** Default: the real bridge, TAPs and nftables rules (root only). */
  network?: HostNetwork;
  /** Run Firecracker (then `binary` must be a path) through the jailer. create()'s default: from FIRECRACKER_JAILER. */
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

/** What the guest's init reads from MMDS (V2) at `/aether`. */
export interface MmdsInstance {
  token: string;
  config: AgentConfig;
  /** The address to use: a restored guest still has the one of the VM that was snapshotted. */
  network: { ip: string; gateway: string };
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
    const jailer = opts.jailer ?? jailerFromEnv(process.env, opts.runDir);
    // The jailer needs the binary's path (--exec-file).
    const binary = jailer ? await onPath(opts.binary ?? 'firecracker') : (opts.binary ?? 'firecracker');
    if (jailer)
      await access(jailer.jailer, constants.X_OK).catch(() => {
        throw new Error(`the jailer ${jailer.jailer} (FIRECRACKER_JAILER) is not an executable file`);
      });
    await run(binary, ['--version']).catch((err: NodeJS.ErrnoException) => {
      throw new Error(
        err.code === 'ENOENT' ? `${binary} not found (set its path or put it on PATH)` : `${binary} --version failed: ${err.message}`,
      );
    });
    return new FirecrackerDriver({ ...opts, binary, jailer }, opts.image ?? (await buildImage({ cacheDir: opts.cacheDir })));
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
    const ok = new Promise<'ok'>((resolve) => (probed = () => resolve('ok')));
    const placement = await this.placement(path.basename(dir), dir, 128, 1);
    const vmm = new Vmm(placement, (line) => line.startsWith(CONSOLE.probeOk) && probed());
    let timer: NodeJS.Timeout | undefined;
    try {
      await vmm.waitUntilUp();
      await vmm.api.put('/machine-config', { vcpu_count: 1, mem_size_mib: 128 });
      await vmm.api.put('/boot-source', {
        kernel_image_path: await placement.place(this.image.kernel),
        initrd_path: await placement.place(this.image.initrd),
        boot_args: bootArgs(['aether.probe=1']),
      });
      await vmm.api.put('/drives/rootfs', rootDrive(await placement.place(this.image.rootfs)));
      await vmm.api.put('/actions', { action_type: 'InstanceStart' });
      const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, timeoutMs, 'timeout')));
      const outcome = await Promise.race([ok, timeout, vmm.ended.then(() => 'exit' as const)]);
      const ms = Date.now() - started;
      if (outcome === 'ok') return { ok: true, detail: `KVM probe boot in ${ms} ms` };
      return {
        ok: false,
        detail: outcome === 'timeout' ? `no probe boot within ${timeoutMs} ms` : `probe VM ended without booting${vmm.summary()}`,
      };
    } catch (err) {
      return { ok: false, detail: `probe failed: ${(err as Error).message}${vmm.summary()}` };
    } finally {
      clearTimeout(timer);
      vmm.kill();
      await vmm.ended;
      await placement.release();
      await rm(dir, { recursive: true, force: true });
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
    const placement = await this.placement(`template-${path.basename(empty).slice('placeholder-'.length)}`, dir, memoryMb, vcpu);
    const net = await this.network.attach(placement.owner?.uid);
    let booted!: () => void;
    const awaiting = new Promise<'booted'>((resolve) => (booted = () => resolve('booted')));
    const vmm = new Vmm(placement, (line) => line.startsWith(CONSOLE.awaitingConfig) && booted());
    let timer: NodeJS.Timeout | undefined;
    const snap: FirecrackerSnapshot = {
      snapshotPath: path.join(dir, 'vm.snap'),
      memPath: path.join(dir, 'vm.mem'),
      memoryMb,
      vcpus: vcpuCount(vcpu),
      placeholder,
    };
    const snapFile = placement.output('vm.snap');
    const memFile = placement.output('vm.mem');
    try {
      await vmm.waitUntilUp();
      await this.boot(vmm.api, placement, { memoryMb, vcpu, codeDisk: placeholder, net });
      const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, timeoutMs, 'timeout')));
      const outcome = await Promise.race([awaiting, timeout, vmm.ended.then(() => 'exit' as const)]);
      if (outcome !== 'booted') throw new Error(`the template VM did not boot (${outcome})${vmm.summary()}`);
      await vmm.api.patch('/vm', { state: 'Paused' });
      await vmm.api.put('/snapshot/create', { snapshot_type: 'Full', snapshot_path: snapFile.vmmPath, mem_file_path: memFile.vmmPath });
      // A jailed Firecracker wrote them into its chroot, which goes with it (same filesystem: see jailer.ts).
      await rename(snapFile.hostPath, snap.snapshotPath);
      await rename(memFile.hostPath, snap.memPath);
      this.template = snap;
      return snap;
    } finally {
      clearTimeout(timer);
      vmm.kill();
      await vmm.ended;
      await net.release();
      await placement.release();
      await rm(empty, { recursive: true, force: true });
      await rm(path.join(dir, API_SOCKET), { force: true }); // a killed Firecracker leaves its socket behind
    }
  }

  async start(spec: InstanceSpec): Promise<InstanceHandle> {
    const codeDisk = await this.codeDisks.diskFor(spec.codeDir);
    const placement = await this.placement(spec.instanceId, path.resolve(this.opts.runDir, spec.instanceId), spec.memoryMb, spec.vcpu);
    const owner = placement.owner;
    let channel: Awaited<ReturnType<typeof openChannel>>;
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
      throw new AetherError(502, 'start_failed', `instance ${spec.instanceId} failed to start: no network: ${(err as Error).message}`);
    }
    const template = this.template;
    const restore = template && template.memoryMb === spec.memoryMb && template.vcpus === vcpuCount(spec.vcpu) ? template : undefined;
    const instance: MmdsInstance = { token: channel.token, config: agentConfig(spec), network: { ip: net.guestIp, gateway: net.gateway } };
    return FirecrackerInstance.launch({
      spec,
      channel,
      placement,
      release: async () => {
        await net.release();
        await placement.release();
      },
      configure: async (vmm) => {
        if (restore) {
          // Jailed, the chroot must hold what the snapshot names (a no-op when not jailed).
          await placement.place(this.image.rootfs);
          await placement.place(restore.placeholder);
          await vmm.api.put('/snapshot/load', {
            snapshot_path: await placement.place(restore.snapshotPath),
            mem_backend: { backend_type: 'File', backend_path: await placement.place(restore.memPath) },
            network_overrides: [{ iface_id: 'eth0', host_dev_name: net.tap }],
            vsock_override: { uds_path: placement.vsock },
            resume_vm: true,
          });
          // The running guest waits for its instance in MMDS, and mounts the code only then.
          await vmm.api.patch('/drives/code', { drive_id: 'code', path_on_host: await placement.place(codeDisk) });
          await vmm.api.put('/mmds', { aether: instance });
        } else {
          await this.boot(vmm.api, placement, { memoryMb: spec.memoryMb, vcpu: spec.vcpu, codeDisk, net, instance });
        }
      },
    });
  }

  /** Firecracker for one VM: run directly, or jailed with cgroups for its size. */
  private placement(id: string, dir: string, memoryMb: number, vcpu: number): Promise<Placement> {
    if (!this.jailer) return Promise.resolve(directPlacement(this.binary, dir, API_SOCKET, VSOCK_NAME));
    return jailedPlacement(this.jailer, {
      firecracker: this.binary,
      instanceId: id,
      memoryMb: memoryMb + GUEST_OVERHEAD_MB,
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
    const nodeArgs = agentNodeArgs(vm.memoryMb, GUEST_AGENT_DIR);
    await api.put('/machine-config', { vcpu_count: vcpuCount(vm.vcpu), mem_size_mib: vm.memoryMb + GUEST_OVERHEAD_MB });
    await api.put('/boot-source', {
      kernel_image_path: await placement.place(this.image.kernel),
      initrd_path: await placement.place(this.image.initrd),
      boot_args: bootArgs([`aether.ip=${vm.net.guestIp}`, `aether.gw=${vm.net.gateway}`, `aether.node=${nodeArgs.join(',')}`]),
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
    if (vm.instance) await api.put('/mmds', { aether: vm.instance });
    await api.put('/actions', { action_type: 'InstanceStart' });
  }
}

/** Firecracker allows 1..32 vCPUs; fractional CPU shares are a cgroup matter (jailer.ts). */
const vcpuCount = (vcpu: number) => Math.min(32, Math.max(1, Math.ceil(vcpu)));

/** `reboot=k`: the guest's reboot (after ctrl-alt-del, or init's end) exits Firecracker. */
function bootArgs(aether: string[]): string {
  return ['console=ttyS0', 'reboot=k', 'panic=1', 'pci=off', 'quiet', 'aether.vmm=firecracker', ...aether].join(' ');
}

/** The executable `name` would run: the jailer takes a path. */
async function onPath(name: string): Promise<string> {
  if (name.includes('/')) return path.resolve(name);
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
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

const rootDrive = (rootfs: string) => ({ drive_id: 'rootfs', path_on_host: rootfs, is_root_device: true, is_read_only: true });
