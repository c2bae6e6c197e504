/**
 * The host side of an instance's channel (docs/agent-protocol.md): a private directory holding the
 * metadata service (mmds.sock) and the request channel (agent.sock). The host listens on both; the
 * agent inside the sandbox dials out, which works for every sandbox (gVisor cannot expose a socket
 * it listens on to the host).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { chown, mkdir, rm } from 'node:fs/promises';
import { createServer as createHttpServer, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { AGENT_SOCKET, CONFIG_PATH, FRAMES_SOCKET, MMDS_SOCKET, SPARE_CONNECTIONS, type AgentConfig } from '../../guest/agent/protocol.mjs';
import { unavailable } from '../../core/errors.js';
import { FUNCTION_DEFAULTS } from '../../core/function-spec.js';
import type { InstanceSpec } from '../../core/ports.js';

export type { AgentConfig };

export interface ChannelOptions {
  /** Parent of all instance directories; created if missing. */
  runDir: string;
  instanceId: string;
  /** The uid (and gid, default the same) the sandbox runs as: it gets the directory and the sockets. */
  uid?: number;
  gid?: number;
  /** Absent for a pre-started (pooled) instance: `assign` gives it once its function is known. */
  config?: AgentConfig;
}

export interface InstanceChannel {
  /** Absolute host path of the instance directory (mounted at /run/aether in the sandbox). */
  readonly dir: string;
  /** Single-use secret the agent presents to the metadata service; give it to the agent on stdin only. */
  readonly token: string;
  /** Resolves when the agent dials its first connection; rejects if the channel closes first. */
  readonly ready: Promise<void>;
  /**
   * Resolves when the agent opens its metadata connection, which it does as soon as node and the
   * agent are loaded, before it waits for the token: from then on a pooled instance only lacks its function.
   */
  readonly booted: Promise<void>;
  /** The config the metadata service serves (a pooled instance's, once its function is known): set before the token goes out. */
  assign(config: AgentConfig): void;
  /**
   * Resolves with a reason on the first refused metadata request (wrong, missing or reused token).
   * Before ready the agent fails closed by itself; after ready it means something in the sandbox is
   * probing, and the instance should be killed.
   */
  readonly authFailure: Promise<string>;
  /**
   * An unused connection dialed by the agent, waiting until one arrives. The agent dials a replacement
   * only when a connection receives its first bytes: write a request on it promptly. Rejects once
   * the channel is closed.
   */
  connect(): Promise<Socket>;
  /** The frame connection a handler-mode agent dialed (frames.sock), while it is open. */
  frames(): Socket | undefined;
  /** Stops listening, destroys every connection and removes the directory. Idempotent. */
  close(): Promise<void>;
}

/** Linux sockaddr_un.sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
/**
 * Connections an instance may hold on agent.sock beyond its concurrency and the agent's spares: ones
 * the host has closed that the agent has not yet seen close. Every connection is a descriptor of the
 * server's, so without a bound one instance can take them all (a function dialing its own socket).
 */
const AGENT_CONNECTION_SLACK = 8;
/** The agent needs one, once; more can only be something in the instance holding descriptors. */
const MAX_METADATA_CONNECTIONS = 2;
/** The agent dials one frame connection; a second one while it is open is refused. */
const MAX_FRAME_CONNECTIONS = 2;

/** `start: 'bundle'` when the driver mounted the function's prepared start (fast-start.ts) at GUEST_PATHS.start. */
export function agentConfig(spec: InstanceSpec, start?: AgentConfig['start']): AgentConfig {
  return {
    ...(start && { start }),
    instance_id: spec.instanceId,
    function_id: spec.functionId,
    entrypoint: spec.entrypoint ?? null,
    port: spec.port,
    env: spec.env,
    concurrency: spec.concurrency,
    function_name: spec.functionName ?? spec.functionId,
    memory_mb: spec.memoryMb,
    event_format: spec.eventFormat ?? FUNCTION_DEFAULTS.event_format,
  };
}

