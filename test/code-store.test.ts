import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { zipSync } from 'fflate';
import { create as tarCreate } from 'tar';
import { AetherError } from '../src/core/errors.js';
import { DEFAULT_ARCHIVE_LIMITS } from '../src/adapters/code/archive.js';
import { LocalCodeStore } from '../src/adapters/code/local-code-store.js';
import { skipUnless } from './helpers/skip.ts';

let work: string;
let seq = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'aether-code-store-'));
  await chmod(work, 0o755); // sandbox uids must be able to reach the store below it
});
after(() => rm(work, { recursive: true, force: true }));

const newRoot = () => join(work, `root-${++seq}`);
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const zipOf = (files: Record<string, string>) =>
  Buffer.from(zipSync(Object.fromEntries(Object.entries(files).map(([name, body]) => [name, Buffer.from(body)]))));
const mode = async (path: string) => (await stat(path)).mode & 0o7777;

const app = zipOf({ 'index.js': 'export default () => 1;\n', 'node_modules/dep/index.js': 'module.exports = 2;\n' });

async function assertAetherError(promise: Promise<unknown>, status: number, code: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof AetherError, String(err));
    assert.equal(err.status, status);
    assert.equal(err.code, code);
    return true;
  });
}

test('put stores the tree and the archive by sha256, with modes that let other uids read it', async () => {
  const root = newRoot();
  const store = new LocalCodeStore(root);
  const stored = await store.put(Readable.from([app]), 'zip');
  assert.deepEqual(stored, { hash: sha256(app), size: app.length });

  const dir = await store.dir(stored.hash);
  assert.equal(dir, join(root, stored.hash));
  assert.equal(await readFile(join(dir, 'node_modules/dep/index.js'), 'utf8'), 'module.exports = 2;\n');
  assert.deepEqual(await readFile(join(root, `${stored.hash}.zip`)), app);
  assert.deepEqual((await readdir(root)).sort(), [stored.hash, `${stored.hash}.zip`]);
  assert.equal(await mode(root), 0o711);
  assert.equal(await mode(dir), 0o755);
  assert.equal(await mode(join(dir, 'index.js')), 0o644);
});

test('another uid reads code by hash but cannot list the store', {
  skip: skipUnless(process.getuid?.() === 0, 'switching uids needs root'),
}, async () => {
  const root = newRoot();
  const store = new LocalCodeStore(root);
  const dir = await store.dir((await store.put(Readable.from([app]), 'zip')).hash);
  const asNobody = (file: string, ...args: string[]) => promisify(execFile)(file, args, { uid: 65534, gid: 65534 });
  assert.equal((await asNobody('cat', join(dir, 'node_modules/dep/index.js'))).stdout, 'module.exports = 2;\n');
  await assert.rejects(asNobody('ls', root), 'other uids may reach code by hash but not list the store');
});

test('a tar.gz streamed straight from node-tar is stored with its extension', async () => {
  const src = join(work, `src-${++seq}`);
  await mkdir(join(src, 'lib'), { recursive: true });
  await writeFile(join(src, 'lib', 'main.js'), 'main');
  const pack = () => tarCreate({ gzip: true, cwd: src, portable: true }, ['.']);
  const dir = newRoot();
  const store = new LocalCodeStore(dir);
  const { hash } = await store.put(Readable.from(pack()), 'tar.gz');
  assert.equal(hash, sha256(await pack().concat()));
  assert.equal(await readFile(join(await store.dir(hash), 'lib', 'main.js'), 'utf8'), 'main');
  assert.deepEqual(await readFile(join(dir, `${hash}.tar.gz`)), await pack().concat());
});

test('an archive already stored is not extracted again', async () => {
  const dir = newRoot();
  const first = await new LocalCodeStore(dir).put(Readable.from([app]), 'zip');
  // A store that could not extract anything at all still accepts the same archive.
  const strict = new LocalCodeStore(dir, { ...DEFAULT_ARCHIVE_LIMITS, maxEntries: 0, maxUncompressedBytes: 0 });
  assert.deepEqual(await strict.put(Readable.from([app]), 'zip'), first);
  await assertAetherError(strict.put(Readable.from([zipOf({ 'other.js': 'x' })]), 'zip'), 413, 'too_large');
  assert.equal(await readFile(join(await strict.dir(first.hash), 'index.js'), 'utf8'), 'export default () => 1;\n');
});

