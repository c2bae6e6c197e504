/**
 * Cluster vs single node, per driver and mode: what the gateway -> Redis queue -> worker path costs
 * on top of one process. Each side's number was measured against its own direct-node baseline in the
 * same run; the ratio is cluster / single.
 */
import type { ColdStartRow } from './cold-start.js';
import { ratio } from './stats.js';
import type { ThroughputRow } from './throughput.js';
import type { WarmLatencyRow } from './warm-latency.js';

export interface ClusterVsSingle {
  driver: string;
  mode: string;
  metric: string;
  unit: string;
  single: number;
  cluster: number;
  /** cluster / single; null where single is not above zero (an overhead within noise of nothing). */
  ratio: number | null;
}

type Row = { setup: string; driver: string; mode: string };

export function compareClusterToSingle(cold: ColdStartRow[], warm: WarmLatencyRow[], throughput: ThroughputRow[]): ClusterVsSingle[] {
  return [
    ...metric('cold start p50', 'ms', cold, (r) => r.aether.p50),
    ...metric('cold start p95', 'ms', cold, (r) => r.aether.p95),
    ...metric('warm overhead p50', 'ms', warm, (r) => r.overhead_p50_ms),
    ...metric('warm overhead p99', 'ms', warm, (r) => r.overhead_p99_ms),
    ...metric('throughput', 'req/s', throughput, (r) => r.aether_rps),
  ];
}

/** The metric for every cluster row that has a single-node row of the same driver and mode. */
function metric<R extends Row>(name: string, unit: string, rows: R[], value: (row: R) => number): ClusterVsSingle[] {
  return rows
    .filter((c) => c.setup === 'cluster')
    .flatMap((c) => {
      const s = rows.find((r) => r.setup === 'single' && r.driver === c.driver && r.mode === c.mode);
      if (!s) return [];
      const [single, cluster] = [value(s), value(c)];
      return [{ driver: c.driver, mode: c.mode, metric: name, unit, single, cluster, ratio: single > 0 ? ratio(cluster, single) : null }];
    });
}
