/** The human-readable side of a run: aligned tables on stdout. */
import os from 'node:os';
import type { AppColdStartRow } from './app-cold-start.js';
import type { BurstRow } from './burst.js';
import type { ColdStartRow } from './cold-start.js';
import type { LogFloodRow } from './log-flood.js';
import type { ClusterVsSingle } from './compare.js';
import type { MicroVmRow } from './microvm.js';
import type { TargetCheck } from './targets.js';
import type { ThroughputRow } from './throughput.js';
import type { WarmLatencyRow } from './warm-latency.js';
import type { WarmPoolRow } from './warm-pool.js';

type Cell = string | number;

export function table(title: string, head: string[], rows: Cell[][]): string {
  const text = rows.map((r) => r.map(String));
  const widths = head.map((h, i) => Math.max(h.length, ...text.map((r) => r[i]!.length)));
  // Text columns left-aligned, numbers right-aligned.
  const numeric = head.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number'));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [`\n${title}`, line(head), line(widths.map((w) => '-'.repeat(w))), ...text.map(line)].join('\n');
}

const fixed = (n: number, digits = 1) => Number(n.toFixed(digits));

export function coldStartTable(rows: ColdStartRow[]): string {
  return table(
    'Cold start: no instance -> first response byte (ms); node = `node -e` spawn -> first byte',
    ['setup', 'driver', 'mode', 'n', 'aether p50', 'p95', 'of which start p50', 'node p50', 'p95', 'x node p50', 'x node p95'],
    rows.map((r) => [
      r.setup,
      r.driver,
      r.mode,
      r.aether.n,
      fixed(r.aether.p50),
      fixed(r.aether.p95),
      fixed(r.instance_start.p50),
      fixed(r.node.p50),
      fixed(r.node.p95),
      r.ratio_p50,
      r.ratio_p95,
    ]),
  );
}

/**
 * Real apps next to the trivial server function of the same run: what the app adds to the instance's
 * start is loading and compiling its modules (the sandbox and node cost the same for both).
 */
export function appColdStartTable(rows: AppColdStartRow[], cold: ColdStartRow[]): string {
  return table(
    "Real-app cold start: fresh function -> first response byte (ms); modules = instance start - trivial server function's; node = `node index.js` -> first byte",
    [
      'setup',
      'driver',
      'app',
      'start',
      'n',
      'aether p50',
      'p95',
      'instance start p50',
      'modules p50',
      'node p50',
      'x node p50',
      'prepare p50',
    ],
    rows.map((r) => {
      const trivial = cold.find((c) => c.setup === r.setup && c.driver === r.driver && c.mode === 'server');
      return [
        r.setup,
        r.driver,
        r.app,
        r.start_mode,
        r.aether.n,
        fixed(r.aether.p50),
        fixed(r.aether.p95),
        fixed(r.instance_start.p50),
        trivial ? fixed(r.instance_start.p50 - trivial.instance_start.p50) : '-',
        fixed(r.node.p50),
        r.ratio_p50,
        fixed(r.prepare.p50),
      ];
    }),
  ).concat(
    rows
      .filter((r) => r.fallback_reason)
      .map((r) => `\n${r.driver} ${r.app}: plain start because ${r.fallback_reason}`)
      .join(''),
  );
}

export function microVmTable(r: MicroVmRow): string {
  const phases: Array<[string, MicroVmRow['vmm']]> = [
    ['VMM: QEMU, firmware, kernel load', r.vmm],
    ['kernel: until /init', r.kernel],
    ['init: modules, devices, network, mounts', r.init],
    ['agent: node start until ready', r.agent],
    ['= ready (QEMU spawned -> agent ready)', r.ready],
    ['first byte (ready -> first response byte)', r.first_byte],
    ['cold start (driver.start -> first byte)', r.cold_start],
  ];
  const phaseTable = table(
    `MicroVM cold start: ${r.driver} driver under ${r.accel.toUpperCase()}, ${r.mode} mode; phases from the driver's boot timings (ms)`,
    ['phase', 'n', 'p50', 'p95', 'min', 'max'],
    phases.map(([name, s]) => [name, s.n, fixed(s.p50), fixed(s.p95), fixed(s.min), fixed(s.max)]),
  );
  const snap = r.snapshot;
  const snapTable = snap
    ? table(
        `MicroVM cold start from a snapshot (built once in ${snap.build_ms} ms), a function never run per sample (ms)`,
        ['phase', 'n', 'p50', 'p95', 'min', 'max'],
        (
          [
            ['restore: QEMU start, state loaded, guest runs', snap.restore],
            ['code: clock, RNG, code disk attached and mounted', snap.code],
            ['agent: config, function load, until ready', snap.agent],
            ['= ready (QEMU spawned -> agent ready)', snap.ready],
            ['first byte (ready -> first response byte)', snap.first_byte],
            ['cold start (driver.start -> first byte)', snap.cold_start],
          ] as const
        ).map(([name, s]) => [name, s.n, fixed(s.p50), fixed(s.p95), fixed(s.min), fixed(s.max)]),
      )
    : `MicroVM snapshot not measured: ${r.snapshot_error}`;
  return `${phaseTable}\n${snapTable}\naccelerator: ${r.accel} (${r.accel_detail})`;
}

