/**
 * The performance targets, checked against the measured numbers (nothing here is assumed). A cluster
 * is held to the same targets as a single node: its extra hops are what it must afford within them.
 */
import type { Setup } from './aether.js';
import type { ColdStartRow } from './cold-start.js';
import type { ThroughputRow } from './throughput.js';
import type { WarmLatencyRow } from './warm-latency.js';

export interface TargetCheck {
  target: string;
  setup: Setup;
  driver: string;
  mode: string;
  value: number;
  limit: number;
  /** How value must compare to limit. */
  must: '<=' | '>=';
  unit: string;
  pass: boolean;
}

const WARM_OVERHEAD_MAX_MS = 1;
const THROUGHPUT_MIN_RATIO = 0.5;
/** gVisor's user-space kernel costs more to boot than bubblewrap's namespaces: separate budgets. */
const COLD_START_MAX_MS: Record<string, number> = { bwrap: 150, gvisor: 500 };

function check(
  target: string,
  row: { setup: Setup; driver: string; mode: string },
  value: number,
  must: '<=' | '>=',
  limit: number,
  unit: string,
): TargetCheck {
  return {
    target,
    setup: row.setup,
    driver: row.driver,
    mode: row.mode,
    value,
    limit,
    must,
    unit,
    pass: must === '<=' ? value <= limit : value >= limit,
  };
}

export function checkTargets(cold: ColdStartRow[], warm: WarmLatencyRow[], throughput: ThroughputRow[]): TargetCheck[] {
  return [
    ...cold
      .filter((r) => COLD_START_MAX_MS[r.driver] !== undefined)
      .map((r) => check('cold start p50', r, r.aether.p50, '<=', COLD_START_MAX_MS[r.driver]!, 'ms')),
    ...warm.map((r) => check('warm overhead p50', r, r.overhead_p50_ms, '<=', WARM_OVERHEAD_MAX_MS, 'ms')),
    ...throughput.map((r) => check('throughput vs direct', r, r.ratio, '>=', THROUGHPUT_MIN_RATIO, 'x')),
  ];
}
