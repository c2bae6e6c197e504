/**
 * Scraping Aether's /metrics directly: the text checked by Prometheus' own `promtool check metrics`
 * (parse and lint), then parsed by parse-prometheus-text-format. That parser loses the labels of a
 * histogram's series, so histogram counts are read from its `_count` samples parsed as untyped ones;
 * exact counts after a load are asserted through a real Prometheus (prometheus.ts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import parsePrometheusTextFormat, { type Family, type Sample } from 'parse-prometheus-text-format';
import { TOKEN } from './aether.ts';

export interface Scrape {
  text: string;
  families: Family[];
  /** The samples of a family whose labels include `labels`. */
  samples(name: string, labels?: Record<string, string>): Sample[];
  /** The sum of a counter's or gauge's matching series (0 when none exists). */
  value(name: string, labels?: Record<string, string>): number;
  /** The number of observations in a histogram's matching series (0 when none exists). */
  histogramCount(name: string, labels?: Record<string, string>): number;
}

export async function scrape(url: string, opts: { token?: string | null } = {}): Promise<Scrape> {
  const token = opts.token === undefined ? TOKEN : opts.token;
  const res = await fetch(`${url}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  promtoolCheck(text);
  const families = parsePrometheusTextFormat(text);
  const untyped = parsePrometheusTextFormat(text.replace(/^# TYPE \S+ histogram$/gm, ''));
  const select = (from: Family[], name: string, labels: Record<string, string> = {}) =>
    from
      .filter((f) => f.name === name)
      .flatMap((f) => f.metrics)
      .filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  const total = (xs: Sample[]) => xs.reduce((n, s) => n + Number(s.value ?? 0), 0);
  return {
    text,
    families,
    samples: (name, labels) => select(families, name, labels),
    value: (name, labels) => total(select(families, name, labels)),
    histogramCount: (name, labels) => total(select(untyped, `${name}_count`, labels)),
  };
}

/** Prometheus' own check: exit 0 means the exposition parses and passes its lint. */
export function promtoolCheck(text: string): void {
  const run = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (run.error) throw new Error(`promtool is missing (apt-get install prometheus; scripts/setup.mjs installs it): ${run.error.message}`);
  assert.equal(run.status, 0, `promtool check metrics failed:\n${run.stdout}${run.stderr}`);
}
