/** Errors: one closed list of codes with their statuses (documented as it is), the cause kept where an error wraps another. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { asUnavailable as etcdUnavailable } from '../src/adapters/etcd/client.js';
import { toAetherError } from '../src/adapters/http/errors.js';
import { asUnavailable as redisUnavailable } from '../src/adapters/redis/connection.js';
import { AetherError, badRequest, ERRORS, unavailable } from '../src/core/errors.js';
import { ROOT } from './helpers/aether.ts';

test('docs/errors.md lists exactly the codes of src/core/errors.ts, with their statuses and meanings', () => {
  const rows = fs
    .readFileSync(path.join(ROOT, 'docs/errors.md'), 'utf8')
    .split('\n')
    .flatMap((line) => {
      const row = /^\| `(\w+)` \| (\d{3}) \| (.+) \|$/.exec(line);
      return row ? [[row[1], { status: Number(row[2]), meaning: row[3] }] as const] : [];
    });
  assert.deepEqual(rows, Object.entries(ERRORS));
});

test('the status comes with the code, and only listed codes compile', () => {
  assert.equal(new AetherError('queue_full', 'full').status, 503);
  assert.equal(badRequest('no', 'unsafe_path').status, 400);
  assert.equal(unavailable('busy').code, 'no_capacity');
  // @ts-expect-error not a code in the list
  assert.throws(() => new AetherError('queue_ful', 'a typo'));
  // @ts-expect-error a 502 code is not a bad request
  badRequest('wrong family', 'start_failed');
});

test('an error that wraps another keeps it as its cause', () => {
  const disk = new Error('EIO: disk on fire');
  const internal = toAetherError(disk);
  assert.deepEqual([internal.status, internal.code, internal.message, internal.cause], [500, 'internal', 'internal error', disk]);

  const grpc = new Error('14 UNAVAILABLE: No connection established');
  const etcd = etcdUnavailable(grpc, 'the function store', 'store_unavailable');
  assert.deepEqual([etcd.status, etcd.code, etcd.cause], [503, 'store_unavailable', grpc]);
  assert.match(etcd.message, /the function store \(etcd\) is unavailable: 14 UNAVAILABLE/);

  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED' });
  const redis = redisUnavailable(refused, 'the provisioning queue is unavailable') as AetherError;
  assert.deepEqual([redis.status, redis.code, redis.cause], [503, 'queue_unavailable', refused]);
});
