/**
 * One running Firecracker microVM as an InstanceHandle: ready when the agent dials its request
 * channel over vsock (channel.ts, as for every sandbox), requests over that channel, function
 * stdout/stderr from two vsock ports, the exit status from init's console line, stop by
 * SendCtrlAltDel (init turns it into SIGTERM for the agent) and SIGKILL after the grace period.
 */
import { once } from 'node:events';
import { constants } from 'node:os';
import { chown, link, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { AGENT_SOCKET, EXIT_CONFIG, MMDS_SOCKET } from '../../../agent/protocol.mjs';
import { AetherError, errorMessage } from '../../../core/errors.js';
import type { ExitInfo, InstanceHandle, InstanceSpec } from '../../../core/ports.js';
import type { InstanceChannel } from '../channel.js';
import { FirecrackerFault } from './api.js';
import type { Placement } from './jailer.js';
import { lines } from '../vmm-process.js';
import { CONSOLE, VSOCK_NAME, VSOCK_PORTS, Vmm } from './vmm.js';

const DEFAULT_STOP_GRACE_MS = 5000;

export interface FirecrackerLaunch {
  spec: InstanceSpec;
  /** Owned by the instance from here on: closed when the VM ends. */
  channel: InstanceChannel;
  /** How Firecracker runs (directly or jailed) and where its sockets appear on the host. */
  placement: Placement;
  /** Runs the API calls that configure and start (or restore) the VM. */
  configure(vmm: Vmm): Promise<void>;
  /** Called when the VM has ended (frees its TAP, address and jail). */
  release(): Promise<void>;
}

export class FirecrackerInstance implements InstanceHandle {
  readonly id: string;
  readonly exited: Promise<ExitInfo>;
  readonly condemned: Promise<string>;
  private condemn!: (reason: string) => void;
  readonly vmm: Vmm;
  private readonly logServers: Server[] = [];
  private guestStatus?: number;
  private cause?: string;
  private stopping?: Promise<void>;

  private constructor(private readonly launch: FirecrackerLaunch) {
    this.id = launch.spec.instanceId;
    this.condemned = new Promise((resolve) => (this.condemn = resolve));
    this.vmm = new Vmm(launch.placement, (line) => {
      const exit = CONSOLE.exited.exec(line);
      if (exit) this.guestStatus = Number(exit[1]);
    });
    void this.vmm.ended.then((exit) => this.condemn(this.cause ?? this.describe(exit)));
    this.exited = this.vmm.ended.then((exit) => this.teardown(exit));
  }

  /** Boots (or restores) the VM and resolves once its agent is ready; otherwise cleans up and rejects. */
  static async launch(launch: FirecrackerLaunch): Promise<FirecrackerInstance> {
    try {
      await exposeChannel(launch.channel.dir, launch.placement.vsockHostDir);
    } catch (err) {
      await launch.channel.close();
      await launch.release();
      throw err;
    }
    const vm = new FirecrackerInstance(launch);
    await vm.start();
    return vm;
  }

  private async start(): Promise<void> {
    const { spec, channel, placement } = this.launch;
    let timer: NodeJS.Timeout | undefined;
    try {
      for (const [stream, port] of [
        ['stdout', VSOCK_PORTS.stdout],
        ['stderr', VSOCK_PORTS.stderr],
      ] as const) {
        this.logServers.push(
          await listenLines(vsockPath(placement.vsockHostDir, port), placement.owner, (line) => spec.onLog(stream, line)),
        );
      }
      await this.vmm.waitUntilUp();
      await this.launch.configure(this.vmm);
      const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(resolve, spec.startTimeoutMs, 'timeout')));
      const outcome = await Promise.race([
        channel.ready.then(() => 'ready' as const),
        timedOut,
        this.vmm.ended.then(() => 'exit' as const),
      ]);
      if (outcome === 'timeout') throw new AetherError(504, 'start_timeout', `did not become ready within ${spec.startTimeoutMs} ms`);
      if (outcome === 'exit') throw new AetherError(502, 'start_failed', `${this.describe(await this.vmm.ended)}${this.vmm.summary()}`);
      // The agent has its config: nothing in the guest needs MMDS's copy (token included) any more.
      await this.vmm.api.put('/mmds', {});
      void channel.authFailure.then((reason) => this.kill(reason));
    } catch (err) {
      this.kill('failed to start');
      await this.exited;
      const failure =
        err instanceof AetherError
          ? err
          : new AetherError(
              502,
              'start_failed',
              err instanceof FirecrackerFault
                ? `firecracker refused ${err.message}`
                : `${String((err as Error).message ?? err)}${this.vmm.summary()}`,
            );
      throw new AetherError(failure.status, failure.code, `instance ${this.id} failed to start: ${failure.message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  connect(): Promise<Socket> {
    return this.launch.channel.connect();
  }

  /** SendCtrlAltDel (the guest's init stops the agent and reboots, which ends Firecracker); SIGKILL after graceMs. */
  stop(graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    this.stopping ??= (async () => {
      if (!this.vmm.hasEnded) {
        this.cause ??= 'stopped';
        this.condemn(this.cause);
        const timer = setTimeout(() => this.kill('stopped'), graceMs);
        await this.vmm.api.put('/actions', { action_type: 'SendCtrlAltDel' }).catch(() => this.kill('stopped'));
        await this.vmm.ended;
        clearTimeout(timer);
      }
      await this.exited;
    })();
    return this.stopping;
  }

  private kill(reason: string): void {
    if (this.vmm.hasEnded) return;
    this.cause ??= reason;
    this.condemn(this.cause);
    this.vmm.kill();
  }

  private async teardown(exit: { code: number | null; signal: NodeJS.Signals | null }): Promise<ExitInfo> {
    const { channel, spec } = this.launch;
    for (const server of this.logServers) server.close();
    const report = (err: unknown) => spec.onLog('stderr', `[aether-host] teardown: ${errorMessage(err)}`);
    await channel.close().catch(report);
    await this.launch.release().catch(report);
    const info = this.status(exit);
    return { ...info, reason: this.cause ?? this.describe(exit) };
  }

  /** The agent's status as init reported it (128+n for signal n), else Firecracker's own. */
  private status(vmm: { code: number | null; signal: NodeJS.Signals | null }): ExitInfo {
    const status = this.guestStatus;
    if (status === undefined) return { code: vmm.code, signal: vmm.signal };
    return status > 128 ? { code: null, signal: signalName(status - 128) } : { code: status, signal: null };
  }

  private describe(vmm: { code: number | null; signal: NodeJS.Signals | null }): string {
    const status = this.guestStatus;
    if (status === undefined)
      return `the VM ended before its agent did (firecracker ${vmm.signal ? `killed by ${vmm.signal}` : `exit code ${vmm.code}`})`;
    if (status === EXIT_CONFIG) return `agent refused to start (exit code ${EXIT_CONFIG})`;
    return `agent exited with status ${status}`;
  }
}

export const vsockPath = (dir: string, port: number) => path.join(dir, `${VSOCK_NAME}_${port}`);

/**
 * Guest dials on the agent and metadata ports land on the channel's own sockets. Hard links, not
 * symlinks: a jailed Firecracker resolves names inside its chroot, where a link to the same socket
 * inode still connects (the chroot is on the run directory's filesystem, see jailer.ts).
 */
async function exposeChannel(channelDir: string, vsockDir: string): Promise<void> {
  await link(path.join(channelDir, AGENT_SOCKET), vsockPath(vsockDir, VSOCK_PORTS.agent));
  await link(path.join(channelDir, MMDS_SOCKET), vsockPath(vsockDir, VSOCK_PORTS.mmds));
}

/** A Unix socket whose every connection's lines go to onLine (the guest dials once per stream); `owner` is who dials. */
async function listenLines(socketPath: string, owner: Placement['owner'], onLine: (line: string) => void): Promise<Server> {
  await rm(socketPath, { force: true });
  const server = createServer((socket) => {
    socket.on('error', () => {});
    lines(socket, onLine);
  });
  server.listen(socketPath);
  await once(server, 'listening');
  if (owner) await chown(socketPath, owner.uid, owner.gid);
  return server;
}

function signalName(n: number): string | null {
  return Object.entries(constants.signals).find(([, value]) => value === n)?.[0] ?? null;
}
