/** Bodies stream through Aether both ways: 100 MB in and out without Aether holding them in memory. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { startAether, type Aether } from './helpers/aether.ts';

const ECHO_SIZE = `
const { createHash } = require('crypto');
require('http').createServer((req, res) => {
  if (req.url.startsWith('/download')) {
    const total = Number(new URL(req.url, 'http://x').searchParams.get('mb')) * 1024 * 1024;
    const chunk = Buffer.alloc(64 * 1024, 97);
    let sent = 0;
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const pump = () => { while (sent < total) { sent += chunk.length; if (!res.write(chunk)) return res.once('drain', pump); } res.end(); };
    return pump();
  }
  const hash = createHash('sha256');
  let bytes = 0;
  req.on('data', (c) => { bytes += c.length; hash.update(c); });
  req.on('end', () => res.end(JSON.stringify({ bytes, sha256: hash.digest('hex') })));
}).listen(process.env.PORT);`;

const MB = 1024 * 1024;
const hwmKb = (pid: number) => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

let a: Aether;
before(async () => {
  a = await startAether({ isolation: 'bwrap' });
  await a.deploy({ name: 'big', memory_mb: 256, timeout_ms: 120_000 }, { 'index.js': ECHO_SIZE });
  assert.equal((await a.invoke('big', '/download?mb=1')).status, 200); // warm, so the baseline includes a live instance
});
after(() => a.stop());

test('a 100 MB request body streams through', async () => {
  const base = hwmKb(a.proc.pid!);
  const chunk = Buffer.alloc(MB, 7);
  let sent = 0;
  const body = new Readable({
    read() {
      this.push(sent < 100 ? chunk : null);
      sent++;
    },
  });
  const { createHash } = await import('node:crypto');
  const expected = createHash('sha256');
  for (let i = 0; i < 100; i++) expected.update(chunk);
  const res = await a.invoke('big', '/upload', {
    method: 'POST',
    body: Readable.toWeb(body) as ReadableStream,
    duplex: 'half',
    headers: { 'content-type': 'application/octet-stream' },
  } as RequestInit);
  assert.equal(res.status, 200);
  const out = await res.json();
  assert.equal(out.bytes, 100 * MB);
  assert.equal(out.sha256, expected.digest('hex'));
  const grewMb = (hwmKb(a.proc.pid!) - base) / 1024;
  assert.ok(grewMb < 50, `Aether's peak memory grew by ${grewMb.toFixed(0)} MB for a 100 MB body`);
});

test('a 100 MB response body streams back', async () => {
  const base = hwmKb(a.proc.pid!);
  const res = await a.invoke('big', '/download?mb=100');
  assert.equal(res.status, 200);
  let bytes = 0;
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) bytes += c.length;
  assert.equal(bytes, 100 * MB);
  const grewMb = (hwmKb(a.proc.pid!) - base) / 1024;
  assert.ok(grewMb < 50, `Aether's peak memory grew by ${grewMb.toFixed(0)} MB for a 100 MB response`);
});
