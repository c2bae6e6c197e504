/**
 * Errors of the Lambda Invoke API in Lambda's own shape, which AWS SDKs and the aws CLI parse:
 * the type in the `x-amzn-ErrorType` header and `{"Type": "User", "message": ...}` as the body.
 */
import type { FastifyReply } from 'fastify';

export class LambdaApiError extends Error {
  constructor(
    readonly status: number,
    /** Lambda's exception name, e.g. ResourceNotFoundException: what clients branch on. */
    readonly type: string,
    message: string,
    /** More fields of the body, e.g. TooManyRequestsException's Reason. */
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'LambdaApiError';
  }
}

export function sendLambdaError(reply: FastifyReply, err: LambdaApiError, requestId?: string): FastifyReply {
  if (requestId) void reply.header('x-amzn-RequestId', requestId);
  return reply
    .status(err.status)
    .header('x-amzn-ErrorType', err.type)
    .header('content-type', 'application/json')
    .send(JSON.stringify({ Type: err.status >= 500 ? 'Service' : 'User', message: err.message, ...err.extra }));
}

export const accessDenied = (type: string, message: string) => new LambdaApiError(403, type, message);
export const invalidParameter = (message: string) => new LambdaApiError(400, 'InvalidParameterValueException', message);
