/** The etcd key layout shared with the rest of the cluster (docs/deployment.md lists what each key holds). */
export const FUNCTIONS_PREFIX = '/aether/functions/';
export const NAMES_PREFIX = '/aether/names/';
/** A function's versions (`/aether/versions/{fnId}/{version}`) and aliases (`/aether/aliases/{fnId}/{name}`). */
export const VERSIONS_PREFIX = '/aether/versions/';
export const ALIASES_PREFIX = '/aether/aliases/';
export const WORKERS_PREFIX = '/workers/';
/** Functions whose instances fail to start: `/aether/failing/{functionId}` (see core/start-failures.ts). */
export const FAILING_PREFIX = '/aether/failing/';
/** Instance routes live under `/functions/{functionId}/instances/{instanceId}`. */
export const ROUTES_PREFIX = '/functions/';

export const functionKey = (id: string) => FUNCTIONS_PREFIX + id;
export const nameKey = (name: string) => NAMES_PREFIX + name;
export const versionKey = (functionId: string, version: number) => `${VERSIONS_PREFIX}${functionId}/${version}`;
export const aliasKey = (functionId: string, name: string) => `${ALIASES_PREFIX}${functionId}/${name}`;
export const workerKey = (id: string) => WORKERS_PREFIX + id;
export const instanceKey = (functionId: string, instanceId: string) => `${ROUTES_PREFIX}${functionId}/instances/${instanceId}`;
export const failingKey = (functionId: string) => FAILING_PREFIX + functionId;
