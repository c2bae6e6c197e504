/**
 * Test support: a double of Firecracker's API (firecracker-api.yaml) on a Unix socket, for the
 * driver's tests on a machine without KVM or a Firecracker binary. It enforces the paths and methods,
 * the required fields (REQUIRED, checked against the spec by test/firecracker.test.ts) and the
 * ordering rules (pre-boot only, post-boot only, InstanceStart needs a kernel and a root drive,
 * snapshot create needs a paused VM, snapshot load only on a fresh process), and answers as
 * Firecracker does: 204 without a body, 400 with `{ "fault_message": ... }`.
 *
 * It also plays the guest (SimulatedGuest), since nothing boots: what init does under Firecracker
 * (docs/microvm.md), with the real agent. It prints init's console lines, reads its instance from
 * MMDS, unpacks the code disk the driver attached (debugfs), and runs dist/agent/main.mjs with its
 * run directory's sockets pointing at the host's vsock sockets `<uds_path>_<port>`, which is what
 * Firecracker's vsock device does with a guest's connection to the host.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { constants } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { agentDir } from '../../src/guest/agent-files.js';
import {
  AGENT_ENV,
  AGENT_MODULES,
  AGENT_SOCKET,
  FIRECRACKER_VSOCK,
  INIT_EVENTS,
  INIT_LOG_PREFIX,
  MMDS_SOCKET,
} from '../../src/guest/agent/protocol.mjs';

/** The fields the double requires per call: each list must equal the spec's `required`. */
export const REQUIRED: Record<string, { definition?: string; fields: string[] }> = {
  'PUT /machine-config': { definition: 'MachineConfiguration', fields: ['mem_size_mib', 'vcpu_count'] },
  'PUT /boot-source': { definition: 'BootSource', fields: ['kernel_image_path'] },
  'PUT /drives/{drive_id}': { definition: 'Drive', fields: ['drive_id', 'is_root_device'] },
  'PATCH /drives/{drive_id}': { definition: 'PartialDrive', fields: ['drive_id'] },
  'PUT /network-interfaces/{iface_id}': { definition: 'NetworkInterface', fields: ['host_dev_name', 'iface_id'] },
  'PUT /vsock': { definition: 'Vsock', fields: ['guest_cid', 'uds_path'] },
  'PUT /mmds/config': { definition: 'MmdsConfig', fields: ['network_interfaces'] },
  'PUT /mmds': { definition: 'MmdsContentsObject', fields: [] },
  'GET /mmds': { fields: [] },
  'PUT /actions': { definition: 'InstanceActionInfo', fields: ['action_type'] },
  'PATCH /vm': { definition: 'Vm', fields: ['state'] },
  'PUT /snapshot/create': { definition: 'SnapshotCreateParams', fields: ['mem_file_path', 'snapshot_path'] },
  'PUT /snapshot/load': { definition: 'SnapshotLoadParams', fields: ['snapshot_path'] },
  'GET /': { fields: [] },
};

export type GuestBehaviour = 'agent' | 'deaf' | 'silent' | 'lingering';

export interface DoubleOptions {
  /**
   * agent: boots, runs the agent, stops on ctrl-alt-del; deaf: the same but ignores ctrl-alt-del; silent: never
   * boots; lingering: reports the agent's exit but never finishes powering off.
   */
  guest: GuestBehaviour;
  /** The serial console (Firecracker's stdout). */
  console(line: string): void;
  /** The guest rebooted or powered off: Firecracker exits. */
  onGuestExit(): void;
  /** Appends each request as a JSON line (method, path template, body). */
  requestLog?: string;
  /** Jailed (fake-bin/jailer): the chroot, which every path in a request is relative to. */
  root?: string;
}

type Body = Record<string, unknown>;
class Fault extends Error {}
type State = 'Not started' | 'Running' | 'Paused';

/** What a snapshot file holds: the configuration the VM was booted with. */
interface VmConfig {
  bootSource?: Body;
  machine?: Body;
  drives: Record<string, Body>;
  ifaces: Record<string, Body>;
  vsock?: Body;
  mmdsConfig?: Body;
}

const ROUTES: Array<[string, RegExp]> = Object.keys(REQUIRED).map((key) => {
  const [method, template] = key.split(' ') as [string, string];
  return [key, new RegExp(`^${method} ${template.replace(/\{[^}]+\}/g, '([^/]+)')}$`)];
});

