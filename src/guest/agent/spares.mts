import { connect, type Socket } from 'node:net';
import { fail } from './log.mjs';
import { EXIT_CONFIG, SPARE_CONNECTIONS } from './protocol.mjs';

/**
 * Keeps SPARE_CONNECTIONS unused connections dialed to the host's agent.sock (the host listens, the agent dials:
 * under gVisor the host cannot reach a socket the sandbox listens on). The host sends requests on them;
 * on a connection's first use the mode calls used(), which dials its replacement.
 */
export class Spares {
  private readonly usedSockets = new WeakSet<Socket>();
  private everConnected = false;
  private onConnection: (socket: Socket) => void = () => {};

  constructor(private readonly path: string) {}

  start(onConnection: (socket: Socket) => void): void {
    this.onConnection = onConnection;
    for (let i = 0; i < SPARE_CONNECTIONS; i++) this.dial();
  }

  used(socket: Socket): void {
    if (this.usedSockets.has(socket)) return;
    this.usedSockets.add(socket);
    this.dial();
  }

  private dial(): void {
    const socket = connect(this.path);
    const onDialError = (err: NodeJS.ErrnoException) => {
      // Before the first connection the host never saw us: refuse to start. Later it means the host
      // has closed the channel (stopping us, or gone): nothing can reach this instance any more.
      if (this.everConnected) fail(`host channel closed (${err.code ?? err.message}), exiting`, 0);
      fail(`cannot reach the host channel ${this.path}: ${err.message}`, EXIT_CONFIG);
    };
    socket.once('error', onDialError);
    socket.once('connect', () => {
      socket.off('error', onDialError);
      this.everConnected = true;
      socket.on('error', () => {}); // 'close' follows; the mode's own listeners report what matters
      socket.once('close', () => {
        // The host only closes unused connections when it closes the channel: redialing then finds out.
        if (!this.usedSockets.has(socket)) this.dial();
      });
      this.onConnection(socket);
    });
  }
}
