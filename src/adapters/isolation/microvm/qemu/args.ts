/**
 * The QEMU command line of one microVM (docs/microvm.md explains each channel):
 * - `-M microvm`: virtio-mmio devices only, no PCI, no firmware beyond qboot;
 * - serial console (ttyS0) on QEMU's stdout: kernel and init diagnostics;
 * - user-mode networking with `restrict=on` (no egress); hostfwd carries the request channel;
 * - two read-only disks (the shared root image, the function's code);
 * - four virtio-serial ports: the metadata port, connected by QEMU to the instance's metadata socket
 *   (a port, not guestfwd: QEMU's guestfwd never passes the host's close on to the guest, and the
 *   agent reads the response until the close), and control, stdout and stderr, whose backends are
 *   the socketpairs the host passes as fds 3-5.
 */
import { DISK_SERIAL, KERNEL_PARAMS, PORT_NAME } from '../../../../guest/agent/protocol.mjs';
import type { GuestImage } from '../../../../guest/image/build-image.js';

export type Accel = 'kvm' | 'tcg';

/** Addresses inside QEMU's user network (its defaults), passed to the guest on the kernel command line. */
export const GUEST_NET = { ip: '10.0.2.15/24', gateway: '10.0.2.2' } as const;
export const TCG_CACHE_MB = 64;
/** Host fds of the virtio-serial backends, in spawn's stdio order. */
export const PORT_FDS = { ctl: 3, stdout: 4, stderr: 5 } as const;

export interface VmLaunch {
  image: GuestImage;
  accel: Accel;
  memoryMb: number;
  vcpus: number;
  codeDisk: string;
  /** Host path of the metadata service's Unix socket. */
  mmdsSocket: string;
  /** 127.0.0.1:hostPort on the host reaches guestPort in the guest. */
  hostPort: number;
  guestPort: number;
  /** node's arguments in the guest (none may contain a comma or a space). */
  nodeArgs: string[];
  /** The guest TSC's rate, when known (see tsc.ts). */
  tscKhz?: number;
}

/**
 * The machine, kernel and console: shared by instances and the KVM probe, so that the probe boots
 * what instances will. `-cpu max` is every feature the accelerator offers (TCG's default model is a
 * 2003-era CPU). TCG's translation cache defaults to 1 GiB per VM; 64 MiB keeps a VM's host memory
 * near its guest RAM (measured: 342 MB RSS for a 192 MB guest by default, 256 MB with 32 MiB).
 */
export function machineArgs(accel: Accel, memoryMb: number, vcpus: number, image: GuestImage, cmdline: string[]): string[] {
  return [
    '-M',
    'microvm',
    '-accel',
    accel === 'tcg' ? `tcg,tb-size=${TCG_CACHE_MB}` : accel,
    '-cpu',
    'max',
    '-m',
    String(memoryMb),
    '-smp',
    String(vcpus),
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-no-reboot',
    '-sandbox',
    'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    '-kernel',
    image.kernel,
    '-initrd',
    image.initrd,
    // panic=-1: a guest kernel panic ends the VM at once (with -no-reboot) rather than hanging it.
    '-append',
    ['console=ttyS0', 'quiet', 'panic=-1', 'pci=off', ...cmdline].join(' '),
    '-serial',
    'stdio',
  ];
}

export function qemuArgs(vm: VmLaunch): string[] {
  for (const arg of vm.nodeArgs) {
    if (/[\s,]/.test(arg)) throw new Error(`guest node argument ${JSON.stringify(arg)} cannot go on the kernel command line`);
  }
  const cmdline = [
    `${KERNEL_PARAMS.ip}=${GUEST_NET.ip}`,
    `${KERNEL_PARAMS.gateway}=${GUEST_NET.gateway}`,
    `${KERNEL_PARAMS.listenPort}=${vm.guestPort}`,
    `${KERNEL_PARAMS.nodeArgs}=${vm.nodeArgs.join(',')}`,
    ...(vm.tscKhz ? [`tsc_early_khz=${vm.tscKhz}`] : []),
  ];
  const netdev = `user,id=net0,restrict=on,ipv6=off,hostfwd=tcp:127.0.0.1:${vm.hostPort}-:${vm.guestPort}`;
  const disk = (id: string, file: string, serial: string) => [
    '-drive',
    `file=${escapeOption(file)},if=none,format=raw,readonly=on,id=${id}`,
    '-device',
    `virtio-blk-device,drive=${id},serial=${serial}`,
  ];
  const port = (id: keyof typeof PORT_NAME, backend: string) => [
    '-chardev',
    `socket,id=${id},${backend}`,
    '-device',
    `virtserialport,chardev=${id},name=${PORT_NAME[id]}`,
  ];
  return [
    ...machineArgs(vm.accel, vm.memoryMb, vm.vcpus, vm.image, cmdline),
    '-netdev',
    netdev,
    '-device',
    'virtio-net-device,netdev=net0',
    ...disk('root', vm.image.rootfs, DISK_SERIAL.root),
    ...disk('code', vm.codeDisk, DISK_SERIAL.code),
    '-device',
    'virtio-serial-device,max_ports=5',
    ...port('mmds', `path=${escapeOption(vm.mmdsSocket)}`),
    ...port('ctl', `fd=${PORT_FDS.ctl}`),
    ...port('stdout', `fd=${PORT_FDS.stdout}`),
    ...port('stderr', `fd=${PORT_FDS.stderr}`),
  ];
}

/** QEMU option values separate on commas; a literal comma is doubled. */
function escapeOption(value: string): string {
  return value.replaceAll(',', ',,');
}
