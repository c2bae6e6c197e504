import { S3Client } from '@aws-sdk/client-s3';

// The SDK warns on every start that releases after January 2027 need Node 22; Aether pins this
// client's major and says so in the README, so the warning only adds noise to the logs.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Where code archives live: any S3-protocol endpoint (MinIO, AWS S3, s3rver), addressed path-style. */
export interface S3Config {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  /** Default us-east-1 (what MinIO and s3rver expect unless configured otherwise). */
  region?: string;
  /**
   * Connect timeout and socket idle timeout of every request, in ms (default 2000). The SDK's own
   * defaults are none at all: a blackholed endpoint would hang an upload indefinitely.
   */
  timeoutMs?: number;
}

export const DEFAULT_REGION = 'us-east-1';

export function createS3Client(config: S3Config): S3Client {
  const timeoutMs = config.timeoutMs ?? 2000;
  return new S3Client({
    endpoint: config.endpoint,
    region: config.region ?? DEFAULT_REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey },
    // One retry: callers answer 503 within a few seconds rather than after the SDK's backoff.
    maxAttempts: 2,
    requestHandler: { connectionTimeout: timeoutMs, socketTimeout: timeoutMs },
    // Checksums only where S3 requires them: the SDK's default (aws-chunked uploads with trailing
    // CRCs) is not understood by every S3-compatible server. Uploads carry their sha256 instead.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}
