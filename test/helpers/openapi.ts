import assert from 'node:assert/strict';
import { Validator } from '@seriousme/openapi-schema-validator';

/** Checks an OpenAPI document with @seriousme/openapi-schema-validator (the official OpenAPI 3.1 JSON schemas). */
export async function assertValidOpenApi(doc: unknown): Promise<void> {
  const result = await new Validator().validate(doc as Parameters<Validator['validate']>[0]);
  assert.ok(result.valid, `invalid OpenAPI document: ${JSON.stringify(result.errors, null, 2)}`);
}
