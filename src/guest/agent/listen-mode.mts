/**
 * Listen mode, for instances the host cannot share a Unix socket with (microVMs). Preloaded with
 * `node --import listen-mode.mjs main.mjs` by the VM's init, as root, before the agent runs, it gives
 * the unchanged agent the two sockets it expects in its run directory:
 * - agent.sock: the request channel becomes a TCP port in the guest (the host connects through
 *   QEMU's hostfwd). Each accepted connection is spliced onto one of the connections the agent dials
 *   to agent.sock, so the spare/first-use protocol of docs/agent-protocol.md holds as it is;
 * - mmds.sock: forwarded to the metadata port, a virtio-serial port whose host end is the instance's
 *   metadata service (single-use token as everywhere). It carries one exchange: the host closing
 *   its end reaches the guest as end-of-file, which tells the agent the response is complete.
 * "ready" goes to fd LISTEN_READY_FD (the init relays it to the host) when the agent dials its first connection.
 * Then the process drops to an unprivileged uid: the function never runs as root in the guest.
 */
import { closeSync, chownSync, createReadStream, createWriteStream, openSync, writeSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { fail } from './log.mjs';
import { AGENT_ENV, AGENT_SOCKET, CONTROL, EXIT_CONFIG, GUEST_PATHS, LISTEN_READY_FD, MMDS_SOCKET } from './protocol.mjs';

const runDir = process.env[AGENT_ENV.runDir] || GUEST_PATHS.run;
const listenPort = Number(process.env[AGENT_ENV.listenPort]);
const metadataPort = process.env[AGENT_ENV.mmdsPort] ?? '';
const uid = Number(process.env[AGENT_ENV.uid]);

if (!Number.isInteger(listenPort) || !metadataPort || !Number.isInteger(uid) || uid === 0) {
  fail(`listen mode needs ${AGENT_ENV.listenPort}, ${AGENT_ENV.mmdsPort} (a device) and a non-root ${AGENT_ENV.uid}`, EXIT_CONFIG);
}

/** Both directions, byte for byte; either side closing or failing tears down the other. */
function splice(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  for (const [from, to] of [
    [a, b],
    [b, a],
  ] as const) {
    from.on('error', () => to.destroy());
    from.on('close', () => to.destroy());
  }
}

/** Connections the agent dialed, waiting for a host connection to carry (and host connections waiting for them). */
const dialed: Socket[] = [];
const waiting: Socket[] = [];
let announced = false;

function remove(list: Socket[], socket: Socket): void {
  const i = list.indexOf(socket);
  if (i !== -1) list.splice(i, 1);
}

function pairUp(): void {
  while (dialed.length && waiting.length) splice(waiting.shift()!, dialed.shift()!);
}

function onAgentDial(socket: Socket): void {
  socket.once('close', () => remove(dialed, socket));
  dialed.push(socket);
  if (!announced) {
    announced = true;
    // The init opens this descriptor for us; only the first line written to it counts.
    writeSync(LISTEN_READY_FD, `${CONTROL.ready}\n`);
    closeSync(LISTEN_READY_FD);
  }
  pairUp();
}

function onHostConnection(socket: Socket): void {
  socket.on('error', () => {}); // 'close' follows
  socket.once('close', () => remove(waiting, socket));
  waiting.push(socket);
  pairUp();
}

/** One exchange: the request goes to the port, the response comes back until the host hangs up. */
function forwardMetadata(port: number, server: Server, socket: Socket): void {
  server.close(); // nothing else is ever served
  socket.on('error', () => socket.destroy());
  socket.pipe(createWriteStream('', { fd: port, autoClose: false }));
  createReadStream('', { fd: port })
    .on('error', () => socket.destroy())
    .pipe(socket);
}

function listen(server: Server, target: string | number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    if (typeof target === 'number') server.listen(target, '0.0.0.0', resolve);
    else server.listen(target, resolve);
  });
}

try {
  // Opened while still root: the device stays root-only for the function.
  const port = openSync(metadataPort, 'r+');
  const metadata: Server = createServer((socket) => forwardMetadata(port, metadata, socket));
  for (const [server, name] of [
    [metadata, MMDS_SOCKET],
    [createServer(onAgentDial), AGENT_SOCKET],
  ] as const) {
    await listen(server, join(runDir, name));
    chownSync(join(runDir, name), uid, uid);
  }
  await listen(createServer({ noDelay: true }, onHostConnection), listenPort);
  process.setgroups!([]); // POSIX-only APIs: the guest is Linux
  process.setgid!(uid);
  process.setuid!(uid);
} catch (err) {
  fail(`listen mode could not start: ${err instanceof Error ? err.message : String(err)}`, EXIT_CONFIG);
}
