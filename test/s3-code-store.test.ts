import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { HeadBucketCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { zipSync } from 'fflate';
import { create as tarCreate } from 'tar';
import { AetherError } from '../src/core/errors.js';
import { DEFAULT_ARCHIVE_LIMITS } from '../src/adapters/code/archive-limits.js';
import { LocalCodeStore } from '../src/adapters/code/local-code-store.js';
import { codeKey, S3CodeStore, type S3CodeStoreOptions } from '../src/adapters/s3/s3-code-store.js';
import { createS3Client, type S3Config } from '../src/adapters/s3/s3-config.js';
import { startServices, type Services } from './helpers/services.js';

let services: Services;
let work: string;
let proxy: CountingProxy;
let s3: S3Client; // the test's own view of the bucket, straight to the server
let seq = 0;
const stores: S3CodeStore[] = [];

before(async () => {
  [services, work] = await Promise.all([startServices(), mkdtemp(join(tmpdir(), 'aether-s3-code-'))]);
  await chmod(work, 0o755);
  proxy = await startCountingProxy(services.s3.port);
  s3 = createS3Client(s3Config(services.env));
});
after(async () => {
  for (const store of stores) store.close();
  s3?.destroy();
  await proxy?.close();
  await services?.stop();
  await rm(work, { recursive: true, force: true });
});

/** A store talking to S3 through the counting proxy, with its own cache dir (a gateway or a worker). */
function newStore(options: Partial<S3CodeStoreOptions> = {}): S3CodeStore & { cacheDir: string } {
  const cacheDir = join(work, `cache-${++seq}`);
  const store = new S3CodeStore({ ...s3Config(services.env), endpoint: proxy.endpoint, cacheDir, ...options });
  stores.push(store);
  return Object.assign(store, { cacheDir });
}

const bucket = () => services.env.MINIO_BUCKET;
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
/** A distinct small app per call, so tests never share objects. */
const appZip = () => Buffer.from(zipSync({ 'index.js': Buffer.from(`export default () => ${++seq};\n`) }));
const objectPath = (hash: string, format: 'zip' | 'tar.gz' = 'zip') => `/${bucket()}/${codeKey(hash, format)}`;
const overwrite = (hash: string, body: Buffer) =>
  s3.send(new PutObjectCommand({ Bucket: bucket(), Key: codeKey(hash, 'zip'), Body: body }));
const objectExists = (hash: string) =>
  s3.send(new HeadObjectCommand({ Bucket: bucket(), Key: codeKey(hash, 'zip') })).then(
    () => true,
    () => false,
  );

async function rejectsWith(promise: Promise<unknown>, status: number, code: string): Promise<AetherError> {
  let caught: unknown;
  await assert.rejects(promise, (err) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof AetherError, String(caught));
  assert.deepEqual([caught.status, caught.code], [status, code], caught.message);
  return caught;
}

test('the bucket is created when missing, idempotently, with stores racing to do it', async () => {
  const Bucket = 'fresh-code-bucket';
  const exists = () =>
    s3.send(new HeadBucketCommand({ Bucket })).then(
      () => true,
      () => false,
    );
  assert.equal(await exists(), false);
  const [a, b] = [newStore({ bucket: Bucket }), newStore({ bucket: Bucket })];
  await Promise.all([a.ensureBucket(), b.ensureBucket(), a.ensureBucket()]);
  assert.equal(await exists(), true);
  await newStore({ bucket: Bucket }).ensureBucket();

  // put creates it too, so a gateway started while S3 was down needs no restart.
  const { hash } = await newStore({ bucket: 'lazy-code-bucket' }).put(Readable.from([appZip()]), 'zip');
  await s3.send(new HeadObjectCommand({ Bucket: 'lazy-code-bucket', Key: codeKey(hash, 'zip') }));
});

test('round trip: a gateway uploads zip and tar.gz, a worker fetches and unpacks them', async () => {
  const [gateway, worker] = [newStore(), newStore()];
  const zip = appZip();
  const stored = await gateway.put(Readable.from([zip]), 'zip');
  assert.deepEqual(stored, { hash: sha256(zip), size: zip.length });
  assert.ok(await objectExists(stored.hash));

  proxy.requests.length = 0;
  const dir = await worker.dir(stored.hash);
  assert.ok(dir.startsWith(worker.cacheDir), dir);
  assert.match(await readFile(join(dir, 'index.js'), 'utf8'), /^export default/);
  assert.equal(await worker.dir(stored.hash), dir);
  assert.deepEqual(proxy.requests, [`GET ${objectPath(stored.hash)}`], 'fetched once, then served from the cache');

  const src = join(work, `src-${++seq}`);
  await mkdir(join(src, 'lib'), { recursive: true });
  await writeFile(join(src, 'lib', 'main.js'), `main ${seq}`);
  const tgz = await tarCreate({ gzip: true, cwd: src, portable: true }, ['.']).concat();
  const { hash } = await gateway.put(Readable.from([tgz]), 'tar.gz');
  assert.ok(proxy.requests.includes(`PUT ${objectPath(hash, 'tar.gz')}`), proxy.requests.join('\n'));
  assert.equal(await readFile(join(await worker.dir(hash), 'lib', 'main.js'), 'utf8'), `main ${seq}`);
});

test('an archive already in S3 is not uploaded again, from any gateway', async () => {
  const zip = appZip();
  const hash = sha256(zip);
  proxy.requests.length = 0;
  const [a, b] = [newStore(), newStore()];
  await a.put(Readable.from([zip]), 'zip');
  await a.put(Readable.from([zip]), 'zip');
  await b.put(Readable.from([zip]), 'zip');
  const uploads = proxy.requests.filter((r) => r === `PUT ${objectPath(hash)}`);
  const checks = proxy.requests.filter((r) => r === `HEAD ${objectPath(hash)}`);
  assert.deepEqual([uploads.length, checks.length], [1, 3], proxy.requests.join('\n'));
});

test('a bad archive is refused exactly as in single-node mode, and nothing reaches S3', async () => {
  const limits = { ...DEFAULT_ARCHIVE_LIMITS, maxCompressedBytes: 4096 };
  const gateway = newStore({ limits });
  const single = new LocalCodeStore(join(work, `single-${++seq}`), limits);
  const bad = {
    'zip slip': [Buffer.from(zipSync({ 'ok.js': Buffer.from('1'), '../evil.js': Buffer.from('2') })), 'zip'],
    garbage: [randomBytes(3000), 'tar.gz'],
    'too large': [randomBytes(5000), 'zip'],
  } as const;
  proxy.requests.length = 0;
  for (const [name, [bytes, format]] of Object.entries(bad)) {
    const expected = await single.put(Readable.from([bytes]), format).then(
      () => assert.fail(name),
      (err: AetherError) => err,
    );
    const actual = await rejectsWith(gateway.put(Readable.from([bytes]), format), expected.status, expected.code);
    assert.equal(actual.message, expected.message, name);
  }
  assert.deepEqual(proxy.requests, []);
  assert.deepEqual(await readdir(gateway.cacheDir), []);
});

test('S3 stopping during an upload: fast 503, old state intact, the retry after recovery uploads', async (t) => {
  const direct = { endpoint: services.s3.endpoint }; // no proxy: the client sees the refused connections itself
  const [gateway, worker, cachedWorker] = [newStore(direct), newStore(direct), newStore(direct)];
  const old = await gateway.put(Readable.from([appZip()]), 'zip');
  await cachedWorker.dir(old.hash);

  const zip = appZip();
  const half = zip.length >> 1;
  async function* upload() {
    yield zip.subarray(0, half);
    await services.s3.stop();
    stopped = true;
    yield zip.subarray(half);
  }
  let stopped = false;
  const started = Date.now();
  try {
    const err = await rejectsWith(gateway.put(Readable.from(upload()), 'zip'), 503, 'code_store_unavailable');
    const elapsed = Date.now() - started;
    assert.match(err.message, /S3/);
    assert.ok(elapsed < 3000, `took ${elapsed} ms`);
    t.diagnostic(`put failed after ${elapsed} ms: ${err.message}`);

    await rejectsWith(worker.dir(sha256(zip)), 503, 'code_store_unavailable');
    assert.ok((await cachedWorker.dir(old.hash)).startsWith(cachedWorker.cacheDir), 'cached code still serves');
  } finally {
    if (stopped) await services.s3.start(); // later tests need S3 even if an assertion failed
  }
  assert.equal(await objectExists(sha256(zip)), false, 'nothing was uploaded');
  await gateway.put(Readable.from([zip]), 'zip'); // validated locally already, but not taken for uploaded
  assert.equal(await objectExists(sha256(zip)), true);
  assert.ok(await worker.dir(sha256(zip)));
});

test('an endpoint that accepts connections but never answers times out quickly', { timeout: 10_000 }, async (t) => {
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((s) => sockets.add(s));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const endpoint = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
  const store = newStore({ endpoint, timeoutMs: 500 });
  const started = Date.now();
  await rejectsWith(store.put(Readable.from([appZip()]), 'zip'), 503, 'code_store_unavailable');
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 2500, `took ${elapsed} ms`);
  t.diagnostic(`timed out after ${elapsed} ms (timeoutMs 500, two attempts)`);
});