export class FirecrackerDouble {
  state: State = 'Not started';
  mmds: Body | undefined;
  readonly vm: VmConfig = { drives: {}, ifaces: {} };
  private readonly server: Server;
  private guest?: SimulatedGuest;

  private constructor(
    readonly socketPath: string,
    private readonly opts: DoubleOptions,
  ) {
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  static async listen(socketPath: string, opts: DoubleOptions): Promise<FirecrackerDouble> {
    const double = new FirecrackerDouble(socketPath, opts);
    await new Promise<void>((resolve, reject) => {
      double.server.once('error', reject);
      double.server.listen(socketPath, resolve);
    });
    return double;
  }

  async close(): Promise<void> {
    this.guest?.kill();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString();
    const call = `${req.method} ${(req.url ?? '').split('?')[0]}`;
    const route = ROUTES.find(([, re]) => re.test(call));
    try {
      if (!route) throw new Fault(`Invalid request method and/or path: ${call}.`);
      const [key, re] = route;
      const param = re.exec(call)![1];
      let body: Body = {};
      if (req.method !== 'GET') {
        try {
          body = JSON.parse(text) as Body;
        } catch {
          throw new Fault('An error occurred when deserializing the json body of a request: not JSON.');
        }
        if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Fault('The body must be a JSON object.');
        for (const field of REQUIRED[key]!.fields) if (!(field in body)) throw new Fault(`missing field \`${field}\``);
      }
      if (this.opts.requestLog) appendFileSync(this.opts.requestLog, `${JSON.stringify({ key, body })}\n`);
      const result = this.apply(key, param, body);
      if (result === undefined) {
        res.writeHead(204).end();
      } else {
        const json = JSON.stringify(result);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) }).end(json);
      }
    } catch (err) {
      const json = JSON.stringify({ fault_message: err instanceof Error ? err.message : String(err) });
      res.writeHead(400, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) }).end(json);
    }
  }

  private preBoot(what: string): void {
    if (this.state !== 'Not started') throw new Fault(`The requested operation is not supported after starting the microVM: ${what}.`);
  }

  private postBoot(what: string): void {
    if (this.state === 'Not started') throw new Fault(`The requested operation is not supported before starting the microVM: ${what}.`);
  }

  private apply(key: string, param: string | undefined, body: Body): unknown {
    const vm = this.vm;
    switch (key) {
      case 'GET /':
        return { id: 'anonymous-instance', state: this.state, vmm_version: '1.17.0-double', app_name: 'Firecracker' };
      case 'PUT /machine-config': {
        this.preBoot('machine config');
        const vcpus = body.vcpu_count;
        if (!Number.isInteger(vcpus) || (vcpus as number) < 1 || (vcpus as number) > 32)
          throw new Fault('The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.');
        if (!Number.isInteger(body.mem_size_mib) || (body.mem_size_mib as number) < 1) throw new Fault('The memory size (MiB) is invalid.');
        vm.machine = body;
        return undefined;
      }
      case 'PUT /boot-source':
        this.preBoot('boot source');
        this.mustExist(body.kernel_image_path, 'kernel');
        if (body.initrd_path !== undefined) this.mustExist(body.initrd_path, 'initrd');
        vm.bootSource = body;
        return undefined;
      case 'PUT /drives/{drive_id}':
        this.preBoot('drive config');
        if (body.drive_id !== param)
          throw new Fault(`The id from the path [${param}] does not match the id from the body [${String(body.drive_id)}]!`);
        this.mustExist(body.path_on_host, 'drive');
        if (body.is_root_device && Object.values(vm.drives).some((d) => d.is_root_device && d.drive_id !== param))
          throw new Fault('A root block device already exists!');
        vm.drives[param!] = body;
        return undefined;
      case 'PATCH /drives/{drive_id}':
        this.postBoot('drive update');
        if (!vm.drives[param!]) throw new Fault(`Unable to patch the block device: drive ${param} not found`);
        if (body.path_on_host !== undefined) this.mustExist(body.path_on_host, 'drive');
        vm.drives[param!] = { ...vm.drives[param!], ...body };
        return undefined;
      case 'PUT /network-interfaces/{iface_id}':
        this.preBoot('network interface config');
        if (body.iface_id !== param)
          throw new Fault(`The id from the path [${param}] does not match the id from the body [${String(body.iface_id)}]!`);
        vm.ifaces[param!] = body;
        return undefined;
      case 'PUT /vsock':
        this.preBoot('vsock config');
        if (!Number.isInteger(body.guest_cid) || (body.guest_cid as number) < 3) throw new Fault('Invalid guest CID: must be at least 3.');
        vm.vsock = body;
        return undefined;
      case 'PUT /mmds/config': {
        this.preBoot('MMDS config');
        if (body.version !== undefined && !['V1', 'V2'].includes(body.version as string))
          throw new Fault(`unknown variant \`${String(body.version)}\``);
        const ifaces = body.network_interfaces as unknown[];
        if (!Array.isArray(ifaces) || ifaces.length === 0)
          throw new Fault('The list of network interface IDs that allow forwarding MMDS requests is empty.');
        for (const id of ifaces)
          if (!vm.ifaces[id as string])
            throw new Fault(
              `The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface: ${String(id)}.`,
            );
        vm.mmdsConfig = body;
        return undefined;
      }
      case 'PUT /mmds':
        this.mmds = body;
        return undefined;
      case 'GET /mmds':
        return this.mmds ?? {};
      case 'PUT /actions':
        return this.action(body.action_type);
      case 'PATCH /vm':
        this.postBoot('vm state update');
        if (body.state !== 'Paused' && body.state !== 'Resumed')
          throw new Fault(`unknown variant \`${String(body.state)}\`, expected \`Paused\` or \`Resumed\``);
        this.state = body.state === 'Paused' ? 'Paused' : 'Running';
        return undefined;
      case 'PUT /snapshot/create':
        this.postBoot('create snapshot');
        if (this.state !== 'Paused') throw new Fault('Cannot create a snapshot: the microVM is not paused.');
        if (body.snapshot_type !== undefined && !['Full', 'Diff'].includes(body.snapshot_type as string))
          throw new Fault(`unknown variant \`${String(body.snapshot_type)}\``);
        writeFileSync(this.host(body.snapshot_path), JSON.stringify(vm));
        writeFileSync(this.host(body.mem_file_path), Buffer.alloc(4096));
        return undefined;
      case 'PUT /snapshot/load':
        return this.load(body);
      default:
        throw new Fault(`Invalid request method and/or path: ${key}.`);
    }
  }

  private action(type: unknown): undefined {
    if (type === 'InstanceStart') {
      this.preBoot('InstanceStart');
      if (!this.vm.bootSource) throw new Fault('Cannot start microvm without kernel configuration.');
      if (!Object.values(this.vm.drives).some((d) => d.is_root_device))
        throw new Fault('Cannot start microvm without a root block device.');
      this.state = 'Running';
      this.boot(true);
      return undefined;
    }
    if (type === 'SendCtrlAltDel') {
      this.postBoot('SendCtrlAltDel');
      this.guest?.ctrlAltDel();
      return undefined;
    }
    if (type === 'FlushMetrics') throw new Fault('The metrics system is not initialized.');
    throw new Fault(`unknown variant \`${String(type)}\`, expected one of \`FlushMetrics\`, \`InstanceStart\`, \`SendCtrlAltDel\``);
  }

  private load(body: Body): undefined {
    const vm = this.vm;
    const fresh =
      this.state === 'Not started' &&
      !vm.bootSource &&
      !vm.machine &&
      !vm.vsock &&
      !vm.mmdsConfig &&
      !Object.keys(vm.drives).length &&
      !Object.keys(vm.ifaces).length;
    if (!fresh) throw new Fault('Loading a microVM snapshot not allowed after configuring boot-specific resources.');
    const backend = body.mem_backend as Body | undefined;
    if ((body.mem_file_path === undefined) === (backend === undefined))
      throw new Fault('Exactly one of mem_file_path or mem_backend must be present.');
    if (backend && (backend.backend_type !== 'File' || typeof backend.backend_path !== 'string'))
      throw new Fault('mem_backend needs backend_type File and a backend_path.');
    this.mustExist(body.snapshot_path, 'snapshot');
    this.mustExist(backend ? backend.backend_path : body.mem_file_path, 'memory file');
    Object.assign(vm, JSON.parse(readFileSync(this.host(body.snapshot_path), 'utf8')) as VmConfig);
    for (const o of (body.network_overrides as Body[] | undefined) ?? []) {
      if (!vm.ifaces[o.iface_id as string]) throw new Fault(`Invalid network override: no interface ${String(o.iface_id)}.`);
      vm.ifaces[o.iface_id as string]!.host_dev_name = o.host_dev_name;
    }
    const vsockOverride = body.vsock_override as Body | undefined;
    if (vsockOverride) {
      if (!vm.vsock) throw new Fault('Invalid vsock override: the snapshot has no vsock device.');
      vm.vsock.uds_path = vsockOverride.uds_path;
    }
    this.state = body.resume_vm ? 'Running' : 'Paused';
    this.boot(false);
    return undefined;
  }

  /** A path from a request as the host sees it (Firecracker opens it inside its chroot when jailed). */
  host(file: unknown): string {
    return this.opts.root ? path.join(this.opts.root, String(file)) : String(file);
  }

  private mustExist(file: unknown, what: string): void {
    if (typeof file !== 'string' || !existsSync(this.host(file)))
      throw new Fault(`Unable to open the ${what} file ${String(file)}: No such file or directory (os error 2)`);
  }

  private boot(cold: boolean): void {
    if (this.opts.guest === 'silent') return;
    this.guest = new SimulatedGuest(this, this.opts, cold);
  }
}

