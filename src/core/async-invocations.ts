/**
 * Async (`Event`) invocations: accepted once durably queued, then run at least once by a dispatcher,
 * retried with backoff (async-retry.ts), and dead-lettered when they keep failing. The queue is a
 * port (SQLite on one node, Redis Streams in a cluster); how an attempt reaches an instance is the
 * caller's (`attempt`), so this module knows nothing of HTTP.
 */
import { afterAttempt, type DeadLetterReason, isExpired, type RetryPolicy } from './async-retry.js';
import { AetherError, errorMessage, tooLarge } from './errors.js';
import { newInvocationId } from './invocations.js';
import type { AsyncQueue, Logger, TakenEvent } from './ports.js';
import type { AsyncEvent, DeadLetter, EventRequest, FunctionRecord } from './types.js';

/** Lambda's limit for an async invocation's payload; the HTTP route's Event requests are held to it too. */
export const MAX_ASYNC_PAYLOAD_BYTES = 256 * 1024;

/** A dead letter as the API shows it: what failed, when, why; the request's headers stay out of it. */
export interface DeadLetterView {
  id: string;
  request_id: string;
  function_id: string;
  source: 'invoke' | 'http';
  method: string;
  path: string;
  /** The Invoke API's JSON event as text; null for HTTP requests (their body may be binary). */
  payload: string | null;
  payload_bytes: number;
  accepted_at: string;
  failed_at: string;
  attempts: number;
  reason: DeadLetterReason;
  error: string | null;
}

export function deadLetterView({ event, reason, failed_at }: DeadLetter): DeadLetterView {
  const body = Buffer.from(event.request.body, 'base64');
  return {
    id: event.id,
    request_id: event.request_id,
    function_id: event.function_id,
    source: event.source,
    method: event.request.method,
    path: event.request.path,
    payload: event.source === 'invoke' ? body.toString('utf8') : null,
    payload_bytes: body.length,
    accepted_at: new Date(event.accepted_at).toISOString(),
    failed_at: new Date(failed_at).toISOString(),
    attempts: event.attempts,
    reason,
    error: event.last_error,
  };
}

/** The event a redriven dead letter becomes: a fresh start, under its old id. */
export function redriven(letter: DeadLetter, now: number): AsyncEvent {
  return { ...letter.event, accepted_at: now, due_at: now, attempts: 0, last_error: null };
}

/** The use cases of the API: accept an event, list, redrive and delete dead letters. */
export class AsyncInvocations {
  constructor(
    private readonly queue: AsyncQueue,
    private readonly functions: { get(idOrName: string): Promise<FunctionRecord> },
    /** Told of every newly queued event (the local dispatcher wakes up). */
    private readonly onQueued: () => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  /** Resolves once the event is durably queued: only then may the client be told 202. */
  async accept(
    fn: FunctionRecord,
    source: AsyncEvent['source'],
    request: EventRequest,
    opts: { requestId?: string; qualifier?: string } = {},
  ): Promise<AsyncEvent> {
    const bytes = Buffer.byteLength(request.body, 'base64');
    if (bytes > MAX_ASYNC_PAYLOAD_BYTES) {
      throw tooLarge(
        `an async invocation's payload may be at most ${MAX_ASYNC_PAYLOAD_BYTES} bytes (this one: ${bytes}); invoke it synchronously`,
      );
    }
    const now = this.now();
    const id = newInvocationId(now);
    const event: AsyncEvent = {
      id,
      request_id: opts.requestId ?? id,
      function_id: fn.id,
      qualifier: opts.qualifier,
      source,
      request,
      accepted_at: now,
      attempts: 0,
      due_at: now,
      last_error: null,
    };
    await this.queue.enqueue(event);
    this.onQueued();
    return event;
  }

  async deadLetters(idOrName: string, limit: number): Promise<DeadLetterView[]> {
    const fn = await this.functions.get(idOrName);
    return (await this.queue.deadLetters(fn.id, limit)).map(deadLetterView);
  }

  /** Queues one dead letter (or all, without `eventId`) again; how many. */
  async redrive(idOrName: string, eventId?: string): Promise<number> {
    const fn = await this.functions.get(idOrName);
    const n = await this.queue.redrive(fn.id, eventId, this.now());
    if (eventId && n === 0) throw missingLetter(fn, eventId);
    if (n > 0) this.onQueued();
    return n;
  }

  /** Deletes one dead letter (or all); how many. */
  async remove(idOrName: string, eventId?: string): Promise<number> {
    const fn = await this.functions.get(idOrName);
    const n = await this.queue.removeDeadLetters(fn.id, eventId);
    if (eventId && n === 0) throw missingLetter(fn, eventId);
    return n;
  }
}

const missingLetter = (fn: FunctionRecord, eventId: string) =>
  new AetherError('dead_letter_not_found', `function ${fn.name} has no dead letter ${eventId} (GET its dead-letters for the ids)`);

export interface DispatcherDeps {
  queue: AsyncQueue;
  /** The record an attempt runs: the event's function at its qualifier. */
  functions: { resolve(idOrName: string, qualifier?: string): Promise<{ fn: FunctionRecord }> };
  /** Runs one attempt (and records it as an invocation); resolves with why it failed, or null. */
  attempt(fn: FunctionRecord, event: AsyncEvent): Promise<string | null>;
  /** Attempts of one function that this dispatcher runs at once: the rest of its capacity stays for sync requests. */
  perFunction: number;
  retry: Pick<RetryPolicy, 'baseDelayMs' | 'maxDelayMs'>;
  /** How often the queue is looked at when nothing woke the dispatcher (retries falling due, other gateways' events). */
  pollMs: number;
  log: Logger;
  now?: () => number;
  random?: () => number;
}

/** Takes due events from the queue within each function's bound, runs them, and files the outcome. */
export class AsyncDispatcher {
  private readonly running = new Map<string, number>();
  private stopped = false;
  private wake: (() => void) | undefined;
  private woken = false;
  private loop: Promise<void> | undefined;
  private readonly now: () => number;
  private readonly random: () => number;