test('a tampered object is refused and nothing is cached; the next upload repairs it', async () => {
  const gateway = newStore();
  const zip = appZip();
  const { hash } = await gateway.put(Readable.from([zip]), 'zip');

  const flipped = Buffer.from(zip);
  flipped[flipped.length >> 1]! ^= 0xff; // same size: only the hash tells
  await overwrite(hash, flipped);
  const worker = newStore();
  const err = await rejectsWith(worker.dir(hash), 502, 'code_corrupt');
  assert.match(err.message, new RegExp(sha256(flipped)));
  assert.deepEqual(await readdir(worker.cacheDir), []);

  await overwrite(hash, randomBytes(zip.length + 100));
  await rejectsWith(worker.dir(hash), 502, 'code_corrupt');
  assert.deepEqual(await readdir(worker.cacheDir), []);

  await gateway.put(Readable.from([zip]), 'zip'); // another size than expected: uploaded again
  assert.match(await readFile(join(await worker.dir(hash), 'index.js'), 'utf8'), /^export default/);
});

test('concurrent dir() calls for one hash share one download', async () => {
  const { hash } = await newStore().put(Readable.from([appZip()]), 'zip');
  const worker = newStore();
  proxy.requests.length = 0;
  const dirs = await Promise.all(Array.from({ length: 8 }, () => worker.dir(hash)));
  assert.equal(new Set(dirs).size, 1);
  assert.deepEqual(proxy.requests, [`GET ${objectPath(hash)}`]);
});

