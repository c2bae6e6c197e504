/** The management API token: AETHER_API_TOKEN, else one generated on first start and kept (0600) in the data dir. */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Where the all-in-one server keeps its generated token; the CLI on the same machine reads it from there. */
export const tokenFile = (dataDir: string) => path.join(dataDir, 'api-token');

export function loadOrCreateToken(dataDir: string, fromEnv?: string): { token: string; created: boolean; file?: string } {
  if (fromEnv) return { token: fromEnv, created: false };
  const file = tokenFile(dataDir);
  try {
    return { token: fs.readFileSync(file, 'utf8').trim(), created: false, file };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = randomBytes(24).toString('base64url');
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${token}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return { token, created: true, file };
}
