/** Smoke tests of `npm run bench`: --quick runs must produce every section with real numbers. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

const ROOT = path.resolve(import.meta.dirname, '..');
const MODES = ['handler', 'server'];

const SECTIONS: Array<[string, string[]]> = [
  ['cold_start', ['aether.p50', 'aether.p95', 'instance_start.p50', 'node.p50', 'node.p95', 'ratio_p50']],
  ['warm_latency', ['aether.p50', 'aether.p99', 'direct.p50', 'direct.p99', 'ratio_p50']],
  ['throughput', ['aether_rps', 'direct_rps', 'nginx_rps', 'ratio', 'ratio_vs_nginx', 'aether_instances']],
];

function runBench(args: string[], jsonFile: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick', ...args, '--json', jsonFile], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c));
    proc.stderr.on('data', (c: Buffer) => (stderr += c));
    proc.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function assertNumbers(row: Record<string, any>, paths: string[], where: string): void {
  for (const p of paths) {
    const value = p.split('.').reduce((v, k) => v?.[k], row);
    assert.ok(typeof value === 'number' && Number.isFinite(value) && value >= 0, `${where}: ${p} is ${value}`);
  }
}

/** Runs the bench with `args` and hands its JSON results and stdout to `check`. */
async function benchRun(args: string[], check: (r: any, stdout: string) => void): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-bench-test-'));
  try {
    const jsonFile = path.join(dir, 'results.json');
    const { code, stdout, stderr } = await runBench(args, jsonFile);
    assert.equal(code, 0, `bench failed:\n${stdout}\n${stderr}`);
    const r = JSON.parse(fs.readFileSync(jsonFile, 'utf8'));
    assert.equal(r.quick, true);
    check(r, stdout);
    // The nginx baseline ran (setup installs it; --logs needs none), and every target is judged on its
    // number, or is a MISS with the reason it has none (what is not implemented yet is listed, not left out).
    assert.deepEqual(r.nginx, args.includes('--logs') ? { ran: false, reason: 'not needed by --logs' } : { ran: true });
    for (const t of r.targets) {
      if (t.value === null) assert.ok(!t.pass && t.note, JSON.stringify(t));
      else assert.equal(t.pass, t.must === '<=' ? t.value <= t.limit : t.value >= t.limit, JSON.stringify(t));
    }
    const ratios = (name: string) => r.targets.filter((t: any) => t.target === name);
    assert.equal(ratios('throughput vs nginx->node').length, r.throughput.length);
    for (const t of ratios('throughput vs nginx->node')) {
      const row = r.throughput.find((x: any) => x.setup === t.setup && x.driver === t.driver && x.mode === t.mode);
      assert.equal(t.value, Math.round((row.aether_rps / row.nginx_rps) * 100) / 100, JSON.stringify(t));
    }
    // The warm pool's targets are judged on its rows' numbers, one per driver it ran on.
    const pools = r.warm_pool ?? [];
    assert.deepEqual(
      ratios('cold start p50 from pool').map((t: any) => [t.driver, t.value]),
      pools.map((p: any) => [p.driver, p.cold_from_pool.p50]),
    );
    const verdicts = stdout.split('\n').filter((line) => /^(PASS|MISS) /.test(line));
    assert.equal(verdicts.length, r.targets.length, stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Every section has a row with real numbers for each mode of each (setup, driver) that ran. */
function assertSections(r: any, ran: Array<{ setup: string; driver: string }>): void {
  for (const [section, paths] of SECTIONS) {
    for (const { setup, driver } of ran) {
      for (const mode of MODES) {
        const row = r[section].find((x: any) => x.setup === setup && x.driver === driver && x.mode === mode);
        assert.ok(row, `${section} has no row for ${setup} ${driver}/${mode}`);
        assertNumbers(row, paths, `${section} ${setup} ${driver}/${mode}`);
      }
    }
  }
  // The real apps: a fresh function each, for every set-up that ran.
  for (const { setup, driver } of ran) {
    for (const app of ['express', 'fastify']) {
      const row = r.app_cold_start.find((x: any) => x.setup === setup && x.driver === driver && x.app === app);
      assert.ok(row, `app_cold_start has no row for ${setup} ${driver}/${app}`);
      assertNumbers(row, ['aether.p50', 'instance_start.p50', 'node.p50', 'prepare.p50'], `app_cold_start ${setup} ${driver}/${app}`);
    }
  }
  for (const row of r.warm_latency) assert.ok(Number.isFinite(row.overhead_p50_ms), 'overhead is a number (may be negative)');
  for (const row of r.throughput)
    assert.ok(row.aether_rps > 0 && row.direct_rps > 0 && row.nginx_rps > 0 && row.aether_instances >= 1, JSON.stringify(row));
  // One burst from zero per set-up: 200 requests, each one answered or counted as failed.
  for (const { setup, driver } of ran) {
    const burst = r.burst.find((x: any) => x.setup === setup && x.driver === driver);
    assert.ok(burst, `no burst for ${setup} ${driver}`);
    assert.equal(burst.requests, 200);
    assert.equal(burst.latency.n + burst.failures, 200, JSON.stringify(burst));
    assertNumbers(burst, ['latency.p50', 'latency.p99'], `burst ${setup} ${driver}`);
  }
}

const MICROVM_PHASES = ['vmm', 'kernel', 'init', 'agent', 'ready', 'first_byte', 'cold_start'];

test('bench --quick --microvm measures cold start, warm latency and throughput per driver, a microVM boot by phase, and checks the targets', {
  timeout: 420_000,
}, async () => {
  await benchRun(['--microvm'], (r, stdout) => {
    assertNumbers(r.machine, ['cpus', 'load_average_start.0', 'load_average_end.0'], 'machine');
    assert.match(stdout, new RegExp(`${r.machine.cpus} cpus.*load average at start`));
    const ran = Object.keys(r.drivers).filter((d) => r.drivers[d].ran);
    assert.ok(ran.length > 0, `no driver ran: ${JSON.stringify(r.drivers)}`);
    for (const [driver, info] of Object.entries<any>(r.drivers)) {
      if (!info.ran) assert.ok(info.reason, `${driver} was skipped without a reason`);
    }
    assertSections(
      r,
      ran.map((driver) => ({ setup: 'single', driver })),
    );
    assert.equal(r.cluster, undefined, 'no cluster without --cluster');
    // The warm pool on every driver that ran: cold starts from it, its idle cost, warm latency while it refills.
    assert.deepEqual(
      r.warm_pool.map((p: any) => p.driver),
      ran,
    );
    for (const p of r.warm_pool) {
      assertNumbers(
        p,
        ['cold_from_pool.p50', 'instance_start.p50', 'node.p50', 'ratio_p50', 'idle_memory_mb', 'idle_cpu_percent'],
        `warm_pool ${p.driver}`,
      );
      assertNumbers(p, ['warm_idle_pool.p99', 'warm_during_refill.p99', 'refill_pending.at_start'], `warm_pool ${p.driver}`);
      assert.equal(p.cold_from_pool.n, 3, '--quick takes 3 cold starts from the pool');
    }
    assert.match(stdout, /Warm pool: cold start of a function never run/);

    // The microVM section: measured, or skipped with the reason (no QEMU on this host).
    assert.ok(r.microvm.ran || r.microvm.reason, JSON.stringify(r.microvm));
    if (r.microvm.ran) {
      const vm = r.microvm.cold_start;
      assert.match(vm.accel, /^(tcg|kvm)$/);
      assertNumbers(
        vm,
        MICROVM_PHASES.flatMap((p) => [`${p}.n`, `${p}.p50`]),
        'microvm',
      );
      for (const p of MICROVM_PHASES) assert.equal(vm[p].n, 1, `--quick boots one microVM (${p})`);
      // The phases are the driver's split of the time to ready, and ready comes before the first byte.
      const phases = vm.vmm.p50 + vm.kernel.p50 + vm.init.p50 + vm.agent.p50;
      assert.ok(Math.abs(phases - vm.ready.p50) <= 2, `phases ${phases} ms vs ready ${vm.ready.p50} ms`);
      assert.ok(vm.cold_start.p50 >= vm.ready.p50 + vm.first_byte.p50 - 2, JSON.stringify(vm)); // two clocks, ms apart
      assert.match(stdout, /MicroVM cold start: qemu driver under (TCG|KVM)/);
    }
  });
});

test('bench --quick --cluster measures a gateway + worker cluster next to a single node and compares them', {
  timeout: 240_000,
}, async () => {
  await benchRun(['--cluster'], (r, stdout) => {
    assert.deepEqual(r.drivers, { bwrap: { ran: true } });
    assert.equal(r.microvm, undefined, 'no microVM in a --quick run without --microvm');
    assert.deepEqual(r.cluster, { ran: true });
    assertSections(r, [
      { setup: 'single', driver: 'bwrap' },
      { setup: 'cluster', driver: 'bwrap' },
    ]);

    const metrics = ['cold start p50', 'cold start p95', 'warm overhead p50', 'warm overhead p99', 'throughput'];
    assert.equal(r.cluster_vs_single.length, metrics.length * MODES.length);
    for (const metric of metrics) {
      for (const mode of MODES) {
        const c = r.cluster_vs_single.find((x: any) => x.metric === metric && x.mode === mode);
        assert.ok(c, `no ${metric} comparison for ${mode}`);
        assert.ok(Number.isFinite(c.single) && Number.isFinite(c.cluster), JSON.stringify(c));
        assert.equal(c.ratio, c.single > 0 ? Math.round((c.cluster / c.single) * 100) / 100 : null, JSON.stringify(c));
      }
    }
    const cold = (setup: string) => r.cold_start.find((x: any) => x.setup === setup && x.mode === 'handler').aether.p50;
    assert.equal(r.cluster_vs_single.find((x: any) => x.metric === 'cold start p50' && x.mode === 'handler').cluster, cold('cluster'));
    assert.match(stdout, /Cluster \(1 gateway \+ 1 worker/);
  });
});

test('bench --quick --logs measures warm latency under a log flood against idle, and accounts for every flood line', {
  timeout: 120_000,
}, async () => {
  await benchRun(['--logs'], (r, stdout) => {
    assert.deepEqual(r.drivers, { bwrap: { ran: true } });
    assert.deepEqual([r.cold_start, r.warm_latency, r.throughput], [[], [], []], 'only the flood scenario runs');
    assert.equal(r.log_flood.length, 1);
    const row = r.log_flood[0];
    assertNumbers(row, ['idle.p50', 'idle.p99', 'spin.p50', 'flood.p50', 'flood.p99', 'ratio_p50', 'ratio_spin_p50'], 'log_flood');
    assert.equal(row.ratio_p50, Math.round((row.flood.p50 / row.idle.p50) * 100) / 100);
    assert.ok(row.lines_printed > 10_000, `printed ${row.lines_printed}`);
    assert.equal(row.lines_kept + row.lines_dropped, row.lines_printed, 'every printed line is kept or counted as dropped');
    assert.ok(row.lines_kept <= (row.flood_seconds + 2) * 1000, `kept ${row.lines_kept} at 1000 lines/s`);
    const flood = r.targets.filter((t: any) => t.target === 'warm p50 under a log flood vs idle');
    assert.deepEqual(
      flood.map((t: any) => [t.value, t.limit]),
      [[row.ratio_p50, 1.2]],
    );
    assert.match(stdout, /Warm latency \(ms\) while another function prints as fast as it can/);
  });
});