test('a download that breaks off is a 503, leaves nothing behind, and is tried afresh next time', async () => {
  const { hash } = await newStore().put(Readable.from([appZip()]), 'zip');
  const worker = newStore();
  proxy.cutDownloads = true;
  try {
    await rejectsWith(worker.dir(hash), 503, 'code_store_unavailable');
  } finally {
    proxy.cutDownloads = false;
  }
  assert.deepEqual(await readdir(worker.cacheDir), []);
  assert.ok((await worker.dir(hash)).startsWith(worker.cacheDir));
});

test('remove deletes the object and the local copy; unknown and malformed hashes are 404', async () => {
  const gateway = newStore();
  const { hash } = await gateway.put(Readable.from([appZip()]), 'zip');
  await gateway.remove(hash);
  assert.equal(await objectExists(hash), false);
  assert.deepEqual(await readdir(gateway.cacheDir), []);
  await rejectsWith(gateway.dir(hash), 404, 'not_found');

  proxy.requests.length = 0;
  await rejectsWith(newStore().dir('../../etc'), 404, 'not_found');
  assert.deepEqual(proxy.requests, [], 'a malformed hash never becomes a key');
});

interface CountingProxy {
  endpoint: string;
  /** `METHOD /bucket/key` of every request forwarded, query strings dropped. */
  requests: string[];
  /** When set, object downloads break off half way, as when S3 dies mid-transfer. */
  cutDownloads: boolean;
  close(): Promise<void>;
}

/** An HTTP pass-through in front of the S3 server that records what the stores ask for. */
async function startCountingProxy(targetPort: number): Promise<CountingProxy> {
  const server = http.createServer((req, res) => {
    proxy.requests.push(`${req.method} ${req.url!.split('?')[0]}`);
    const upstream = http.request(
      { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode!, answer.headers);
        if (req.method !== 'GET' || !proxy.cutDownloads) return void answer.pipe(res);
        answer.once('data', (chunk: Buffer) => {
          res.write(chunk.subarray(0, chunk.length >> 1), () => res.destroy());
          answer.destroy();
        });
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const proxy: CountingProxy = {
    endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    requests: [],
    cutDownloads: false,
    close: () => new Promise<void>((r) => server.close(() => r()).closeAllConnections()),
  };
  return proxy;
}

function s3Config(env: Record<string, string>): S3Config {
  return {
    endpoint: env.MINIO_ENDPOINT!,
    accessKeyId: env.MINIO_ACCESS_KEY!,
    secretAccessKey: env.MINIO_SECRET_KEY!,
    bucket: env.MINIO_BUCKET!,
  };
}
