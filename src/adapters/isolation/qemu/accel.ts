/**
 * KVM or TCG. /dev/kvm existing proves nothing (in a nested PVM guest KVM_RUN works but a stock kernel
 * hangs early in boot), so KVM is used only if the guest kernel actually boots under it: init is
 * told to power off at once (`aether.probe=1`), and the boot must finish within the timeout.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import type { GuestImage } from '../../../image/build-image.js';
import { INIT_LOG_PREFIX } from '../../../image/init-script.js';
import { machineArgs, type Accel } from './qemu-args.js';

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
  const child = spawn(qemu, machineArgs('kvm', 128, 1, image, ['aether.probe=1']), { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.once('error', () => {}); // 'close' follows with the output we have
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
  const ms = Date.now() - started;
  if (output.includes(`${INIT_LOG_PREFIX} probe-ok`)) return { accel: 'kvm', detail: `KVM boot in ${ms} ms` };
  const why = ms >= timeoutMs ? `no boot within ${timeoutMs} ms` : `boot failed: ${output.trim().split('\n').slice(-2).join(' | ')}`;
  return { accel: 'tcg', detail: `KVM unusable (${why})` };
}
