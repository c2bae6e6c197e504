import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  PutObjectCommand,
  type BucketLocationConstraint,
  type S3Client,
} from '@aws-sdk/client-s3';
import { AetherError, conflict, notFound, unavailable } from '../../core/errors.js';
import type { ArchiveFormat, CodeStore, PutOptions, StoredCode } from '../../core/ports.js';
import { DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from '../code/archive-limits.js';
import { checkHash, LocalCodeStore } from '../code/local-code-store.js';
import { createS3Client, DEFAULT_REGION, type S3Config } from './s3-config.js';

export interface S3CodeStoreOptions extends S3Config {
  /** Local LocalCodeStore root: validated uploads on a gateway, unpacked downloads on a worker. */
  cacheDir: string;
  limits?: ArchiveLimits;
}

const FORMATS: readonly ArchiveFormat[] = ['zip', 'tar.gz'];
const CONTENT_TYPES: Record<ArchiveFormat, string> = { zip: 'application/zip', 'tar.gz': 'application/gzip' };
const ALREADY_CREATED = new Set(['BucketAlreadyOwnedByYou', 'BucketAlreadyExists']);

export const codeKey = (hash: string, format: ArchiveFormat) => `code/${hash}.${format}`;

/**
 * Cluster-mode code store: archives live in S3 as `code/<sha256>.zip|.tar.gz`; every process
 * keeps a LocalCodeStore as its cache. A gateway validates an upload locally exactly as in
 * single-node mode before anything reaches S3; a worker fetches an archive the first time it
 * needs its tree and only unpacks bytes that hash to the name it asked for.
 */
export class S3CodeStore implements CodeStore {
  private readonly s3: S3Client;
  private readonly local: LocalCodeStore;
  private readonly bucket: string;
  private readonly region: string;
  private bucketReady?: Promise<void>;
  private readonly fetches = new Map<string, Promise<string>>();

  constructor(options: S3CodeStoreOptions) {
    this.s3 = createS3Client(options);
    this.local = new LocalCodeStore(options.cacheDir, options.limits ?? DEFAULT_ARCHIVE_LIMITS);
    this.bucket = options.bucket;
    this.region = options.region ?? DEFAULT_REGION;
  }

  /** Creates the bucket unless it exists. Idempotent, safe against other processes doing the same. */
  ensureBucket(): Promise<void> {
    this.bucketReady ??= this.createBucket().catch((err: unknown) => {
      this.bucketReady = undefined; // S3 may be back next time
      throw err;
    });
    return this.bucketReady;
  }

  /** Resolves only once the archive is in S3: until then the caller keeps serving the previous code. */
  async put(archive: NodeJS.ReadableStream, format: ArchiveFormat, opts?: PutOptions): Promise<StoredCode> {
    const stored = await this.local.put(archive, format, opts);
    const file = await this.local.archive(stored.hash);
    if (!file) throw conflict(`code ${stored.hash} was removed while it was being uploaded`);
    await this.ensureBucket();
    const Key = codeKey(stored.hash, file.format);
    const existing = await requestOrMissing(this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key })));
    // Same key, same size: already uploaded. Another size is a damaged copy that this upload repairs.
    if (existing?.ContentLength === stored.size) return stored;
    await request(
      this.s3.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key,
          Body: createReadStream(file.path),
          ContentLength: stored.size,
          ContentType: CONTENT_TYPES[file.format],
          // S3 (and MinIO) verify it on arrival, so a corrupted transfer is never stored.
          ChecksumSHA256: Buffer.from(stored.hash, 'hex').toString('base64'),
        }),
      ),
    );
    return stored;
  }

  /** The local tree, fetched from S3 first if this process does not have it yet (once per hash at a time). */
  async dir(hash: string): Promise<string> {
    checkHash(hash);
    try {
      return await this.local.dir(hash);
    } catch (err) {
      if (!(err instanceof AetherError && err.status === 404)) throw err;
    }
    let fetch = this.fetches.get(hash);
    if (!fetch) {
      fetch = this.fetch(hash).finally(() => this.fetches.delete(hash));
      this.fetches.set(hash, fetch);
    }
    return fetch;
  }

  async remove(hash: string): Promise<void> {
    checkHash(hash);
    await request(
      Promise.all(FORMATS.map((format) => this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: codeKey(hash, format) })))),
    );
    await this.local.remove(hash);
  }

  /** Closes the client's connections. */
  close(): void {
    this.s3.destroy();
  }

  private async fetch(hash: string): Promise<string> {
    for (const format of FORMATS) {
      const object = await requestOrMissing(this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: codeKey(hash, format) })));
      if (!object) continue;
      const body = object.Body as Readable; // what the SDK's Node request handler returns
      let broken = false;
      body.once('error', () => (broken = true));
      try {
        // Hashed and size-limited as it streams; unpacked only if the sha256 matches.
        await this.local.put(body, format, { expectedHash: hash });
      } catch (err) {
        throw broken && !(err instanceof AetherError) ? storageUnavailable(err) : err;
      }
      return this.local.dir(hash);
    }
    throw notFound(`code ${hash} not found`);
  }

  private async createBucket(): Promise<void> {
    if (await requestOrMissing(this.s3.send(new HeadBucketCommand({ Bucket: this.bucket })))) return;
    const elsewhere = this.region !== DEFAULT_REGION; // us-east-1 is the one region S3 rejects a constraint for
    try {
      await this.s3.send(
        new CreateBucketCommand({
          Bucket: this.bucket,
          ...(elsewhere && { CreateBucketConfiguration: { LocationConstraint: this.region as BucketLocationConstraint } }),
        }),
      );
    } catch (err) {
      if (!ALREADY_CREATED.has((err as Error).name)) throw storageUnavailable(err);
    }
  }
}

async function request<T>(op: Promise<T>): Promise<T> {
  try {
    return await op;
  } catch (err) {
    throw storageUnavailable(err);
  }
}

async function requestOrMissing<T>(op: Promise<T>): Promise<T | undefined> {
  try {
    return await op;
  } catch (err) {
    if (statusOf(err) === 404) return undefined;
    throw storageUnavailable(err);
  }
}

function storageUnavailable(err: unknown): AetherError {
  const e = err as { name?: string; code?: string };
  const status = statusOf(err);
  const reason = status ? `${e.name} (HTTP ${status})` : (e.code ?? e.name ?? String(err));
  return unavailable(`code storage (S3) is unavailable: ${reason}`, 'code_store_unavailable', { cause: err });
}

const statusOf = (err: unknown): number | undefined => (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
