/**
 * Running a Lambda-style handler as Lambda's Node.js runtime does: the `context` object, async and
 * callback-style handlers (and the legacy context.succeed/fail/done), and errors as Lambda reports them.
 */
import type { LambdaHandler } from './entry.mjs';
import { type AgentConfig, FUNCTION_ARN_PREFIX } from './protocol.mjs';

type Settle = (err: unknown, result?: unknown) => void;

export interface Invocation {
  requestId: string;
  /** Epoch ms by which the host wants the answer. */
  deadline: number;
}

/**
 * Lambda's context fields, plus Aether's own from its first handler API (functionId, instanceId,
 * requestId, deadline). Aether answers as soon as the handler settles: callbackWaitsForEmptyEventLoop
 * is there for code that sets it, and changes nothing.
 */
function lambdaContext(config: AgentConfig, inv: Invocation, settle: Settle) {
  return {
    functionName: config.function_name,
    functionVersion: '$LATEST',
    invokedFunctionArn: `${FUNCTION_ARN_PREFIX}${config.function_name}`,
    memoryLimitInMB: String(config.memory_mb),
    awsRequestId: inv.requestId,
    logGroupName: `/aws/lambda/${config.function_name}`,
    logStreamName: config.instance_id,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, inv.deadline - Date.now()),
    done: settle,
    succeed: (result?: unknown) => settle(null, result),
    fail: (err: unknown) => settle(err ?? new Error('handler failed')),
    functionId: config.function_id,
    instanceId: config.instance_id,
    requestId: inv.requestId,
    deadline: inv.deadline,
  };
}

/**
 * Calls the handler and settles with the first of: its promise, the callback, context.succeed/fail/done,
 * or (a handler declaring fewer than 3 parameters) the value it returned.
 */
export function invokeHandler(handler: LambdaHandler, event: unknown, config: AgentConfig, inv: Invocation): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const settle: Settle = (err, result) => (err !== null && err !== undefined ? reject(err) : resolve(result));
    const returned = handler(event, lambdaContext(config, inv, settle), settle);
    if (handler.length < 3 || isThenable(returned)) Promise.resolve(returned).then(resolve, reject);
  });
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | undefined)?.then === 'function';
}

/**
 * A handler's failure as Lambda's Invoke API reports it: errorType and errorMessage, the stack as
 * `trace` (Lambda's Node.js runtime) and `stackTrace` (its other runtimes and its API docs).
 */
export function errorPayload(err: unknown): { errorType: string; errorMessage: string; trace: string[]; stackTrace: string[] } {
  if (err instanceof Error) {
    const trace = (err.stack ?? `${err.name}: ${err.message}`).split('\n');
    return { errorType: err.name || 'Error', errorMessage: err.message, trace, stackTrace: trace };
  }
  return { errorType: typeof err, errorMessage: typeof err === 'string' ? err : safeJson(err), trace: [], stackTrace: [] };
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
