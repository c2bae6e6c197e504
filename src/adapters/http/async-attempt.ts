/**
 * One attempt of an async invocation: the stored request goes to an instance exactly as a synchronous
 * invocation's would (same leases, retries of refused connections, records), marked as an `Event`
 * attempt in the record. Its answer is read and dropped; only whether it failed matters.
 */
import type { AsyncEvent } from '../../core/types.js';
import { newInvocationId } from '../../core/invocations.js';
import type { FunctionRecord } from '../../core/types.js';
import { FUNCTION_ERROR_HEADER } from '../../guest/agent/protocol.mjs';
import { exchange } from './forward.js';
import { describeFunctionError } from './lambda/invoke-api.js';
import { type InvokeDeps, runInvocation } from './invocation.js';

/** An answer larger than this is cut off and counts as a failed attempt (Lambda's sync limit, as for the Invoke API). */
const MAX_ANSWER_BYTES = 6 * 1024 * 1024;

/**
 * Resolves with why the attempt failed, or null when it succeeded. An Invoke API event fails as it
 * would synchronously (the handler threw, or a server-mode function answered no success); an HTTP
 * request fails when its record would (an error, or a 5xx).
 */
export async function attemptAsync(deps: InvokeDeps, fn: FunctionRecord, ev: AsyncEvent): Promise<string | null> {
  const body = Buffer.from(ev.request.body, 'base64');
  const started = Date.now();
  const ids = { id: newInvocationId(started), requestId: ev.request_id, started, type: 'Event' as const, attempt: ev.attempts };
  const { result, failure } = await runInvocation(deps, fn, ids, {
    prepare: async () => body,
    send: async (lease, _prepared, sofar) => {
      const out = await exchange(lease, {
        method: ev.request.method,
        path: (lease.remote?.pathPrefix ?? '') + ev.request.path,
        requestId: ev.request_id,
        deadline: Date.now() + fn.timeout_ms + (lease.remote ? deps.startTimeoutMs : 0),
        connections: lease.remote?.maxConnections ?? fn.concurrency,
        extraHeaders: lease.remote?.headers,
        instanceId: sofar.instanceId,
        headers: ev.request.headers,
        body,
        maxResponseBytes: MAX_ANSWER_BYTES,
      });
      const failed = out.headers[FUNCTION_ERROR_HEADER] !== undefined || (ev.source === 'invoke' ? out.status >= 300 : out.status >= 500);
      const described = ev.source === 'invoke' ? describeFunctionError(out.body, out.status) : `the function answered HTTP ${out.status}`;
      return { ...out, error: out.error ?? (failed ? described : null) };
    },
  });
  return result ? result.error : failure.error.message;
}
