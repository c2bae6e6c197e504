/**
 * Turns what instances print, and what happens to them, into function log lines: a per-function
 * rate limit (drops reported as one marker line per window), secret env values masked, then handed
 * to the LogSink. Runs on the hot path of every line a function prints, so a dropped line costs a
 * budget check and nothing more.
 */
import { droppedMessage, LogBudget, type LogEntry, type LogLimits, type PlatformEvent } from './logs.js';
import type { ExitInfo, LogSink } from './ports.js';
import type { FunctionRecord } from './types.js';

/** What the pool tells about an instance's life, for its platform log lines. */
export type InstanceEvent =
  | { type: 'started'; cold_start_ms: number }
  | { type: 'start_failed'; error: string }
  | { type: 'exited'; exit: ExitInfo; expected: boolean }
  | { type: 'timeout'; request_id: string };

export interface LogWriterDeps {
  sink: LogSink;
  limits: LogLimits;
  /** Hides a function's secret env values in a line. */
  masker(fn: FunctionRecord): (line: string) => string;
  /** Each kept line, e.g. into the server's own log at debug level. */
  echo?(entry: LogEntry, fn: FunctionRecord): void;
  /** Lines dropped by the rate limit, reported with each marker line (e.g. for a metrics counter). */
  onDropped?(fn: FunctionRecord, count: number): void;
  now?: () => number;
}

/** Budgets of functions quiet for this long are forgotten once many are kept (deleted functions). */
const FORGET_AFTER_MS = 60_000;
const KEEP_FUNCTIONS = 1000;

interface FunctionState {
  fn: FunctionRecord;
  budget: LogBudget;
  markerTimer?: NodeJS.Timeout;
}

export class LogWriter {
  private readonly functions = new Map<string, FunctionState>();
  private readonly now: () => number;

  constructor(private readonly deps: LogWriterDeps) {
    this.now = deps.now ?? Date.now;
  }

  /** A line an instance wrote to stdout or stderr; handler mode names the invocation that wrote it. */
  line(fn: FunctionRecord, instanceId: string, stream: 'stdout' | 'stderr', text: string, requestId?: string): void {
    const state = this.state(fn);
    const { budget } = state;
    if (budget.dropped > 0 && budget.windowOver()) this.writeMarker(state);
    if (!budget.admit(Buffer.byteLength(text))) {
      state.markerTimer ??= this.markerTimer(state);
      return;
    }
    this.emit(fn, { instance_id: instanceId, stream, request_id: requestId ?? null, event: null, message: text });
  }

  /** A platform event about an instance. Rare, so never rate limited. */
  event(fn: FunctionRecord, instanceId: string, ev: InstanceEvent): void {
    const [event, message, requestId] = describe(ev);
    this.emit(fn, { instance_id: instanceId, stream: 'platform', request_id: requestId, event, message });
  }

  private emit(fn: FunctionRecord, e: Omit<LogEntry, 'time' | 'function_id' | 'version'>): void {
    const entry: LogEntry = { time: this.now(), function_id: fn.id, version: fn.version, ...e, message: this.deps.masker(fn)(e.message) };
    this.deps.sink.write(entry);
    this.deps.echo?.(entry, fn);
  }

  private writeMarker(state: FunctionState): void {
    clearTimeout(state.markerTimer);
    state.markerTimer = undefined;
    const count = state.budget.takeDropped();
    if (count === 0) return;
    this.emit(state.fn, {
      instance_id: null,
      stream: 'platform',
      request_id: null,
      event: 'dropped',
      message: droppedMessage(count, this.deps.limits),
    });
    this.deps.onDropped?.(state.fn, count);
  }

  /** When the flood stops, nothing else would write the marker: this does at the window's end. */
  private markerTimer(state: FunctionState): NodeJS.Timeout {
    const timer = setTimeout(() => this.writeMarker(state), Math.max(1, state.budget.windowEnd() - this.now()));
    timer.unref();
    return timer;
  }

  private state(fn: FunctionRecord): FunctionState {
    let state = this.functions.get(fn.id);
    if (!state) {
      if (this.functions.size >= KEEP_FUNCTIONS) this.forgetQuiet();
      state = { fn, budget: new LogBudget(this.deps.limits, this.now) };
      this.functions.set(fn.id, state);
    }
    state.fn = fn;
    return state;
  }

  private forgetQuiet(): void {
    const cutoff = this.now() - FORGET_AFTER_MS;
    for (const [id, s] of this.functions) if (s.budget.dropped === 0 && s.budget.windowEnd() < cutoff) this.functions.delete(id);
  }
}

function describe(ev: InstanceEvent): [PlatformEvent, string, string | null] {
  switch (ev.type) {
    case 'started':
      return ['started', `instance started (cold start ${ev.cold_start_ms} ms)`, null];
    case 'start_failed':
      return ['start_failed', `instance failed to start: ${ev.error}`, null];
    case 'timeout':
      return [
        'timeout',
        `request ${ev.request_id} timed out: no response within the function's timeout_ms; the instance is replaced`,
        ev.request_id,
      ];
    case 'exited': {
      const { exit } = ev;
      const how = exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
      const why = exit.reason ? `: ${exit.reason}` : '';
      if (exit.oom) return ['oom', `instance killed for memory (${how})${why}`, null];
      if (ev.expected) return ['stopped', `instance stopped (${how})`, null];
      return ['crashed', `instance crashed (${how})${why}`, null];
    }
  }
}
