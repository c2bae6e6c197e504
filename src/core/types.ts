/** Records as the API shows them (field names follow the original prototype's JSON). */
export interface FunctionRecord {
  id: string;
  name: string;
  runtime: Runtime;
  entrypoint: string | null;
  memory_mb: number;
  vcpu: number;
  port: number;
  env_vars: Record<string, string>;
  timeout_ms: number;
  concurrency: number;
  min_instances: number;
  max_instances: number;
  idle_timeout_s: number;
  /** Bumped by every code upload and config change: instances of older versions drain. */
  version: number;
  code_hash: string | null;
  code_size: number | null;
  created_at: string;
  updated_at: string;
}

export type Runtime = 'node';

export interface InvocationRecord {
  id: string;
  function_id: string;
  started_at: string;
  status: number;
  duration_ms: number;
  cold_start: boolean;
  instance_id: string | null;
  error: string | null;
}

export type InstanceState = 'starting' | 'ready' | 'draining' | 'stopped';

export interface InstanceInfo {
  id: string;
  state: InstanceState;
  version: number;
  started_at: string;
  in_flight: number;
  served: number;
  /** Cluster mode: the worker that runs it. */
  worker_id?: string;
}
