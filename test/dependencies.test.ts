/**
 * Installs are clean on the Node versions package.json's `engines` admits: every locked package supports
 * all of them (npm warns EBADENGINE otherwise), and the override that makes it so (cookie 1 for fastify's
 * light-my-request, whose cookie 2 needs Node 22) keeps the API light-my-request uses working.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import Fastify from 'fastify';
import semver from 'semver';
import { ROOT } from './helpers/aether.ts';

const readJson = (file: string) => JSON.parse(fs.readFileSync(path.join(ROOT, file), 'utf8'));

/**
 * Versions that stand for everything `range` admits: per major, the lowest and a highest one. (Engines
 * ranges draw their lines at versions like these; semver.subset cannot compare a range with a union.)
 */
function boundaries(range: string): string[] {
  const found: string[] = [];
  for (let major = 0; major < 100; major++) {
    for (const set of new semver.Range(range).set) {
      const within = new semver.Range(`${set.map((c) => c.value).join(' ')} >=${major}.0.0 <${major + 1}.0.0-0`);
      const lowest = semver.minVersion(within);
      if (lowest && within.test(lowest)) found.push(lowest.version);
      if (within.test(`${major}.9999.9999`)) found.push(`${major}.9999.9999`);
    }
  }
  return found;
}

test('every locked package supports every Node version that engines admits, and this one is among them', () => {
  const ours: string = readJson('package.json').engines.node;
  assert.ok(semver.satisfies(process.version, ours), `this Node ${process.version} is outside engines ${ours}`);
  const packages: Record<string, { version: string; engines?: { node?: string } | string[] }> = readJson('package-lock.json').packages;
  const versions = boundaries(ours);
  assert.ok(versions.length > 0, `engines admits no Node version: ${ours}`);
  const narrower = Object.entries(packages).flatMap(([where, pkg]) => {
    const theirs = !Array.isArray(pkg.engines) && pkg.engines?.node;
    const outside = theirs ? versions.filter((v) => !semver.satisfies(v, theirs)) : [];
    return outside.length > 0
      ? [`${where.replace(/^.*node_modules\//, '')}@${pkg.version} needs node ${theirs}, not ${outside.join(', ')}`]
      : [];
  });
  assert.deepEqual(narrower, [], `engines says node ${ours}`);
});

test("fastify's inject sends cookies through the overridden cookie package", async () => {
  const app = Fastify();
  app.get('/', async (req) => req.headers.cookie);
  const res = await app.inject({ url: '/', cookies: { session: 'a b;c', other: 'x' } });
  assert.equal(res.body, 'session=a%20b%3Bc; other=x');
  await app.close();
});
