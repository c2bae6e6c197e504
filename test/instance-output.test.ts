/**
 * The instance lifecycle's line reader (adapters/isolation/instance/output.ts), which every driver's
 * output goes through: lines, long lines in bounded pieces, and nothing held beyond one piece
 * whatever a stream carries. Fed from a real stream (a PassThrough) in any chunking.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { MAX_LINE_BYTES, readLines } from '../src/adapters/isolation/instance/output.js';

/** Feeds `chunks` through a stream and returns the lines readLines made of them. */
async function linesOf(chunks: Array<string | Buffer>, maxBytes?: number): Promise<Buffer[]> {
  const stream = new PassThrough();
  const lines: Buffer[] = [];
  readLines(stream, (line) => lines.push(Buffer.from(line)), maxBytes);
  const ended = new Promise((resolve) => stream.once('end', resolve));
  for (const chunk of chunks) stream.write(chunk);
  stream.end();
  await ended;
  return lines;
}

test('lines split across chunks, CRLF and a last line without a break', async () => {
  const lines = await linesOf(['one\ntw', 'o\r\nthr', 'ee\n\nfour']);
  assert.deepEqual(lines.map(String), ['one', 'two', 'three', '', 'four']);
});

test('a long line arrives in pieces of at most maxBytes, never splitting a UTF-8 character', async () => {
  const text = `${'é'.repeat(10)}x${'€'.repeat(10)}`; // 2-byte and 3-byte characters around an odd offset
  const lines = await linesOf([text.slice(0, 7), text.slice(7), '\n'], 8);
  assert.ok(
    lines.every((l) => l.length <= 8),
    `piece over 8 bytes: ${lines.map((l) => l.length)}`,
  );
  assert.equal(lines.map((l) => l.toString()).join(''), text, 'the pieces decode to the text, character for character');
  assert.ok(!lines.some((l) => l.toString().includes('\ufffd')), 'no piece ends or starts inside a character');
});

test('50 MB without a line break: pieces of MAX_LINE_BYTES, nothing larger held', async () => {
  const chunk = Buffer.alloc(64 * 1024, 'z');
  const stream = new PassThrough();
  let pieces = 0;
  let largest = 0;
  readLines(stream, (line) => {
    pieces++;
    largest = Math.max(largest, line.length);
  });
  const ended = new Promise((resolve) => stream.once('end', resolve));
  for (let i = 0; i < 800; i++) stream.write(chunk);
  stream.end();
  await ended;
  assert.equal(largest, MAX_LINE_BYTES);
  assert.equal(pieces, (800 * chunk.length) / MAX_LINE_BYTES);
});
