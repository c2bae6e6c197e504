/**
 * Exit codes the client commands promise to scripts (README, "CLI"), and the one error type that
 * carries them: its message is a single line that says what went wrong and what to do.
 */
export const EXIT = {
  ok: 0,
  /** The server answered with an error (or `invoke`: the function answered 4xx/5xx). */
  api: 1,
  /** Bad flags or arguments, no token, an unreadable settings file. */
  usage: 2,
  /** No such function. */
  notFound: 3,
  /** The token is missing or was rejected. */
  auth: 4,
  /** The server could not be reached. */
  unreachable: 5,
  /** `deploy`: the code is uploaded but its first instance did not answer. */
  notStarted: 6,
} as const;

export class CliError extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
    /** The HTTP status behind it, when the server answered. */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export const usageError = (message: string) => new CliError(EXIT.usage, message);