const run = promisify(execFile);

/** What our init does under Firecracker (as docs/microvm.md asks of it), with the real agent. */
class SimulatedGuest {
  private agent?: ChildProcess;
  private readonly started = Date.now();
  private ended = false;
  /** Next to the API socket: in the instance directory, which the driver removes even when it kills us. */
  private readonly scratch: string;

  constructor(
    private readonly vmm: FirecrackerDouble,
    private readonly opts: DoubleOptions,
    cold: boolean,
  ) {
    this.scratch = mkdtempSync(path.join(path.dirname(vmm.socketPath), 'guest-'));
    const args = String(vmm.vm.bootSource?.boot_args ?? '').split(' ');
    if (cold) this.log('start');
    if (cold && args.includes('aether.probe=1')) {
      this.log(INIT_EVENTS.probeOk);
      this.end();
      return;
    }
    if (cold) this.log('awaiting-config');
    void this.awaitInstance().catch((err: Error) => {
      this.log(`fatal: ${err.message}`);
      this.end();
    });
  }

  ctrlAltDel(): void {
    if (this.opts.guest === 'deaf') return;
    if (this.agent) this.agent.kill('SIGTERM');
    else this.end();
  }

  kill(): void {
    this.agent?.kill('SIGKILL');
    rmSync(this.scratch, { recursive: true, force: true });
  }

