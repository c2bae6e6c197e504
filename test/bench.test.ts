/** Smoke test of `npm run bench`: a --quick run must produce every section with real numbers. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

const ROOT = path.resolve(import.meta.dirname, '..');
const MODES = ['handler', 'server'];

function runBench(jsonFile: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick', '--json', jsonFile], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
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

test('bench --quick measures cold start, warm latency and throughput per driver and checks the targets', { timeout: 240_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-bench-test-'));
  try {
    const jsonFile = path.join(dir, 'results.json');
    const { code, stdout, stderr } = await runBench(jsonFile);
    assert.equal(code, 0, `bench failed:\n${stdout}\n${stderr}`);
    const r = JSON.parse(fs.readFileSync(jsonFile, 'utf8'));

    assert.equal(r.quick, true);
    assertNumbers(r.machine, ['cpus', 'load_average_start.0', 'load_average_end.0'], 'machine');
    assert.match(stdout, new RegExp(`${r.machine.cpus} cpus.*load average at start`));

    const ran = Object.keys(r.drivers).filter((d) => r.drivers[d].ran);
    assert.ok(ran.length > 0, `no driver ran: ${JSON.stringify(r.drivers)}`);
    for (const [driver, info] of Object.entries<any>(r.drivers)) {
      if (!info.ran) assert.ok(info.reason, `${driver} was skipped without a reason`);
    }

    const sections: Array<[string, string[]]> = [
      ['cold_start', ['aether.p50', 'aether.p95', 'instance_start.p50', 'node.p50', 'node.p95', 'ratio_p50']],
      ['warm_latency', ['aether.p50', 'aether.p99', 'direct.p50', 'direct.p99', 'ratio_p50']],
      ['throughput', ['aether_rps', 'direct_rps', 'ratio', 'aether_instances']],
    ];
    for (const [section, paths] of sections) {
      for (const driver of ran) {
        for (const mode of MODES) {
          const row = r[section].find((x: any) => x.driver === driver && x.mode === mode);
          assert.ok(row, `${section} has no row for ${driver}/${mode}`);
          assertNumbers(row, paths, `${section} ${driver}/${mode}`);
        }
      }
    }
    for (const row of r.warm_latency) assert.ok(Number.isFinite(row.overhead_p50_ms), 'overhead is a number (may be negative)');
    for (const row of r.throughput) assert.ok(row.aether_rps > 0 && row.direct_rps > 0 && row.aether_instances >= 1, JSON.stringify(row));

    // One target per measured row, each judged on its number and printed as PASS or MISS.
    assert.equal(r.targets.length, r.cold_start.length + r.warm_latency.length + r.throughput.length);
    for (const t of r.targets) {
      assert.equal(t.pass, t.must === '<=' ? t.value <= t.limit : t.value >= t.limit, JSON.stringify(t));
    }
    const verdicts = stdout.split('\n').filter((line) => /^(PASS|MISS) /.test(line));
    assert.equal(verdicts.length, r.targets.length, stdout);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
