import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gunzipSync, gzipSync } from 'node:zlib';
import { zipSync, type ZipAttributes } from 'fflate';
import { create as tarCreate, Header, Pax, type HeaderData } from 'tar';
import yazl from 'yazl';
import { AetherError } from '../src/core/errors.js';
import type { ArchiveFormat } from '../src/core/ports.js';
import { DEFAULT_ARCHIVE_LIMITS, extractArchive, INFLATION_FLOOR_BYTES, type ArchiveLimits } from '../src/adapters/code/archive.js';

let work: string;
let seq = 0;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'aether-archive-'));
});
after(() => rm(work, { recursive: true, force: true }));

// ---- archive builders ------------------------------------------------------------------------

type Body = string | Buffer;

/** A zip built by fflate, which writes any entry name and attributes it is given. */
function zip(entries: [name: string, body: Body, attrs?: ZipAttributes & { level?: 0 | 9 }][]): Buffer {
  return Buffer.from(zipSync(Object.fromEntries(entries.map(([name, body, attrs = {}]) => [name, [Buffer.from(body), attrs]]))));
}
const unixAttrs = (mode: number): ZipAttributes => ({ os: 3, attrs: (mode << 16) >>> 0 });

/** A zip built by yazl, the way real tools write them (and yazl allows repeated names). */
async function yazlZip(add: (z: yazl.ZipFile) => void): Promise<Buffer> {
  const z = new yazl.ZipFile();
  add(z);
  z.end();
  const chunks: Buffer[] = [];
  for await (const chunk of z.outputStream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

type TarItem = HeaderData & { body?: Body; pax?: HeaderData };

/** A tar.gz assembled from node-tar headers, so any name, type or link can be written. */
function tarGz(items: TarItem[], trailer = Buffer.alloc(0)): Buffer {
  const blocks: Buffer[] = [];
  for (const { body = '', pax, ...data } of items) {
    const content = Buffer.from(body);
    if (pax) blocks.push(new Pax(pax).encode());
    const header = new Header({ type: 'File', mode: 0o644, mtime: new Date(0), uid: 0, gid: 0, ...data, size: content.length });
    header.encode();
    blocks.push(header.block!, content, Buffer.alloc((512 - (content.length % 512)) % 512));
  }
  return gzipSync(Buffer.concat([...blocks, Buffer.alloc(1024), trailer]));
}

/** Sample archives with one harmless entry first, so a rejection must also clean up. */
function evil(format: ArchiveFormat, name: string, tarData: HeaderData = {}, zipAttrs: ZipAttributes = {}): Buffer {
  return format === 'zip'
    ? zip([
        ['ok.js', 'ok'],
        [name, 'payload', zipAttrs],
      ])
    : tarGz([
        { path: 'ok.js', body: 'ok' },
        { path: name, body: tarData.type && tarData.type !== 'File' ? '' : 'payload', ...tarData },
      ]);
}

// ---- helpers -----------------------------------------------------------------------------------

async function store(bytes: Buffer): Promise<{ file: string; dest: string }> {
  const file = join(work, `archive-${++seq}`);
  await writeFile(file, bytes);
  return { file, dest: join(work, `out-${seq}`) };
}

async function extract(bytes: Buffer, format: ArchiveFormat, limits?: ArchiveLimits) {
  const { file, dest } = await store(bytes);
  return { dest, result: await extractArchive(file, format, dest, limits) };
}

async function rejects(
  bytes: Buffer,
  format: ArchiveFormat,
  expected: { status?: number; code: string; message?: RegExp },
  limits?: ArchiveLimits,
): Promise<void> {
  const { file, dest } = await store(bytes);
  await assert.rejects(extractArchive(file, format, dest, limits), (err: unknown) => {
    assert.ok(err instanceof AetherError, `expected an AetherError, got ${String(err)}`);
    assert.equal(err.code, expected.code, err.message);
    assert.equal(err.status, expected.status ?? 400);
    if (expected.message) assert.match(err.message, expected.message);
    return true;
  });
  await assert.rejects(stat(dest), { code: 'ENOENT' }, 'a rejected archive must leave no directory behind');
  const escaped = (await readdir(work)).filter((name) => name.startsWith('escaped'));
  assert.deepEqual(escaped, [], 'nothing may be written outside the target directory');
}

const mode = async (path: string) => (await stat(path)).mode & 0o7777;
const formats: ArchiveFormat[] = ['zip', 'tar.gz'];

// ---- a valid tree --------------------------------------------------------------------------------

const longPath = `node_modules/@scope/${'a-rather-long-package-name'.repeat(3)}/dist/esm/internal/index.js`;
const tree: Record<string, { body: string; mode: number }> = {
  'index.js': { body: 'export default () => "hi";\n', mode: 0o644 },
  'lib/util.js': { body: 'export const x = 1;\n', mode: 0o600 }, // comes out 0644: readable by sandbox uids
  'node_modules/dep/package.json': { body: '{"name":"dep","main":"index.js"}', mode: 0o644 },
  'node_modules/dep/index.js': { body: 'module.exports = 42;\n', mode: 0o644 },
  'node_modules/.bin/tool': { body: '#!/bin/sh\necho tool\n', mode: 0o755 },
  [longPath]: { body: 'deep', mode: 0o644 },
};
const treeBytes = Object.values(tree).reduce((n, f) => n + Buffer.byteLength(f.body), 0);

async function sourceTree(): Promise<string> {
  const src = join(work, `src-${++seq}`);
  for (const [path, { body, mode }] of Object.entries(tree)) {
    await mkdir(join(src, path, '..'), { recursive: true });
    await writeFile(join(src, path), body);
    await chmod(join(src, path), mode);
  }
  await mkdir(join(src, 'static'));
  return src;
}

async function validArchive(format: ArchiveFormat): Promise<Buffer> {
  if (format === 'zip') {
    return yazlZip((z) => {
      for (const [path, { body, mode }] of Object.entries(tree)) z.addBuffer(Buffer.from(body), path, { mode: 0o100000 | mode });
      z.addEmptyDirectory('static/');
    });
  }
  const src = await sourceTree();
  const file = join(work, `tree-${++seq}.tar.gz`);
  await tarCreate({ gzip: true, cwd: src, file }, ['.']);
  return readFile(file);
}

describe('valid archives', () => {
  for (const format of formats) {
    test(`${format}: unpacks a nested tree with node_modules, normalising modes whatever the umask`, async () => {
      const bytes = await validArchive(format);
      const previous = process.umask(0o077);
      let out: Awaited<ReturnType<typeof extract>>;
      try {
        out = await extract(bytes, format);
      } finally {
        process.umask(previous);
      }
      const { dest, result } = out;
      // zip: 6 files and static/; tar: 6 files, "./" and all 10 directories.
      assert.deepEqual(result, { entries: format === 'zip' ? 7 : 17, bytes: treeBytes });
      for (const [path, { body, mode: srcMode }] of Object.entries(tree)) {
        assert.equal(await readFile(join(dest, path), 'utf8'), body, path);
        assert.equal(await mode(join(dest, path)), srcMode === 0o755 ? 0o755 : 0o644, path);
      }
      for (const dir of ['', 'static', 'lib', 'node_modules/dep', 'node_modules/.bin']) {
        assert.ok((await stat(join(dest, dir))).isDirectory(), dir);
        assert.equal(await mode(join(dest, dir)), 0o755, dir);
      }
      assert.deepEqual(await readdir(join(dest, 'static')), []);
    });
  }

  test('zip: backslash separators from Windows tools become directories', async () => {
    const { dest } = await extract(
      zip([
        ['src\\', ''],
        ['src\\main.js', 'main'],
      ]),
      'zip',
    );
    assert.equal(await readFile(join(dest, 'src', 'main.js'), 'utf8'), 'main');
  });

  test('tar.gz: a pax global header (git archive writes one) is accepted', async () => {
    const bytes = tarGz([
      { path: 'pax_global_header', type: 'GlobalExtendedHeader', body: '' },
      { path: 'a.js', body: 'a' },
    ]);
    const { dest } = await extract(bytes, 'tar.gz');
    assert.deepEqual(await readdir(dest), ['a.js']);
  });

  test('refuses to extract into an existing directory', async () => {
    const { file, dest } = await store(zip([['a.js', 'a']]));
    await mkdir(dest);
    await writeFile(join(dest, 'keep'), 'x');
    await assert.rejects(extractArchive(file, 'zip', dest), { code: 'EEXIST' });
    assert.equal(await readFile(join(dest, 'keep'), 'utf8'), 'x');
  });
});

// ---- unsafe entries ----------------------------------------------------------------------------

describe('unsafe paths', () => {
  const cases: [what: string, name: string][] = [
    ['zip-slip', '../escaped-slip.js'],
    ['zip-slip through a subdirectory', 'a/b/../../../escaped-deep.js'],
    ['absolute path', '/tmp/escaped-abs.js'],
    ['Windows drive path', 'C:\\escaped-drive.js'],
    ['drive-relative path', 'C:escaped-drive-rel.js'],
    ['backslash traversal', '..\\escaped-backslash.js'],
    ['UNC path', '\\\\server\\share\\escaped.js'],
  ];
  for (const format of formats) {
    for (const [what, name] of cases) {
      test(`${format}: ${what}`, async () => {
        const shown = JSON.stringify(name)
          .slice(1, -1)
          .replaceAll(/[\\^$.*+?()[\]{}|]/g, '\\$&');
        await rejects(evil(format, name), format, { code: 'unsafe_path', message: new RegExp(shown) });
      });
    }
  }

  test('zip: a NUL byte in the name (tar headers cannot carry one)', async () => {
    await rejects(evil('zip', 'a\0b.js'), 'zip', { code: 'unsafe_path', message: /NUL/ });
  });

  test('zip: an absolute path pointing right at the work dir', async () => {
    await rejects(evil('zip', join(work, 'escaped-here.js')), 'zip', { code: 'unsafe_path' });
  });

  test('tar.gz: a traversal hidden in a pax header path', async () => {
    const bytes = tarGz([{ path: 'harmless.js', body: 'x', pax: { path: '../escaped-pax.js' } }]);
    await rejects(bytes, 'tar.gz', { code: 'unsafe_path', message: /escaped-pax\.js/ });
  });
});

describe('links and special files', () => {
  test('zip: symlink entry (S_IFLNK in the external attributes)', async () => {
    await rejects(evil('zip', 'link', {}, unixAttrs(0o120777)), 'zip', {
      code: 'symlink_not_allowed',
      message: /"link" is a symbolic link/,
    });
  });

  test('zip: FIFO entry', async () => {
    await rejects(evil('zip', 'pipe', {}, unixAttrs(0o010644)), 'zip', { code: 'invalid_archive', message: /"pipe"/ });
  });

  test('tar.gz: symlink', async () => {
    await rejects(evil('tar.gz', 'link', { type: 'SymbolicLink', linkpath: '/etc/passwd' }), 'tar.gz', {
      code: 'symlink_not_allowed',
      message: /"link" is a symbolic link to "\/etc\/passwd"/,
    });
  });

  test('tar.gz: hard link', async () => {
    await rejects(evil('tar.gz', 'hard', { type: 'Link', linkpath: 'ok.js' }), 'tar.gz', {
      code: 'symlink_not_allowed',
      message: /"hard" is a hard link/,
    });
  });

  for (const type of ['CharacterDevice', 'BlockDevice', 'FIFO'] as const) {
    test(`tar.gz: ${type}`, async () => {
      await rejects(evil('tar.gz', 'dev', { type }), 'tar.gz', { code: 'invalid_archive', message: new RegExp(`"dev" is a ${type}`) });
    });
  }

  test('tar.gz: an entry type node-tar would silently skip (sparse file)', async () => {
    await rejects(evil('tar.gz', 'sparse', { type: 'SparseFile' }), 'tar.gz', { code: 'invalid_archive', message: /unsupported type/ });
  });
});

describe('duplicates and clashes', () => {
  test('zip: the same name twice', async () => {
    const bytes = await yazlZip((z) => {
      z.addBuffer(Buffer.from('one'), 'a.js');
      z.addBuffer(Buffer.from('two'), 'a.js');
    });
    await rejects(bytes, 'zip', { code: 'invalid_archive', message: /"a.js" duplicates/ });
  });

  test('zip: two spellings of one path', async () => {
    await rejects(
      zip([
        ['lib/a.js', '1'],
        ['./lib//a.js', '2'],
      ]),
      'zip',
      { code: 'invalid_archive', message: /duplicates/ },
    );
  });

  test('tar.gz: the same name twice', async () => {
    await rejects(
      tarGz([
        { path: 'a.js', body: '1' },
        { path: 'a.js', body: '2' },
      ]),
      'tar.gz',
      {
        code: 'invalid_archive',
        message: /duplicates/,
      },
    );
  });

  test('tar.gz: a directory declared twice', async () => {
    await rejects(
      tarGz([
        { path: 'd/', type: 'Directory' },
        { path: 'd', type: 'Directory' },
      ]),
      'tar.gz',
      {
        code: 'invalid_archive',
        message: /duplicates/,
      },
    );
  });

  test('zip: a file used as a directory', async () => {
    await rejects(
      zip([
        ['a', 'file'],
        ['a/b.js', 'x'],
      ]),
      'zip',
      { code: 'invalid_archive', message: /"a" .* is a file/ },
    );
  });

  test('tar.gz: a file where a directory was implied', async () => {
    await rejects(
      tarGz([
        { path: 'a/b.js', body: 'x' },
        { path: 'a', body: 'file' },
      ]),
      'tar.gz',
      {
        code: 'invalid_archive',
        message: /both a directory and a file/,
      },
    );
  });

  test('zip: a name too long for the file system', async () => {
    await rejects(zip([['x'.repeat(300), 'x']]), 'zip', { code: 'invalid_archive', message: /too long/ });
  });
});

// ---- limits and bombs --------------------------------------------------------------------------

describe('limits', () => {
  const small: ArchiveLimits = { maxCompressedBytes: 1024 * 1024, maxUncompressedBytes: 100_000, maxEntries: 3 };
  const tooLarge = (message?: RegExp) => ({ status: 413, code: 'too_large', message });

  test('zip: a 1 KB bomb that inflates 1000:1', async () => {
    const bytes = zip([['bomb.bin', Buffer.alloc(4 * INFLATION_FLOOR_BYTES), { level: 9 }]]);
    assert.ok(bytes.length < 1200, `bomb is ${bytes.length} bytes`);
    await rejects(bytes, 'zip', tooLarge(/"bomb.bin" inflates more than 200:1/));
  });

  test('tar.gz: a 1 KB bomb that inflates 1000:1', async () => {
    const bytes = tarGz([{ path: 'bomb.bin', body: Buffer.alloc(4 * INFLATION_FLOOR_BYTES) }]);
    assert.ok(bytes.length < 1200, `bomb is ${bytes.length} bytes`);
    await rejects(bytes, 'tar.gz', tooLarge(/inflates more than 200:1/));
  });

  test('small repetitive files below the ratio floor are fine', async () => {
    const { result } = await extract(zip([['zeros.bin', Buffer.alloc(INFLATION_FLOOR_BYTES), { level: 9 }]]), 'zip');
    assert.equal(result.bytes, INFLATION_FLOOR_BYTES);
  });

  for (const format of formats) {
    test(`${format}: total unpacked size over the limit, counted in real bytes`, async () => {
      const body = randomBytes(60_000); // incompressible, so only the total can trip
      const bytes =
        format === 'zip'
          ? zip([
              ['one.bin', body],
              ['two.bin', body],
            ])
          : tarGz([
              { path: 'one.bin', body },
              { path: 'two.bin', body },
            ]);
      await rejects(bytes, format, tooLarge(/"two.bin" takes the unpacked size past the limit of 100000 bytes/), small);
    });

    test(`${format}: entry limit (exactly at the limit is fine)`, async () => {
      const build = (n: number) =>
        format === 'zip'
          ? zip(Array.from({ length: n }, (_, i) => [`f${i}`, ''] as [string, string]))
          : tarGz(Array.from({ length: n }, (_, i) => ({ path: `f${i}` })));
      assert.equal((await extract(build(3), format, small)).result.entries, 3);
      await rejects(build(4), format, tooLarge(/more than 3 entries/), small);
    });

    test(`${format}: archive over the compressed size limit`, async () => {
      await rejects(evil(format, 'x.js'), format, tooLarge(/larger than 100 bytes/), { ...small, maxCompressedBytes: 100 });
    });
  }

  test('zip: 10,001 entries against the default limit', async () => {
    const bytes = zip(Array.from({ length: 10_001 }, (_, i) => [`f${i}`, ''] as [string, string]));
    await rejects(bytes, 'zip', tooLarge(/more than 10000 entries/));
  });

  test('tar.gz: 10,001 entries against the default limit', async () => {
    // "./" entries cost no disk work; the small-limit test above covers real files.
    const bytes = tarGz(Array.from({ length: 10_001 }, () => ({ path: './', type: 'Directory' as const })));
    await rejects(bytes, 'tar.gz', tooLarge(/more than 10000 entries/), DEFAULT_ARCHIVE_LIMITS);
  });

  test('tar.gz: incompressible junk after the end-of-archive marker is bounded', async () => {
    const bytes = tarGz([{ path: 'a.js', body: 'a' }], randomBytes(1_200_000));
    await rejects(bytes, 'tar.gz', tooLarge(/tar stream is longer than/), { ...small, maxCompressedBytes: 2_000_000 });
  });

  test('tar.gz: zero padding after the end-of-archive marker is fine', async () => {
    const { result } = await extract(tarGz([{ path: 'a.js', body: 'a' }], Buffer.alloc(20 * 512)), 'tar.gz');
    assert.deepEqual(result, { entries: 1, bytes: 1 });
  });
});

// ---- broken input ------------------------------------------------------------------------------

/** Rewrites fields of every central directory record of a zip (yauzl reads entries from there). */
function patchCentralDirectory(bytes: Buffer, patch: (record: Buffer) => void): Buffer {
  const out = Buffer.from(bytes);
  for (let at = out.indexOf('PK\x01\x02'); at !== -1; at = out.indexOf('PK\x01\x02', at + 4)) patch(out.subarray(at));
  return out;
}

describe('broken archives', () => {
  const invalid = (message?: RegExp) => ({ code: 'invalid_archive', message });

  for (const format of formats) {
    test(`${format}: random bytes`, async () => {
      await rejects(randomBytes(4096), format, invalid(new RegExp(`not a valid ${format.replace('.', '\\.')} archive`)));
    });

    test(`${format}: a text body`, async () => {
      await rejects(Buffer.from('{"hello": "world"}\n'), format, invalid());
    });

    test(`${format}: an empty body`, async () => {
      await rejects(Buffer.alloc(0), format, invalid());
    });

    test(`${format}: truncated`, async () => {
      const bytes = format === 'zip' ? zip([['a.js', randomBytes(2000)]]) : tarGz([{ path: 'a.js', body: randomBytes(2000) }]);
      await rejects(bytes.subarray(0, bytes.length - 40), format, invalid());
    });
  }

  test('zip given as tar.gz, and the other way round', async () => {
    await rejects(zip([['a.js', 'a']]), 'tar.gz', invalid(/incorrect header check/));
    await rejects(tarGz([{ path: 'a.js', body: 'a' }]), 'zip', invalid(/central directory/));
  });

  test('tar.gz: valid gzip around something that is not tar', async () => {
    await rejects(gzipSync(randomBytes(4096)), 'tar.gz', invalid());
  });

  test('tar.gz: gzip intact, tar cut off inside an entry', async () => {
    const tar = gunzipSync(tarGz([{ path: 'a.js', body: randomBytes(3000) }]));
    await rejects(gzipSync(tar.subarray(0, 1500)), 'tar.gz', invalid(/Truncated/));
  });

  test('zip: an entry inflating to more than its header declares (headers are not trusted)', async () => {
    const honest = zip([['a.bin', Buffer.alloc(100_000, 'a'), { level: 9 }]]);
    const lying = patchCentralDirectory(honest, (record) => record.writeUInt32LE(10, 24)); // uncompressed size
    await rejects(lying, 'zip', invalid(/too many bytes/));
  });

  test('zip: an encrypted entry', async () => {
    const bytes = patchCentralDirectory(zip([['secret.js', 'x']]), (record) => record.writeUInt16LE(record.readUInt16LE(8) | 1, 8));
    await rejects(bytes, 'zip', invalid(/"secret.js" is encrypted/));
  });
});
