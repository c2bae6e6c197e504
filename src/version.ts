/** Aether's version, from package.json (one directory above both src/ and dist/). */
import { readFileSync } from 'node:fs';

export const AETHER_VERSION: string = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;