  constructor(private readonly deps: DispatcherDeps) {
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Something changed (an event was queued, an attempt ended): look at the queue now. */
  notify(): void {
    this.woken = true;
    this.wake?.();
  }

  /** Stops taking events. Attempts in flight are abandoned: unfiled, their events run again later. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.notify();
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      this.woken = false;
      let taken: TakenEvent[] = [];
      try {
        taken = await this.deps.queue.take((functionId) => this.deps.perFunction - (this.running.get(functionId) ?? 0), this.now());
      } catch (err) {
        this.deps.log.warn({ err: errorMessage(err) }, 'async invocations: the queue cannot be read');
      }
      for (const t of taken) void this.execute(t);
      if (this.woken || this.stopped) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.deps.pollMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private async execute(t: TakenEvent): Promise<void> {
    const { queue } = this.deps;
    const ev = t.event;
    this.running.set(ev.function_id, (this.running.get(ev.function_id) ?? 0) + 1);
    try {
      let fn: FunctionRecord;
      try {
        ({ fn } = await this.deps.functions.resolve(ev.function_id, ev.qualifier));
      } catch (err) {
        if (err instanceof AetherError && err.status === 404) {
          // The function, or the version it was invoked with (retention), is gone: nothing can run it.
          this.deps.log.warn({ event: ev.id, err: err.message }, 'async invocation dropped');
          return await queue.done(t);
        }
        throw err;
      }
      const policy: RetryPolicy = { ...this.deps.retry, maxRetries: fn.max_retries, maxEventAgeMs: fn.max_event_age_s * 1000 };
      if (isExpired({ acceptedAt: ev.accepted_at, attempts: ev.attempts }, policy, this.now())) {
        return await queue.deadLetter(t, { event: ev, reason: 'expired', failed_at: this.now() });
      }
      const attempted: AsyncEvent = { ...ev, attempts: ev.attempts + 1 };
      attempted.last_error = await this.deps.attempt(fn, attempted);
      if (this.stopped) return;
      const now = this.now();
      const next = afterAttempt(
        { acceptedAt: ev.accepted_at, attempts: attempted.attempts },
        attempted.last_error !== null,
        policy,
        now,
        this.random(),
      );
      if (next.kind === 'done') await queue.done(t);
      else if (next.kind === 'retry') await queue.retry(t, { ...attempted, due_at: next.at });
      else await queue.deadLetter(t, { event: attempted, reason: next.reason, failed_at: now });
    } catch (err) {
      // Unfiled, the event stays queued: it runs again (at least once, never lost).
      if (!this.stopped) this.deps.log.error({ err: errorMessage(err), event: ev.id }, 'async invocation could not be filed');
    } finally {
      const n = (this.running.get(ev.function_id) ?? 1) - 1;
      if (n > 0) this.running.set(ev.function_id, n);
      else this.running.delete(ev.function_id);
      this.notify();
    }
  }
}
