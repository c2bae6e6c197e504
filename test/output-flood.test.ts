/**
 * A tenant flooding its output (the security review's finding: 200 MB in ~2 s grew the server's
 * memory by ~260 MB, which stayed, and its log by 232 MB). A real server with a real sandbox: the
 * function writes 100 MB as fast as its stdout takes it. Every line must be accounted for (kept in
 * the function's log, or counted in a `… N lines dropped` marker), the server's own log must not
 * carry the flood, and the server's memory (its RSS, read from /proc) must stay near its level.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { sandboxDrivers, startAether, type Aether } from './helpers/aether.ts';
import { until } from './helpers/wait.ts';

const LINE = 'x'.repeat(99);
const LINES_PER_MB = 10_486; // 100-byte lines
const FLOOD_MB = 100;
/** How far the server's RSS may rise over its level before the flood, at any moment and after it. */
const PEAK_GROWTH_MB = 64;
const FINAL_GROWTH_MB = 48;

/** Writes `mb` MB of 100-byte lines to stdout, as fast as the pipe takes them (it waits for 'drain'). */
const FLOOD = `
const { once } = require('node:events');
const chunk = (${JSON.stringify(LINE)} + '\\n').repeat(${LINES_PER_MB});
exports.handler = async (event) => {
  const mb = Number(event.query.mb);
  for (let i = 0; i < mb; i++) if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
  return 'printed ' + mb + ' MB';
};`;

const rssMb = (pid: number) => Number(/^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;

let a: Aether;
before(async () => {
  a = await startAether({ isolation: sandboxDrivers()[0]! });
});
after(() => a.stop());

interface LogLine {
  stream: string;
  event: string | null;
  message: string;
}

/** Every line of the function's log (paged back from the newest). */
async function functionLog(name: string): Promise<LogLine[]> {
  const all: LogLine[] = [];
  for (let before = ''; ; ) {
    const page = await a.api('GET', `/api/functions/${name}/logs?limit=1000${before ? `&before=${before}` : ''}`);
    assert.equal(page.status, 200, JSON.stringify(page.body));
    all.unshift(...page.body.lines);
    if (page.body.lines.length < 1000 || !page.body.before) return all;
    before = encodeURIComponent(page.body.before);
  }
}

/** Lines of the flood the log accounts for: kept ones, and those the markers count as dropped. */
function accounted(log: LogLine[]): { kept: number; dropped: number } {
  const kept = log.filter((l) => l.stream === 'stdout' && l.message === LINE).length;
  const dropped = log
    .filter((l) => l.event === 'dropped')
    .reduce((n, l) => n + Number(/^… ([\d,]+) lines dropped/.exec(l.message)?.[1]?.replaceAll(',', '') ?? Number.NaN), 0);
  return { kept, dropped };
}

test(`a function printing ${FLOOD_MB} MB: every line kept or counted, the server's memory stays near its level`, async () => {
  await a.deploy({ name: 'flood', memory_mb: 256, timeout_ms: 60_000 }, { 'handler.js': FLOOD });
  // A first, small flood warms the paths the big one takes (instance, log store, rate limit).
  const warm = await a.invoke('flood', '/?mb=1');
  assert.equal(await warm.text(), 'printed 1 MB');
  await until(
    async () => (({ kept, dropped }) => kept + dropped === LINES_PER_MB)(accounted(await functionLog('flood'))),
    10_000,
    'the warm-up lines',
  );
  const serverLogLines = a.logs.length;
  const pid = a.proc.pid!;
  const level = rssMb(pid);
  let peak = level;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMb(pid))), 20);
  try {
    const res = await a.invoke('flood', `/?mb=${FLOOD_MB}`);
    assert.equal(await res.text(), `printed ${FLOOD_MB} MB`);
    // The host may still be reading the last of it; the last marker comes at the end of its second.
    const total = (FLOOD_MB + 1) * LINES_PER_MB;
    await until(
      async () => (({ kept, dropped }) => kept + dropped === total)(accounted(await functionLog('flood'))),
      20_000,
      'every line kept or counted as dropped',
    );
  } finally {
    clearInterval(sampler);
  }
  const final = rssMb(pid);
  const { kept, dropped } = accounted(await functionLog('flood'));
  console.log(
    `# server RSS ${level.toFixed(0)} MB before, peak ${peak.toFixed(0)} MB, ${final.toFixed(0)} MB after; ${kept} lines kept, ${dropped} dropped`,
  );
  assert.ok(dropped > kept, 'most of a flood is dropped (and counted), not stored');
  assert.ok(peak - level < PEAK_GROWTH_MB, `the server's RSS rose by ${(peak - level).toFixed(0)} MB during the flood`);
  assert.ok(final - level < FINAL_GROWTH_MB, `the server's RSS stayed ${(final - level).toFixed(0)} MB above its level`);
  assert.ok(a.logs.length - serverLogLines < 100, `the server's own log grew by ${a.logs.length - serverLogLines} lines`);
});
