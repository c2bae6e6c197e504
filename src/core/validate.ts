/** Input checked against a zod schema; the first problem becomes a 400 naming the field. */
import type { z } from 'zod';
import { badRequest } from './errors.js';

export function validate<T>(schema: z.ZodType<T>, input: unknown): T {
  const result = schema.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const where = issue.path.length ? `${issue.path.join('.')}: ` : '';
    throw badRequest(`${where}${issue.message}`, 'validation_failed');
  }
  return result.data;
}