export async function openChannel(opts: ChannelOptions): Promise<InstanceChannel> {
  const dir = resolve(opts.runDir, opts.instanceId);
  if (Buffer.byteLength(join(dir, AGENT_SOCKET)) > MAX_SOCKET_PATH) {
    throw new Error(`run directory ${opts.runDir} is too long for Unix socket paths (max ${MAX_SOCKET_PATH} bytes)`);
  }
  await mkdir(opts.runDir, { recursive: true, mode: 0o711 });
  await mkdir(dir, { mode: 0o700 }); // fails if it exists: instance ids are unique, leftovers are not reused
  const owner = opts.uid === undefined ? undefined : { uid: opts.uid, gid: opts.gid ?? opts.uid };
  const token = randomBytes(32).toString('hex');
  const conns = new Connections();
  const mmds = metadataService(token);
  const agent = createNetServer((socket) => conns.add(socket));
  let frames: Socket | undefined;
  const framesServer = createNetServer((socket) => {
    if (frames && !frames.destroyed) return void socket.destroy();
    frames = socket;
    socket.on('error', () => {}); // 'close' follows; the frame client fails what was in flight
  });
  const assign = (config: AgentConfig) => {
    mmds.config = config;
    // Beyond these, Node closes each new connection as soon as it is accepted.
    agent.maxConnections = config.concurrency + SPARE_CONNECTIONS + AGENT_CONNECTION_SLACK;
  };
  agent.maxConnections = SPARE_CONNECTIONS + AGENT_CONNECTION_SLACK;
  if (opts.config) assign(opts.config);
  mmds.server.maxConnections = MAX_METADATA_CONNECTIONS;
  framesServer.maxConnections = MAX_FRAME_CONNECTIONS;
  const servers = [mmds.server, agent, framesServer];
  try {
    if (owner) await chown(dir, owner.uid, owner.gid);
    for (const [server, name] of [
      [mmds.server, MMDS_SOCKET],
      [agent, AGENT_SOCKET],
      [framesServer, FRAMES_SOCKET],
    ] as const) {
      server.listen(join(dir, name));
      await once(server, 'listening');
      if (owner) await chown(join(dir, name), owner.uid, owner.gid);
    }
  } catch (err) {
    await shutdown(servers, dir);
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    dir,
    token,
    ready: conns.ready,
    booted: mmds.booted,
    assign,
    authFailure: mmds.authFailure,
    connect: () => conns.take(),
    frames: () => (frames?.destroyed === false ? frames : undefined),
    close: () =>
      (closing ??= (() => {
        conns.close();
        frames?.destroy();
        return shutdown(servers, dir);
      })()),
  };
}

async function shutdown(servers: Server[], dir: string): Promise<void> {
  await Promise.all(
    servers.map((server) => {
      if (!server.listening) return undefined;
      const closed = once(server, 'close');
      server.close();
      (server as Server & { closeAllConnections?(): void }).closeAllConnections?.();
      return closed;
    }),
  );
  await rm(dir, { recursive: true, force: true });
}

/** Serves the config once, to the holder of the token; reports every refused request. */
function metadataService(token: string) {
  const expected = Buffer.from(`Bearer ${token}`);
  let used = false;
  let reportFailure!: (reason: string) => void;
  const authFailure = new Promise<string>((resolve) => (reportFailure = resolve));
  let markBooted!: () => void;
  const booted = new Promise<void>((resolve) => (markBooted = resolve));
  const service: { server: Server; authFailure: Promise<string>; booted: Promise<void>; config?: AgentConfig } = {
    authFailure,
    booted,
    server: createHttpServer((req, res) => {
      const presented = Buffer.from(req.headers.authorization ?? '');
      const valid = presented.length === expected.length && timingSafeEqual(presented, expected);
      if (!valid || used) {
        const reason = !req.headers.authorization ? 'missing token' : valid ? 'token reused' : 'wrong token';
        reportFailure(`metadata request refused: ${reason}`);
        reply(res, 401, JSON.stringify({ error: { code: 'unauthorized', message: reason } }));
      } else if (req.method !== 'GET' || req.url !== CONFIG_PATH) {
        reply(res, 404, JSON.stringify({ error: { code: 'not_found', message: 'not found' } }));
      } else if (!service.config) {
        // The token only goes out after assign(): nothing holding it can get here.
        reply(res, 503, JSON.stringify({ error: { code: 'unavailable', message: 'no function assigned' } }));
      } else {
        used = true;
        reply(res, 200, JSON.stringify(service.config));
      }
    }),
  };
  service.server.once('connection', () => markBooted());
  return service;
}

function reply(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    connection: 'close',
  });
  res.end(body);
}

/** The agent's dialed connections: unused ones wait here until connect() hands them out. */
class Connections {
  readonly ready: Promise<void>;
  private markReady!: () => void;
  private failReady!: (err: Error) => void;
  private readonly all = new Set<Socket>();
  private readonly idle: Socket[] = [];
  private readonly waiters: Array<{ resolve(socket: Socket): void; reject(err: Error): void }> = [];
  private closed = false;

  constructor() {
    this.ready = new Promise<void>((resolve, reject) => {
      this.markReady = resolve;
      this.failReady = reject;
    });
    this.ready.catch(() => {}); // observed by whoever awaits it; closing before ready is not a crash
  }

  add(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    this.all.add(socket);
    socket.on('error', () => {}); // 'close' follows; the user of the connection sees its own errors
    socket.once('close', () => {
      this.all.delete(socket);
      const i = this.idle.indexOf(socket);
      if (i !== -1) this.idle.splice(i, 1);
    });
    this.markReady();
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(socket);
    else this.idle.push(socket);
  }

  take(): Promise<Socket> {
    if (this.closed) return Promise.reject(channelClosed());
    const socket = this.idle.shift();
    if (socket) return Promise.resolve(socket);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  close(): void {
    this.closed = true;
    this.failReady(channelClosed());
    for (const waiter of this.waiters.splice(0)) waiter.reject(channelClosed());
    for (const socket of this.all) socket.destroy();
  }
}

const channelClosed = () => unavailable('the instance is gone', 'instance_stopped');