test('concurrent uploads of the same archive both succeed and leave one copy', async () => {
  const dir = newRoot();
  const store = new LocalCodeStore(dir);
  const [a, b] = await Promise.all([store.put(Readable.from([app]), 'zip'), store.put(Readable.from([app]), 'zip')]);
  assert.deepEqual(a, b);
  assert.deepEqual((await readdir(dir)).sort(), [a.hash, `${a.hash}.zip`]);
});

test('a failed upload leaves no trace and previously stored code intact', async (t) => {
  const dir = newRoot();
  const store = new LocalCodeStore(dir, { ...DEFAULT_ARCHIVE_LIMITS, maxCompressedBytes: 256 * 1024 });
  const good = await store.put(Readable.from([app]), 'zip');
  const before = (await readdir(dir)).sort();

  const unchanged = async () => {
    assert.deepEqual((await readdir(dir)).sort(), before);
    assert.equal(await readFile(join(dir, good.hash, 'index.js'), 'utf8'), 'export default () => 1;\n');
  };
  await t.test('unsafe entry after valid ones', async () => {
    const evil = zipOf({ 'a.js': 'a', 'b/c.js': 'c', '../escaped.js': 'x' });
    await assertAetherError(store.put(Readable.from([evil]), 'zip'), 400, 'unsafe_path');
    await unchanged();
  });
  await t.test('garbage', async () => {
    await assertAetherError(store.put(Readable.from([randomBytes(5000)]), 'tar.gz'), 400, 'invalid_archive');
    await unchanged();
  });
  await t.test('the upload stream fails half way', async () => {
    const failing = Readable.from(
      (async function* () {
        yield app.subarray(0, 10);
        throw new Error('client went away');
      })(),
    );
    await assert.rejects(store.put(failing, 'zip'), /client went away/);
    await unchanged();
  });
  await t.test('bigger than the compressed limit: 413, and reading stops early', async () => {
    let pulled = 0;
    const huge = new Readable({
      read() {
        pulled += 16 * 1024;
        this.push(pulled > 64 * 1024 * 1024 ? null : randomBytes(16 * 1024));
      },
    });
    await assertAetherError(store.put(huge, 'zip'), 413, 'too_large');
    assert.ok(pulled < 1024 * 1024, `read ${pulled} bytes of an upload capped at 256 KB`);
    await unchanged();
  });
});

test('leftovers of a crash are swept when a store opens its root', async () => {
  const dir = newRoot();
  const { hash } = await new LocalCodeStore(dir).put(Readable.from([app]), 'zip');
  await writeFile(join(dir, '.tmp-upload'), 'partial upload');
  await mkdir(join(dir, '.tmp-tree', 'node_modules'), { recursive: true });
  await writeFile(join(dir, '.tmp-tree', 'node_modules', 'x.js'), 'half extracted');

  const reopened = new LocalCodeStore(dir);
  assert.deepEqual((await readdir(dir)).sort(), [hash, `${hash}.zip`]);
  assert.equal(await readFile(join(await reopened.dir(hash), 'index.js'), 'utf8'), 'export default () => 1;\n');
});

test('remove deletes tree and archive; unknown or malformed hashes are 404', async () => {
  const dir = newRoot();
  const store = new LocalCodeStore(dir);
  const { hash } = await store.put(Readable.from([app]), 'zip');
  await store.remove(hash);
  assert.deepEqual(await readdir(dir), []);
  await assertAetherError(store.dir(hash), 404, 'not_found');
  await store.remove(hash); // idempotent

  await mkdir(join(work, 'victim'));
  await assertAetherError(store.remove('../victim'), 404, 'not_found');
  await assertAetherError(store.dir('../victim'), 404, 'not_found');
  await stat(join(work, 'victim'));
});
