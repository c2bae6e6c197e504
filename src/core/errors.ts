/** The one error type the core raises; adapters map `status` and `code` onto their protocol. */
export class AetherError extends Error {
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

/** The message of anything thrown, for logs and error texts. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
