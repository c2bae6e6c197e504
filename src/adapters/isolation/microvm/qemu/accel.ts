/**
 * KVM or TCG. /dev/kvm existing proves nothing (in a nested PVM guest KVM_RUN works but a stock kernel
 * hangs early in boot), so KVM is used only if the guest kernel actually boots under it: init is
 * told to power off at once (`aether.probe=1`), and the boot must finish within the timeout.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { errorMessage } from '../../../../core/errors.js';
import { INIT_EVENTS, KERNEL_PARAMS } from '../../../../guest/agent/protocol.mjs';
import type { GuestImage } from '../../../../guest/image/build-image.js';
import { launchInstance } from '../../instance/instance.js';
import { GuestConsole } from '../guest.js';
import { machineArgs, type Accel } from './args.js';

export interface ProbeResult {
  accel: Accel;
  /** Why: how long the KVM boot took, or what failed. */
  detail: string;
}

export async function probeAccel(qemu: string, image: GuestImage, timeoutMs: number): Promise<ProbeResult> {
  if (
    !(await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
      () => true,
      () => false,
    ))
  ) {
    return { accel: 'tcg', detail: '/dev/kvm is not usable' };
  }
  const started = Date.now();
  try {
    const vm = await launchInstance({
      id: 'kvm-probe',
      startTimeoutMs: timeoutMs,
      onLog: () => {},
      command: qemu,
      args: machineArgs('kvm', 128, 1, image, [`${KERNEL_PARAMS.probe}=1`]),
      stdio: ['ignore', 'pipe', 'pipe'],
      start: (child, output) =>
        new Promise((booted) => {
          const guest = new GuestConsole({ memoryMb: 128 }, (event) => event === INIT_EVENTS.probeOk && booted());
          output.diagnostics(child.stdout!, (line) => guest.line(line));
          output.diagnostics(child.stderr!);
        }),
    });
    await vm.stop(0);
    return { accel: 'kvm', detail: `KVM boot in ${Date.now() - started} ms` };
  } catch (err) {
    return { accel: 'tcg', detail: `KVM unusable (${errorMessage(err)})` };
  }
}
