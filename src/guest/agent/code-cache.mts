/**
 * `node <the agent's V8 flags> code-cache.mjs BUNDLE OUT`: writes V8's code cache of a bundle
 * (bundle.mts), run by the host when it prepares a function's start. It compiles and never runs the
 * function's code: every function is compiled eagerly (V8's --no-lazy, for this compile only, then
 * back, so that the cache carries the flags the agent runs with, which V8 checks).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { bundleScript } from './bundle.mjs';

const [bundle, out] = process.argv.slice(2);
if (!bundle || !out) {
  console.error('usage: code-cache.mjs BUNDLE OUT');
  process.exit(2);
}
setFlagsFromString('--no-lazy');
const script = bundleScript(readFileSync(bundle, 'utf8'));
setFlagsFromString('--lazy');
writeFileSync(out, script.createCachedData());
