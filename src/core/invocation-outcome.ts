/** How an invocation ended, in a few fixed classes: a bounded label for metrics. */
import type { ErrorCode } from './errors.js';

export const OUTCOMES = ['success', 'function_error', 'crashed', 'timeout', 'rejected', 'start_failed', 'failed'] as const;
export type InvocationOutcome = (typeof OUTCOMES)[number];

/**
 * `errorCode`: set when Aether answered instead of the function (here or on a worker). Otherwise the
 * function answered: with a 5xx, or with an error it reported itself (a handler that threw), it failed.
 */
export function invocationOutcome(inv: { status: number; error: string | null; errorCode?: ErrorCode }): InvocationOutcome {
  if (inv.errorCode === undefined) return inv.status >= 500 || inv.error !== null ? 'function_error' : 'success';
  switch (inv.errorCode) {
    case 'function_crashed':
    case 'function_error':
    case 'instance_stopped':
      return 'crashed';
    case 'response_too_large':
      return 'function_error';
    case 'timeout':
    case 'start_timeout':
      return 'timeout';
    case 'start_failed':
    case 'function_failing': // refused at once while its starts back off
      return 'start_failed';
    case 'queue_full':
    case 'no_capacity':
    case 'queue_unavailable':
      return 'rejected';
    default:
      return 'failed';
  }
}
