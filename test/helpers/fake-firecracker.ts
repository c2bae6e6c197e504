// Test support: stands in for the firecracker binary (fake-bin/firecracker runs it; put fake-bin first
// on PATH). Serves the API double on --api-sock; the guest's console is stdout; exits when the
// simulated guest ends, as Firecracker does when its guest reboots.
// FC_DOUBLE_GUEST picks the guest's behaviour, FC_DOUBLE_LOG where requests are logged; FC_DOUBLE_ROOT
// is the chroot when started by fake-bin/jailer (every path Firecracker is given is inside it).
import path from 'node:path';
import { rmSync } from 'node:fs';
import { FirecrackerDouble, type GuestBehaviour } from './firecracker-double.js';

const args = process.argv.slice(2);
if (args[0] === '--version') {
  console.log('Firecracker v1.17.0-double');
  process.exit(0);
}
const root = process.env.FC_DOUBLE_ROOT;
const given = args[args.indexOf('--api-sock') + 1];
const socket = given && root ? path.join(root, given) : given;
if (args.indexOf('--api-sock') === -1 || !socket) {
  console.error('usage: firecracker --api-sock <path>');
  process.exit(1);
}
const double = await FirecrackerDouble.listen(socket, {
  guest: (process.env.FC_DOUBLE_GUEST ?? 'agent') as GuestBehaviour,
  console: (line) => process.stdout.write(`${line}\n`),
  onGuestExit: () => void double.close().then(() => process.exit(0)),
  requestLog: process.env.FC_DOUBLE_LOG,
  root,
});
process.on('exit', () => rmSync(socket, { force: true }));