export function warmLatencyTable(rows: WarmLatencyRow[]): string {
  return table(
    'Warm latency: sequential requests on one kept-alive connection (ms)',
    ['setup', 'driver', 'mode', 'n', 'aether p50', 'p99', 'direct p50', 'p99', 'overhead p50', 'p99', 'x direct p50'],
    rows.map((r) => [
      r.setup,
      r.driver,
      r.mode,
      r.aether.n,
      fixed(r.aether.p50, 3),
      fixed(r.aether.p99, 3),
      fixed(r.direct.p50, 3),
      fixed(r.direct.p99, 3),
      fixed(r.overhead_p50_ms, 3),
      fixed(r.overhead_p99_ms, 3),
      r.ratio_p50,
    ]),
  );
}

export function throughputTable(rows: ThroughputRow[]): string {
  return table(
    `Throughput: ${rows[0]?.connections ?? '-'} connections (2xx requests/s)`,
    ['setup', 'driver', 'mode', 's each', 'aether rps', 'direct rps', 'nginx rps', 'x direct', 'x nginx', 'instances', 'failures a/d/n'],
    rows.map((r) => [
      r.setup,
      r.driver,
      r.mode,
      r.seconds_each,
      r.aether_rps,
      r.direct_rps,
      r.nginx_rps ?? '-',
      r.ratio,
      r.ratio_vs_nginx ?? '-',
      r.aether_instances,
      `${r.aether_failures}/${r.direct_failures}/${r.nginx_failures ?? '-'}`,
    ]),
  );
}

export function logFloodTable(rows: LogFloodRow[]): string {
  return table(
    'Warm latency (ms) while another function prints as fast as it can, against the same function idle (before and after) and while the other only spins',
    [
      'setup',
      'driver',
      'flood s',
      'idle p50',
      'p99',
      'spin p50',
      'flood p50',
      'p99',
      'x idle p50',
      'x idle p99',
      'x spin p50',
      'printed',
      'kept',
      'dropped',
    ],
    rows.map((r) => [
      r.setup,
      r.driver,
      r.flood_seconds,
      fixed(r.idle.p50, 3),
      fixed(r.idle.p99, 3),
      fixed(r.spin.p50, 3),
      fixed(r.flood.p50, 3),
      fixed(r.flood.p99, 3),
      r.ratio_p50,
      r.ratio_p99,
      r.ratio_spin_p50,
      r.lines_printed,
      r.lines_kept,
      r.lines_dropped,
    ]),
  );
}

export function warmPoolTable(rows: WarmPoolRow[]): string {
  const out = table(
    'Warm pool: cold start of a function never run, from a pre-started instance (handler mode), against a node -e spawn (ms); idle cost per pooled instance; warm latency of a running function while the pool refills',
    [
      'driver',
      'cold p50',
      'cold p95',
      'of it: assign p50',
      'node -e p50',
      'ratio',
      'idle MB',
      'idle CPU %',
      'warm p99 idle pool',
      'warm p99 refilling',
      'refills pending',
    ],
    rows.map((r) => [
      r.driver,
      fixed(r.cold_from_pool.p50),
      fixed(r.cold_from_pool.p95),
      fixed(r.instance_start.p50),
      fixed(r.node.p50),
      `${r.ratio_p50} x`,
      fixed(r.idle_memory_mb),
      fixed(r.idle_cpu_percent),
      fixed(r.warm_idle_pool.p99),
      fixed(r.warm_during_refill.p99),
      `${r.refill_pending.at_start} -> ${r.refill_pending.at_end}`,
    ]),
  );
  // Where a cold start from the pool went: assigning the instance (mounting the code, the agent importing
  // the function and dialing in) vs the rest of the request's way; and the host's load then.
  const notes = rows.map(
    (r) =>
      `note ${r.driver}: of the cold start p50 ${fixed(r.cold_from_pool.p50)} ms, assigning the pooled instance took ${fixed(r.instance_start.p50)} ms ` +
      `(code mount, agent config, import, dial-in) and the request's own way the rest; load average ${r.load_average.toFixed(1)} on ${os.cpus().length} cpus`,
  );
  return `${out}\n${notes.join('\n')}`;
}

export function targetsTable(checks: TargetCheck[]): string {
  return table(
    'Targets',
    ['', 'target', 'setup', 'driver', 'mode', 'measured', 'limit'],
    checks.map((c) => [
      c.pass ? 'PASS' : 'MISS',
      c.target,
      c.setup,
      c.driver,
      c.mode,
      c.value === null ? (c.note ?? '-') : `${c.value} ${c.unit}`.trimEnd(),
      `${c.must} ${c.limit} ${c.unit}`.trimEnd(),
    ]),
  );
}

export function burstTable(rows: BurstRow[]): string {
  return table(
    'Burst: requests at once to a handler function with no instance (concurrency 1, max 20 instances); request -> body read (ms)',
    ['setup', 'driver', 'requests', 'failed', 'p50', 'p95', 'p99', 'max'],
    rows.map((r) => [
      r.setup,
      r.driver,
      r.requests,
      r.failures,
      fixed(r.latency.p50),
      fixed(r.latency.p95),
      fixed(r.latency.p99),
      fixed(r.latency.max),
    ]),
  );
}

export function clusterTable(rows: ClusterVsSingle[]): string {
  return table(
    'Cluster (1 gateway + 1 worker, etcd/Redis/S3) vs single node; cold start = through gateway -> Redis queue -> worker',
    ['metric', 'driver', 'mode', 'unit', 'single', 'cluster', 'x single'],
    rows.map((r) => [r.metric, r.driver, r.mode, r.unit, fixed(r.single, 3), fixed(r.cluster, 3), r.ratio ?? '-']),
  );
}
