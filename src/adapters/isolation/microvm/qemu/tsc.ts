/**
 * The host's TSC rate, which is also the guest's under TCG (QEMU's rdtsc reads the host's counter).
 * Told to the guest kernel (`tsc_early_khz=`) because microvm has no HPET or ACPI PM timer: the kernel
 * can only calibrate the TSC against the PIT, and under TCG on a busy host that calibration fails
 * often; the kernel then has no clocksource and hangs early in boot (seen here about half the time).
 */
import { readFile } from 'node:fs/promises';

/** kHz, when /proc/cpuinfo shows a constant-rate TSC; undefined otherwise (the guest calibrates). */
export async function hostTscKhz(): Promise<number | undefined> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const first = cpuinfo.split('\n\n')[0] ?? '';
  const flags = /^flags\s*:(.*)$/m.exec(first)?.[1]?.split(/\s+/) ?? [];
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)$/m.exec(first)?.[1]);
  if (!flags.includes('constant_tsc') || !(mhz > 0)) return undefined;
  return Math.round(mhz * 1000);
}
