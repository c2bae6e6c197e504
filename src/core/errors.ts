/** What an invocation record needs from a failure besides the message. */
export interface FailureContext {
  /** The instance involved (it crashed, timed out, or failed to start). */
  instanceId?: string;
  /** The request had waited for a new instance. */
  coldStart?: boolean;
}

/** The one error type the core raises; adapters map `status` and `code` onto their protocol. */
export class AetherError extends Error {
  readonly context: FailureContext = {};
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'AetherError';
  }
}

export const badRequest = (message: string, code = 'invalid_request') => new AetherError(400, code, message);
export const notFound = (message: string) => new AetherError(404, 'not_found', message);
export const conflict = (message: string) => new AetherError(409, 'conflict', message);
export const tooLarge = (message: string) => new AetherError(413, 'too_large', message);
export const badGateway = (message: string, code = 'function_error') => new AetherError(502, code, message);
export const unavailable = (message: string, code = 'no_capacity') => new AetherError(503, code, message);
export const timedOut = (message: string) => new AetherError(504, 'timeout', message);

/** Adds what is known about the invocation to an error on its way up. */
export function involving<E extends AetherError>(err: E, context: FailureContext): E {
  Object.assign(err.context, context);
  return err;
}

/** The message of anything thrown, for logs and error texts. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
