/**
 * Upload progress on stderr: a bar on a terminal, a plain line per quarter otherwise (logs and CI
 * stay readable; no carriage returns in files).
 */
import { PassThrough } from 'node:stream';
import cliProgress from 'cli-progress';
import { bytes, note } from './output.js';

/** A stream that passes bytes through and reports how many have gone by. */
export function counting(total: number, label: string): PassThrough {
  const report = reporter(total, label);
  let done = 0;
  const through = new PassThrough();
  through.on('data', (chunk: Buffer) => report((done += chunk.length)));
  return through;
}

function reporter(total: number, label: string): (done: number) => void {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar({
      format: `${label} [{bar}] {percentage}% {done} of {size}`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
    });
    bar.start(total, 0, { done: bytes(0), size: bytes(total) });
    return (done) => {
      bar.update(done, { done: bytes(done) });
      if (done >= total) bar.stop();
    };
  }
  let quarter = 0;
  note(`${label} ${bytes(total)}`);
  return (done) => {
    const q = Math.floor((done / Math.max(total, 1)) * 4);
    if (q <= quarter) return;
    quarter = q;
    note(`${label} ${q * 25}% (${bytes(done)} of ${bytes(total)})`);
  };
}
