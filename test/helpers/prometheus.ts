/**
 * A real Prometheus server (Debian's `prometheus`) scraping Aether every second with the bearer
 * token, queried over its HTTP API: the scraper Aether's /metrics is for, with Prometheus' own parser.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../src/adapters/free-port.ts';
import { TOKEN } from './aether.ts';
import { until } from './wait.ts';

export interface Prometheus {
  /** The value of an instant PromQL query that yields one number (0 when it yields nothing). */
  query(expr: string): Promise<number>;
  /** Waits until every target has been scraped (successfully) after `since` (epoch ms). */
  scrapedSince(since: number): Promise<void>;
  stop(): Promise<void>;
}

/** `targets`: job name -> base URLs of Aether processes. */
export async function startPrometheus(targets: Record<string, string[]>): Promise<Prometheus> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-prometheus-'));
  const port = await freePort();
  const jobs = Object.entries(targets).map(([job, urls]) => ({
    job_name: job,
    authorization: { credentials: TOKEN },
    static_configs: [{ targets: urls.map((u) => new URL(u).host) }],
  }));
  // JSON is YAML: no YAML library needed for the config.
  fs.writeFileSync(
    path.join(dir, 'prometheus.yml'),
    JSON.stringify({ global: { scrape_interval: '1s', scrape_timeout: '1s' }, scrape_configs: jobs }),
  );
  const proc = spawn(
    'prometheus',
    [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const api = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const query = async (expr: string) => {
    const res = await fetch(`${api}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; error?: string; data: { result: { value: [number, string] }[] } };
    assert.equal(body.status, 'success', `${expr}: ${body.error}`);
    assert.ok(body.data.result.length <= 1, `${expr} yields ${body.data.result.length} series; aggregate it`);
    return Number(body.data.result[0]?.value[1] ?? 0);
  };
  try {
    await until(
      async () => (await fetch(`${api}/-/ready`).catch(() => undefined))?.status === 200,
      30_000,
      `prometheus to start: ${stderr}`,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  const expected = Object.values(targets).flat().length;
  return {
    query,
    scrapedSince: (since) =>
      until(
        async () => (await query(`count(up == 1 and timestamp(up) > ${since / 1000})`)) === expected,
        20_000,
        `every target scraped after the load (${stderr})`,
        250,
      ),
    stop,
  };
}
