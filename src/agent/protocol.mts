/**
 * Names shared by the guest agent and the host side of its channel (see notes/agent-protocol.md).
 * Only types and constants: the host imports this file too, the agent must stay builtin-only.
 */

/** What the per-instance metadata service (mmds.sock) serves at CONFIG_PATH, once. */
export interface AgentConfig {
  instance_id: string;
  function_id: string;
  entrypoint: string | null;
  port: number;
  env: Record<string, string>;
  concurrency: number;
}

export const MMDS_SOCKET = 'mmds.sock';
export const AGENT_SOCKET = 'agent.sock';
export const CONFIG_PATH = '/v1/config';

/** Exit code of an agent that refused to start (no valid token, no config, no entry module): EX_CONFIG. */
export const EXIT_CONFIG = 78;

export const REQUEST_ID_HEADER = 'x-aether-request-id';
export const DEADLINE_HEADER = 'x-aether-deadline';
