/**
 * One Firecracker process on the instance lifecycle, for instances, the KVM probe and snapshot
 * templates alike: spawned directly or through the jailer (jailer.ts), configured over its API
 * (api.ts), its console (Firecracker's stdout) read by a GuestConsole, and asked to stop with
 * SendCtrlAltDel (the guest's init turns it into SIGTERM for the agent). Firecracker has no
 * virtio-serial, so the guest reaches the host over vsock: a guest connection to the host's CID,
 * port P arrives at the host's Unix socket `<uds_path>_P`.
 */
import type { InstanceSpec } from '../../../../core/ports.js';
import type { InstanceChannel } from '../../channel.js';
import type { ExitExplanation, InstancePlan } from '../../instance/instance.js';
import type { ProcessExit } from '../../instance/exit.js';
import type { InstanceOutput } from '../../instance/output.js';
import type { GuestConsole } from '../guest.js';
import { FirecrackerApi, FirecrackerFault } from './api.js';
import type { Placement } from './jailer.js';

/** Every guest has its own vsock device, so one CID for all is fine (3 is the first guest CID). */
export const GUEST_CID = 3;
/** The name of the vsock device's Unix socket in the instance directory. */
export const VSOCK_NAME = 'vsock';
export const API_SOCKET = 'firecracker.sock';
const API_UP_TIMEOUT_MS = 2000;

export interface VmmPlan {
  id: string;
  startTimeoutMs: number;
  onLog?: InstanceSpec['onLog'];
  /** How Firecracker runs (directly or jailed) and where its sockets appear on the host. */
  placement: Placement;
  channel?: InstanceChannel;
  /** Reads the guest's console (Firecracker's stdout). */
  guest: GuestConsole;
  /** The API calls that configure and start (or restore) the VM, then what it waits for: resolves once ready. */
  boot(api: FirecrackerApi, output: InstanceOutput): Promise<void>;
  explainExit?(exit: ProcessExit): ExitExplanation;
  /** Releases what the VM had on the host (TAP, address, jail...). */
  cleanup?(): Promise<void>;
}

export function vmmPlan(vm: VmmPlan): InstancePlan {
  const api = new FirecrackerApi(vm.placement.apiSocket);
  return {
    id: vm.id,
    startTimeoutMs: vm.startTimeoutMs,
    onLog: vm.onLog ?? (() => {}),
    command: vm.placement.file,
    args: vm.placement.args,
    stdio: ['ignore', 'pipe', 'pipe'],
    channel: vm.channel,
    start: async (child, output, agentExited) => {
      vm.guest.onAgentExit = agentExited;
      output.diagnostics(child.stdout!, (line) => vm.guest.line(line));
      output.diagnostics(child.stderr!, undefined, 'firecracker: ');
      try {
        await api.waitUntilUp(API_UP_TIMEOUT_MS, () => child.exitCode !== null || child.signalCode !== null);
        await vm.boot(api, output);
      } catch (err) {
        // What Firecracker objected to says it best.
        throw err instanceof FirecrackerFault ? new Error(`firecracker refused ${err.message}`) : err;
      }
    },
    askToStop: () => api.put('/actions', { action_type: 'SendCtrlAltDel' }),
    explainExit: vm.explainExit,
    cleanup: vm.cleanup,
  };
}
