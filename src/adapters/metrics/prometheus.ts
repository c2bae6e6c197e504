/**
 * The Metrics port on prom-client: one registry per process, rendered in Prometheus' text format.
 * Every per-function series is labelled by the function's name only, so cardinality is bounded by
 * the number of functions; series of functions that no longer exist (deleted, renamed) are removed
 * at the next scrape. Gauges are computed at scrape time from what is live, never incremented blindly.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { OUTCOMES, type InvocationOutcome } from '../../core/invocation-outcome.js';
import type { BootPhases, InvocationMetrics, Logger, Metrics } from '../../core/ports.js';
import type { FunctionRecord, InstanceState } from '../../core/types.js';

export interface PrometheusSources {
  /** Names of the functions that exist now: the series of any other name are removed. */
  functionNames(): Promise<Iterable<string>>;
  /** Instances per function and state, where this process runs instances (serve, worker). */
  instances?(): Iterable<{ fn: FunctionRecord; state: InstanceState; count: number }>;
  log: Logger;
}

const LINT_FAILURES = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];
const PHASES = ['vmm', 'kernel', 'init', 'agent'] as const satisfies readonly (keyof BootPhases)[];
const s = (ms: number) => ms / 1000;

/** Requests of one function in this process right now (dropped at zero: a deleted function's go with its last request). */
interface Load {
  waiting: number;
  inFlight: number;
}

export class PrometheusMetrics implements Metrics {
  readonly registry = new Registry();
  private readonly invocations: Counter<'function' | 'outcome'>;
  private readonly duration: Histogram<'function'>;
  private readonly coldStarts: Histogram<'function'>;
  private readonly bootPhases: Histogram<'phase'>;
  private readonly startFailures: Counter<'function'>;
  private readonly oomKills: Counter<'function'>;
  private readonly droppedLines: Counter<'function'>;
  private readonly provisioning: Histogram;
  private readonly load = new Map<string, Load>();
  /** Every function name that has series, so that they can be removed. */
  private readonly named = new Set<string>();

  constructor(private readonly sources: PrometheusSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // Gauges named *_total fail Prometheus' lint (`promtool check metrics`); the same counts are in
    // nodejs_active_handles, _requests and _resources, by type.
    for (const name of LINT_FAILURES) this.registry.removeSingleMetric(name);
    this.invocations = new Counter({
      name: 'aether_invocations_total',
      help: 'Invocations handled by this process, by function and outcome',
      labelNames: ['function', 'outcome'],
      registers,
    });
    this.duration = new Histogram({
      name: 'aether_invocation_duration_seconds',
      help: 'Time from the request reaching this process to the end of its response, by function',
      labelNames: ['function'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.coldStarts = new Histogram({
      name: 'aether_cold_start_duration_seconds',
      help: 'Time for a new instance to become ready, by function',
      labelNames: ['function'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
      registers,
    });
    this.bootPhases = new Histogram({
      name: 'aether_microvm_boot_phase_seconds',
      help: 'MicroVM cold starts by phase: vmm (VMM start), kernel, init, agent (until ready)',
      labelNames: ['phase'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers,
    });
    this.startFailures = new Counter({
      name: 'aether_instance_start_failures_total',
      help: 'Instances that failed to start, by function',
      labelNames: ['function'],
      registers,
    });
    this.oomKills = new Counter({
      name: 'aether_oom_kills_total',
      help: 'Instances killed for exceeding their memory limit, by function',
      labelNames: ['function'],
      registers,
    });
    this.droppedLines = new Counter({
      name: 'aether_log_lines_dropped_total',
      help: 'Lines of function output dropped by the log pipeline, by function',
      labelNames: ['function'],
      registers,
    });
    this.provisioning = new Histogram({
      name: 'aether_provision_queue_lag_seconds',
      help: 'Cluster worker: time a provisioning job waited in the queue before this worker took it',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    const load = this.load;
    const loadGauge = (name: string, help: string, pick: (l: Load) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['function'],
        registers,
        collect() {
          this.reset();
          for (const [fn, l] of load) this.set({ function: fn }, pick(l));
        },
      });
    loadGauge('aether_requests_waiting', 'Requests waiting for an instance (queued, or for a cold start), by function', (l) => l.waiting);
    loadGauge('aether_requests_in_flight', 'Requests being served by an instance, by function', (l) => l.inFlight);
    const instances = sources.instances;
    if (instances) {
      new Gauge({
        name: 'aether_instances',
        help: 'Instances on this host, by function and state',
        labelNames: ['function', 'state'],
        registers,
        collect() {
          this.reset();
          for (const { fn, state, count } of instances()) this.set({ function: fn.name, state }, count);
        },
      });
    }
  }

  invocationStarted(fn: FunctionRecord): InvocationMetrics {
    const name = this.seen(fn);
    let phase: keyof Load | 'none' | 'done' = 'none';
    const move = (to: typeof phase) => {
      if (phase === 'done') return;
      const l = this.load.get(name) ?? { waiting: 0, inFlight: 0 };
      if (phase !== 'none') l[phase]--;
      if (to !== 'none' && to !== 'done') l[to]++;
      if (l.waiting === 0 && l.inFlight === 0) this.load.delete(name);
      else this.load.set(name, l);
      phase = to;
    };
    return {
      waiting: () => move('waiting'),
      running: () => move('inFlight'),
      done: (outcome: InvocationOutcome, ms: number) => {
        if (phase === 'done') return;
        move('done');
        this.invocations.inc({ function: this.seen(fn), outcome });
        this.duration.observe({ function: name }, s(ms));
      },
    };
  }

  coldStart(fn: FunctionRecord, ms: number, phases?: BootPhases): void {
    this.coldStarts.observe({ function: this.seen(fn) }, s(ms));
    for (const phase of PHASES) {
      const value = phases?.[phase];
      if (value !== undefined) this.bootPhases.observe({ phase }, s(value));
    }
  }

  startFailed(fn: FunctionRecord): void {
    this.startFailures.inc({ function: this.seen(fn) });
  }

  oomKilled(fn: FunctionRecord): void {
    this.oomKills.inc({ function: this.seen(fn) });
  }

  logLinesDropped(fn: FunctionRecord, lines: number): void {
    if (lines > 0) this.droppedLines.inc({ function: this.seen(fn) }, lines);
  }

  provisionLag(ms: number): void {
    this.provisioning.observe(s(Math.max(0, ms)));
  }

  /** The registry in Prometheus' text format, without the series of functions that are gone. */
  async render(): Promise<{ contentType: string; body: string }> {
    try {
      const live = new Set(await this.sources.functionNames());
      for (const name of this.named) if (!live.has(name)) this.forget(name);
    } catch (err) {
      // The store is unreachable: keep every series rather than guess which are gone.
      this.sources.log.warn({ err: (err as Error).message }, 'metrics: could not list functions to prune series');
    }
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  private seen(fn: FunctionRecord): string {
    this.named.add(fn.name);
    return fn.name;
  }

  private forget(name: string): void {
    this.named.delete(name);
    const labels = { function: name };
    for (const outcome of OUTCOMES) this.invocations.remove({ ...labels, outcome });
    for (const metric of [this.duration, this.coldStarts, this.startFailures, this.oomKills, this.droppedLines]) metric.remove(labels);
  }
}
