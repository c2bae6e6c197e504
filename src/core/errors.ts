/**
 * Every error Aether answers with, as `{"error": {"code", "message"}}`: one closed list of codes, each
 * with its HTTP status and meaning (docs/errors.md shows it; a test keeps the two equal). A code that is
 * not here does not compile.
 */
export const ERRORS = {
  // The request
  invalid_request: { status: 400, meaning: 'The request is malformed: a bad header, query, body or field; the message says which.' },
  invalid_json: { status: 400, meaning: 'The body is not valid JSON (or empty where JSON is required).' },
  validation_failed: { status: 400, meaning: 'A function configuration breaks a rule (the message names the field and the rule).' },
  invalid_archive: { status: 400, meaning: 'The uploaded code is not a readable zip or tar.gz archive.' },
  unsafe_path: { status: 400, meaning: 'An archive entry would land outside the code directory (absolute path or `..`).' },
  symlink_not_allowed: { status: 400, meaning: 'An archive holds a symbolic or hard link; code archives may hold files and folders only.' },
  no_entry_point: {
    status: 400,
    meaning: 'The uploaded code has no entry module Aether can find; the message lists what the archive holds and how to fix it.',
  },
  invalid_alias: {
    status: 400,
    meaning: "An alias's weights add up to more than 1, or give a share to the alias's own version.",
  },
  body_incomplete: { status: 400, meaning: 'The client closed the connection before sending its whole request body.' },
  unauthorized: { status: 401, meaning: 'The bearer token (or, on a worker, the cluster token) is missing or wrong.' },
  not_found: { status: 404, meaning: 'No such function, code or route.' },
  version_not_found: {
    status: 404,
    meaning: 'The function has no such version: never deployed, or removed by retention (AETHER_VERSIONS_KEPT).',
  },
  alias_not_found: { status: 404, meaning: 'The function has no alias of that name.' },
  dead_letter_not_found: { status: 404, meaning: 'The function has no dead letter with that event id (it was redriven or deleted).' },
  body_timeout: { status: 408, meaning: 'The request body did not arrive within the body timeout.' },
  conflict: {
    status: 409,
    meaning: 'The request clashes with the current state: a name taken, no code uploaded yet, a concurrent change.',
  },
  too_large: { status: 413, meaning: 'A body, archive, entry count or unpacked size is over its limit.' },
  unsupported_media_type: {
    status: 415,
    meaning: 'The upload is neither multipart with a `file` field nor a raw application/zip or application/gzip body.',
  },
  // Aether itself
  internal: { status: 500, meaning: 'A bug in Aether: the server log has the details (the answer never does).' },
  // The function
  function_error: { status: 502, meaning: 'The function closed the connection without a (complete) response.' },
  function_crashed: { status: 502, meaning: 'The instance died while handling the request; the message says why (e.g. its memory limit).' },
  connection_refused: {
    status: 502,
    meaning: 'The instance or worker refused the connection (it is gone); routed around on the next request.',
  },
  start_failed: { status: 502, meaning: 'A new instance of the function failed to start; the message has its last words.' },
  code_corrupt: { status: 502, meaning: "The function's stored code does not match its hash; upload it again." },
  response_too_large: { status: 502, meaning: "The function's answer is over the route's limit (the Lambda Invoke API's 6 MB)." },
  // Capacity and dependencies
  no_capacity: { status: 503, meaning: 'No instance can be started now (max_instances, worker capacity, sandbox uids).' },
  queue_full: { status: 503, meaning: "The function's instances are busy and its queue of waiting requests is full." },
  function_failing: {
    status: 503,
    meaning: 'New instances of the function keep failing to start: no start is tried until the backoff ends.',
  },
  instance_stopped: { status: 503, meaning: 'The instance was stopped while the request was on its way; retry.' },
  too_many_followers: { status: 503, meaning: 'Too many clients follow logs on this server; try again later.' },
  store_unavailable: { status: 503, meaning: 'The function store (etcd) cannot be reached.' },
  discovery_unavailable: { status: 503, meaning: "Discovery (etcd) cannot be reached: the worker's instances are not announced yet." },
  queue_unavailable: { status: 503, meaning: 'The provisioning or async invocation queue (Redis) cannot be reached.' },
  code_store_unavailable: { status: 503, meaning: 'Code storage (S3) cannot be reached.' },
  timeout: {
    status: 504,
    meaning: 'The function did not answer within its timeout_ms (its instance is replaced), or did not start in time.',
  },
  start_timeout: { status: 504, meaning: 'A new instance did not become ready within the start timeout.' },
} as const satisfies Record<string, { status: number; meaning: string }>;

export type ErrorCode = keyof typeof ERRORS;
type Status = (typeof ERRORS)[ErrorCode]['status'];
/** The codes that answer with `status`. */
export type CodeWithStatus<S extends Status> = { [C in ErrorCode]: (typeof ERRORS)[C]['status'] extends S ? C : never }[ErrorCode];

/** What an invocation record needs from a failure besides the message. */
export interface FailureContext {
  /** The instance involved (it crashed, timed out, or failed to start). */
  instanceId?: string;
  /** The request had waited for a new instance. */
  coldStart?: boolean;
}

/**
 * The one error type the core raises; adapters map `status` and `code` onto their protocol. Where it
 * wraps another error, that error is its `cause` (logged with it), not flattened into the message.
 */
export class AetherError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly context: FailureContext = {};
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'AetherError';
    this.code = code;
    this.status = ERRORS[this.code].status;
  }
}

export const badRequest = (message: string, code: CodeWithStatus<400> = 'invalid_request', options?: ErrorOptions) =>
  new AetherError(code, message, options);
export const notFound = (message: string) => new AetherError('not_found', message);
export const conflict = (message: string) => new AetherError('conflict', message);
export const tooLarge = (message: string) => new AetherError('too_large', message);
export const badGateway = (message: string, code: CodeWithStatus<502> = 'function_error', options?: ErrorOptions) =>
  new AetherError(code, message, options);
export const unavailable = (message: string, code: CodeWithStatus<503> = 'no_capacity', options?: ErrorOptions) =>
  new AetherError(code, message, options);
export const timedOut = (message: string, options?: ErrorOptions) => new AetherError('timeout', message, options);

/** Adds what is known about the invocation to an error on its way up. */
export function involving<E extends AetherError>(err: E, context: FailureContext): E {
  Object.assign(err.context, context);
  return err;
}

/** The message of anything thrown, for logs and error texts. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
