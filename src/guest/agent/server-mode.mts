import { connect, type Socket } from 'node:net';
import { log } from './log.mjs';

const SLOW_LISTEN_MS = 500;
const MAX_PROBE_DELAY_MS = 25;

/** Resolves once 127.0.0.1:port accepts connections (the function's own server is up). */
export function waitForPort(port: number): Promise<void> {
  return new Promise((resolve) => {
    const slow = setTimeout(
      () => log(`no handler export found (server mode): waiting for the function to listen on 127.0.0.1:${port}`),
      SLOW_LISTEN_MS,
    );
    let delay = 1;
    const probe = () => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        clearTimeout(slow);
        resolve();
      });
      socket.once('error', () => {
        socket.destroy();
        setTimeout(probe, delay);
        delay = Math.min(delay * 2, MAX_PROBE_DELAY_MS);
      });
    };
    probe();
  });
}

/**
 * Server mode: each host connection, on its first bytes, is spliced byte for byte onto a new TCP
 * connection to the function's server. No HTTP parsing here: the least overhead there can be.
 */
export function proxyConnections(port: number, onFirstUse: (socket: Socket) => void): (socket: Socket) => void {
  return (host) => {
    host.once('data', (first: Buffer) => {
      onFirstUse(host);
      const upstream = connect({ port, host: '127.0.0.1', noDelay: true });
      upstream.write(first);
      host.pipe(upstream);
      upstream.pipe(host);
      upstream.on('error', () => host.destroy());
      upstream.on('close', () => host.destroy());
      host.on('close', () => upstream.destroy());
    });
  };
}
