/**
 * AWS Signature Version 4 checks for the Lambda Invoke API. The signature is recomputed with the
 * signer the AWS SDK itself uses (@smithy/signature-v4) over exactly the headers the client says it
 * signed, then compared in constant time: no hand-written canonicalisation to drift from AWS's.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import { accessDenied } from './errors.js';

export interface AccessKey {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface SignedRequest {
  method: string;
  /** Path and query exactly as received (still percent-encoded: the canonical path encodes it once more). */
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** As AWS: a signature is valid within 5 minutes of its timestamp, either way. */
const MAX_SKEW_MS = 5 * 60_000;
const AUTHORIZATION =
  /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;._-]+),\s*Signature=([0-9a-f]{64})$/;
const AMZ_DATE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;

const MISMATCH =
  'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.';

export class SigV4Verifier {
  private readonly signers = new Map<string, SignatureV4>();

  constructor(
    keys: AccessKey[],
    private readonly service: string,
    private readonly now: () => number = Date.now,
  ) {
    for (const key of keys) {
      this.signers.set(
        key.accessKeyId,
        new SignatureV4({ credentials: key, region: 'us-east-1', service, sha256: Hash.bind(null, 'sha256'), applyChecksum: false }),
      );
    }
  }

  /** Resolves with the access key id that signed the request; throws a 403 LambdaApiError otherwise. */
  async verify(req: SignedRequest): Promise<string> {
    const authorization = req.headers.authorization;
    if (!authorization) throw accessDenied('MissingAuthenticationTokenException', 'Missing Authentication Token');
    const match = AUTHORIZATION.exec(authorization);
    if (!match) {
      throw accessDenied(
        'IncompleteSignatureException',
        'Authorization header requires AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature parameters.',
      );
    }
    const [, keyId, day, region, service, signedList, signature] = match as unknown as string[];
    const signer = this.signers.get(keyId!);
    if (!signer) throw accessDenied('UnrecognizedClientException', 'The security token included in the request is invalid.');
    if (service !== this.service) {
      throw accessDenied('InvalidSignatureException', `Credential should be scoped to correct service: '${this.service}'.`);
    }
    const signed = signedList!.split(';');
    if (!signed.includes('host') || !signed.includes('x-amz-date')) {
      throw accessDenied('IncompleteSignatureException', 'SignedHeaders must include host and x-amz-date.');
    }
    const signingDate = this.checkDate(header(req.headers, 'x-amz-date'), day!);
    const payloadHash = createHash('sha256').update(req.body).digest('hex');
    const declaredHash = header(req.headers, 'x-amz-content-sha256');
    if (declaredHash !== undefined && declaredHash !== payloadHash) {
      throw accessDenied('InvalidSignatureException', 'The provided x-amz-content-sha256 header does not match the body.');
    }

    const headers: Record<string, string> = {};
    for (const name of signed) {
      const value = header(req.headers, name);
      if (value === undefined) throw accessDenied('InvalidSignatureException', `The signed header ${name} is missing.`);
      headers[name] = value;
    }
    const q = req.url.indexOf('?');
    const expected = await signer.sign(
      {
        method: req.method,
        protocol: 'https:',
        hostname: headers.host!,
        path: q === -1 ? req.url : req.url.slice(0, q),
        query: parseQuery(q === -1 ? '' : req.url.slice(q + 1)),
        headers,
        body: req.body,
      },
      { signingDate, signingRegion: region, signingService: service, signableHeaders: new Set(signed) },
    );
    const computed = /Signature=([0-9a-f]{64})$/.exec(expected.headers.authorization ?? '')?.[1] ?? '';
    if (computed.length !== signature!.length || !timingSafeEqual(Buffer.from(computed), Buffer.from(signature!))) {
      throw accessDenied('InvalidSignatureException', MISMATCH);
    }
    return keyId!;
  }

  private checkDate(amzDate: string | undefined, credentialDay: string): Date {
    const m = amzDate ? AMZ_DATE.exec(amzDate) : null;
    if (!m) throw accessDenied('IncompleteSignatureException', 'X-Amz-Date must be a timestamp like 20260102T030405Z.');
    const [, y, mo, d, h, mi, s] = m.map(Number) as number[];
    const date = new Date(Date.UTC(y!, mo! - 1, d!, h!, mi!, s!));
    if (amzDate!.slice(0, 8) !== credentialDay) {
      throw accessDenied(
        'InvalidSignatureException',
        `Date in Credential scope does not match YYYYMMDD from X-Amz-Date: ${credentialDay}.`,
      );
    }
    const now = this.now();
    if (date.getTime() < now - MAX_SKEW_MS) {
      throw accessDenied(
        'InvalidSignatureException',
        `Signature expired: ${amzDate} is now earlier than ${basic(now - MAX_SKEW_MS)} (${basic(now)} - 5 min.)`,
      );
    }
    if (date.getTime() > now + MAX_SKEW_MS) {
      throw accessDenied(
        'InvalidSignatureException',
        `Signature not yet current: ${amzDate} is still later than ${basic(now + MAX_SKEW_MS)} (${basic(now)} + 5 min.)`,
      );
    }
    return date;
  }
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(',') : value;
}

/** Decoded query parameters as the signer wants them; `+` stays a plus (AWS clients encode spaces as %20). */
function parseQuery(raw: string): Record<string, string | string[]> {
  const query: Record<string, string | string[]> = {};
  for (const part of raw.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const key = safeDecode(eq === -1 ? part : part.slice(0, eq));
    const value = eq === -1 ? '' : safeDecode(part.slice(eq + 1));
    const prior = query[key];
    query[key] = prior === undefined ? value : [...(Array.isArray(prior) ? prior : [prior]), value];
  }
  return query;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** ISO 8601 basic format, as X-Amz-Date. */
function basic(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}
