/** Input checked against a zod schema; the first problem becomes a 400 naming the field. */
import type { z } from 'zod';
import { type AetherError, badRequest } from './errors.js';

export function validate<T>(schema: z.ZodType<T>, input: unknown): T {
  const result = schema.safeParse(input);
  if (!result.success) throw validationError(result.error);
  return result.data;
}

/**
 * A 400 naming the first problem and where it is, e.g. `memory_mb: Too big: expected number to be <=8192`;
 * `part` says which part of a request (`query parameter`, `path parameter`) when not the body.
 */
export function validationError(error: z.ZodError, part = ''): AetherError {
  const issue = error.issues[0]!;
  const where = [part, issue.path.join('.')].filter(Boolean).join(' ');
  return badRequest(where ? `${where}: ${issue.message}` : issue.message, 'validation_failed');
}
