import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { EVENT_FORMATS } from './lambda-events.mjs';
import { CONFIG_PATH, MMDS_SOCKET, type AgentConfig } from './protocol.mjs';

/**
 * The token is the first line of stdin, which the host writes and then closes. Never env or argv:
 * the function could read those back from /proc.
 */
export function readToken(): string {
  const token = (readFileSync(0, 'utf8').split('\n', 1)[0] ?? '').trim();
  if (!token) throw new Error('no token on stdin');
  return token;
}

/**
 * GET /v1/config over a plain socket: node's HTTP client, cold in a fresh process, took ~8 ms longer
 * for this one request (measured: 9-12 ms vs 3-4 ms). The host's server answers with Content-Length
 * and closes the connection, which is all this needs to read.
 *
 * Opens the connection now and sends the request once given the token. A pre-started instance
 * (AGENT_ENV.prewarm) opens it before it waits for the token: the host takes the connection as
 * "node and the agent are up".
 */
export function configRequest(runDir: string): (token: string) => Promise<AgentConfig> {
  const socket = connect(join(runDir, MMDS_SOCKET));
  const response = new Promise<AgentConfig>((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (err) => reject(new Error(`metadata service unreachable: ${err.message}`)));
    socket.on('end', () => {
      try {
        resolve(parseConfig(JSON.parse(responseBody(Buffer.concat(chunks)))));
      } catch (err) {
        reject(err);
      }
    });
  });
  response.catch(() => {}); // a failure before the token is the caller's once it sends it
  return (token) => {
    socket.write(`GET ${CONFIG_PATH} HTTP/1.1\r\nHost: mmds\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`);
    return response;
  };
}

function responseBody(response: Buffer): string {
  const headEnd = response.indexOf('\r\n\r\n');
  const head = response.subarray(0, headEnd === -1 ? response.length : headEnd).toString('latin1');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1];
  const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1]);
  const body = response.subarray(headEnd + 4);
  if (headEnd === -1 || !status || body.length !== length) throw new Error('metadata service sent a malformed response');
  if (status !== '200') throw new Error(`metadata service refused the config request: ${status} ${body.toString()}`);
  return body.toString();
}

function parseConfig(value: unknown): AgentConfig {
  const c = value as AgentConfig;
  const valid =
    typeof c === 'object' &&
    c !== null &&
    typeof c.instance_id === 'string' &&
    typeof c.function_id === 'string' &&
    (c.entrypoint === null || typeof c.entrypoint === 'string') &&
    Number.isInteger(c.port) &&
    typeof c.function_name === 'string' &&
    Number.isInteger(c.memory_mb) &&
    (EVENT_FORMATS as readonly string[]).includes(c.event_format) &&
    (c.start === undefined || c.start === 'bundle' || c.start === 'plain') &&
    typeof c.env === 'object' &&
    c.env !== null &&
    Object.values(c.env).every((v) => typeof v === 'string');
  if (!valid) throw new Error('metadata service sent an invalid config');
  return c;
}

/**
 * The function sees only its configured env, plus PORT (always the configured one: the agent relies
 * on it in server mode) and defaults for PATH, HOME, NODE_ENV and TZ. Nothing of the agent's own env remains.
 * TZ=UTC as on Lambda: the sandbox has no /etc/localtime, and without TZ the first Date formatting
 * (every HTTP response's Date header) searches the zoneinfo tree: ~0.7 s of a cold start under gVisor.
 */
export function replaceEnv(config: AgentConfig): void {
  const env = {
    PATH: process.env.PATH || '/usr/local/bin:/usr/bin:/bin',
    HOME: '/tmp',
    NODE_ENV: 'production',
    TZ: 'UTC',
    ...config.env,
    PORT: String(config.port),
  };
  for (const key of Object.keys(process.env)) delete process.env[key];
  Object.assign(process.env, env);
}
