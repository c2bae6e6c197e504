/**
 * The entry point check at upload, on real archives through the real code store: packaging mistakes
 * are a 400 naming what the archive contains and how to fix it, nothing is stored, and what the agent
 * would load passes (the check runs the agent's own resolution rules).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { LocalCodeStore } from '../src/adapters/code/local-code-store.js';
import { AetherError } from '../src/core/errors.js';
import { makeZip } from './helpers/aether.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-entry-'));
const store = new LocalCodeStore(root);
after(() => fs.rmSync(root, { recursive: true, force: true }));

const put = (files: Record<string, string>, entrypoint: string | null = null) =>
  store.put(Readable.from([Buffer.from(makeZip(files))]), 'zip', { check: { entrypoint } });

/** Rejects with 400 no_entry_point; returns the message. Nothing new is stored. */
async function rejected(files: Record<string, string>, entrypoint: string | null = null): Promise<string> {
  const before = fs.readdirSync(root).sort();
  let message = '';
  await assert.rejects(put(files, entrypoint), (err: unknown) => {
    assert.ok(err instanceof AetherError);
    assert.equal(err.status, 400);
    assert.equal(err.code, 'no_entry_point');
    message = err.message;
    return true;
  });
  assert.deepEqual(fs.readdirSync(root).sort(), before, 'a rejected upload stores nothing');
  return message;
}

test('code under a single top folder: says so, and how to zip it or where the entry is', async () => {
  const msg = await rejected({ 'app/handler.js': 'exports.handler = () => 1', 'app/lib/x.js': '', '__MACOSX/._app': '' });
  assert.match(msg, /no entry point: none of handler\.js, index\.js, index\.mjs, handler\.mjs or a package\.json "main" at its top level/);
  assert.match(msg, /the archive contains app\//);
  assert.match(msg, /the code sits in the folder app\//);
  assert.match(msg, /cd app\/ && zip -r \.\.\/code\.zip \./);
  assert.match(msg, /set the function's "entrypoint" to app\/handler\.js/);
  // The folder's own package.json main counts too.
  const main = await rejected({ 'svc/package.json': '{"main":"src/server.js"}', 'svc/src/server.js': '' });
  assert.match(main, /entrypoint" to svc\/src\/server\.js/);
});

test('no entry at all: lists what is there and the ways to fix it (and TypeScript sources)', async () => {
  const msg = await rejected({ 'other.js': '', 'README.md': '', 'src/util.js': '' });
  assert.match(msg, /the archive contains README\.md, other\.js, src\//);
  assert.match(msg, /Fix: add handler\.js, set "main" in package\.json, or set the function's "entrypoint"/);
  assert.match(
    await rejected({ 'handler.ts': 'export const handler = () => 1' }),
    /TypeScript is not compiled here: upload the built \.js/,
  );
  const many = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`f${String(i).padStart(2, '0')}.txt`, '']));
  assert.match(await rejected(many), /f09\.txt, … \(12 entries\)/);
});

test('package.json main that does not resolve, or leaves the code', async () => {
  assert.match(
    await rejected({ 'package.json': '{"main":"dist/index.js"}', 'src/index.ts': '' }),
    /entry module not found: package\.json main dist\/index\.js/,
  );
  assert.match(
    await rejected({ 'package.json': '{"main":"../../etc/passwd"}' }),
    /package\.json main \.\.\/\.\.\/etc\/passwd is outside the code directory/,
  );
});

test('a configured entrypoint the archive lacks', async () => {
  const msg = await rejected({ 'handler.js': '' }, 'src/main.js');
  assert.match(msg, /its entrypoint src\/main\.js does not resolve \(entry module not found: src\/main\.js\)/);
  assert.match(msg, /the archive contains handler\.js/);
  assert.match(msg, /upload code that has src\/main\.js, or change the function's "entrypoint"/);
  const nested = await rejected({ 'app/src/main.js': '' }, 'src/main.js');
  assert.match(nested, /the code sits in the folder app\//);
  assert.doesNotMatch(nested, /set the function's "entrypoint"/);
});

test('an empty archive', async () => {
  assert.match(await rejected({ '__MACOSX/x': '' }), /the archive is empty/);
});

test('what the agent would load passes, also when the same code is stored already', async () => {
  for (const [files, entrypoint] of [
    [{ 'handler.js': '' }, null],
    [{ 'index.mjs': '' }, null],
    [{ 'package.json': '{"main":"lib/app"}', 'lib/app.js': '' }, null],
    [{ 'package.json': '{"main":"lib"}', 'lib/index.js': '' }, null],
    [{ 'src/app.js': '' }, 'src/app'],
    [{ 'src/app/index.js': '' }, 'src/app'],
    [{ 'app/handler.js': '' }, 'app/handler.js'],
  ] as [Record<string, string>, string | null][]) {
    const stored = await put(files, entrypoint);
    assert.match(stored.hash, /^[0-9a-f]{64}$/, JSON.stringify(files));
  }
  // The same archive again, now checked against another entrypoint: the stored tree is checked.
  await rejected({ 'handler.js': '' }, 'missing.js');
  assert.ok(fs.existsSync(path.join(root, (await put({ 'handler.js': '' })).hash)), 'the earlier copy is still there');
});
