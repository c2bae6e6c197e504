export interface ArchiveLimits {
  /** Bytes of the archive itself, as uploaded. */
  maxCompressedBytes: number;
  /** Bytes of file content written while unpacking, counted as it is inflated. */
  maxUncompressedBytes: number;
  maxEntries: number;
}

const MiB = 1024 * 1024;

export const DEFAULT_ARCHIVE_LIMITS: Readonly<ArchiveLimits> = {
  maxCompressedBytes: 50 * MiB,
  maxUncompressedBytes: 250 * MiB,
  maxEntries: 10_000,
};

/**
 * Zip-bomb guard: data may inflate at most this many times its compressed size, except that
 * anything up to INFLATION_FLOOR_BYTES passes (small, highly repetitive files are normal).
 * Real code and node_modules stay far below 200:1; deflate tops out near 1032:1.
 */
export const MAX_INFLATION_RATIO = 200;
export const INFLATION_FLOOR_BYTES = 256 * 1024;

export const inflationAllowance = (compressedBytes: number) => Math.max(INFLATION_FLOOR_BYTES, MAX_INFLATION_RATIO * compressedBytes);

export function formatBytes(n: number): string {
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KB`;
  return `${n} bytes`;
}