  /** Init polls MMDS (a V2 session token, then GET /aether) while running; paused guests do nothing. */
  private async awaitInstance(): Promise<void> {
    let instance: { token: string } | undefined;
    while (!this.ended && !(this.vmm.state === 'Running' && (instance = this.vmm.mmds?.aether as { token: string } | undefined))) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    if (this.ended || !instance) return;
    const code = path.join(this.scratch, 'code');
    const runDir = path.join(this.scratch, 'run');
    mkdirSync(code);
    mkdirSync(runDir);
    // The guest mounts the code disk; here its files are copied out of the ext4 image the driver attached.
    await run('debugfs', ['-R', `rdump / ${code}`, this.vmm.host(this.vmm.vm.drives.code?.path_on_host)]);
    const vsock = this.vmm.host(this.vmm.vm.vsock?.uds_path);
    symlinkSync(`${vsock}_${FIRECRACKER_VSOCK.agent}`, path.join(runDir, AGENT_SOCKET));
    symlinkSync(`${vsock}_${FIRECRACKER_VSOCK.mmds}`, path.join(runDir, MMDS_SOCKET));
    this.log('agent-started');
    const agent = spawn(process.execPath, [path.join(agentDir(), AGENT_MODULES.main)], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', [AGENT_ENV.runDir]: runDir, [AGENT_ENV.codeDir]: code },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.agent = agent;
    agent.stdin.end(`${instance.token}\n`);
    for (const [stream, port] of [
      [agent.stdout, FIRECRACKER_VSOCK.stdout],
      [agent.stderr, FIRECRACKER_VSOCK.stderr],
    ] as const) {
      const socket = connect(`${vsock}_${port}`);
      socket.on('error', () => {});
      stream.pipe(socket);
    }
    agent.once('close', (status, signal) => {
      this.log(`${INIT_EVENTS.agentExited}${signal ? 128 + constants.signals[signal] : status}`);
      if (this.opts.guest !== 'lingering') this.end();
    });
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.kill();
    this.opts.onGuestExit();
  }

  private log(what: string): void {
    this.opts.console(`${INIT_LOG_PREFIX} ${what} up=${this.up()}`);
  }

  private up(): string {
    return ((Date.now() - this.started) / 1000).toFixed(2);
  }
}
