/**
 * How the client commands print: aligned tables and key/value blocks for people, JSON for scripts
 * (`--json`: exactly what the API returned, one document on stdout). Notes and progress go to stderr,
 * so stdout stays clean for pipes.
 */
import Table from 'cli-table3';

/** Plain aligned columns, no borders: easy to read and to `grep`/`awk`. */
const BORDERLESS = {
  chars: {
    top: '',
    'top-mid': '',
    'top-left': '',
    'top-right': '',
    bottom: '',
    'bottom-mid': '',
    'bottom-left': '',
    'bottom-right': '',
    left: '',
    'left-mid': '',
    mid: '',
    'mid-mid': '',
    right: '',
    'right-mid': '',
    middle: '',
  },
  style: { 'padding-left': 0, 'padding-right': 3, head: [], border: [] },
};

export type Cell = string | number | boolean | null | undefined;

export function table(head: string[], rows: Cell[][], empty: string): string {
  if (rows.length === 0) return `${empty}\n`;
  const t = new Table({ ...BORDERLESS, head });
  t.push(...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c)))));
  // Trailing padding of the last column is noise in a terminal and in diffs.
  return `${t
    .toString()
    .split('\n')
    .map((l) => l.trimEnd())
    .join('\n')}\n`;
}

/** `key   value` lines, keys aligned. */
export function keyValues(pairs: [string, Cell][]): string {
  const width = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width + 2)} ${v === null || v === undefined ? '-' : v}\n`).join('');
}

export function out(text: string): void {
  process.stdout.write(text);
}
export function note(text: string): void {
  process.stderr.write(`${text}\n`);
}
export function printJson(value: unknown): void {
  out(`${JSON.stringify(value, null, 2)}\n`);
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  if (n < 1024) return `${n} B`;
  const units = ['kB', 'MB', 'GB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '-';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago": times in tables, relative to now. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (Number.isNaN(s)) return iso;
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}
