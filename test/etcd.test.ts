/**
 * The etcd adapters against a real etcd: name uniqueness under concurrent creates, renames and
 * deletes, watch-fed caches (coherence across processes' clients, serving while etcd is down,
 * resync after a gap with compacted history), and discovery (a SIGKILLed worker process vanishes
 * within its lease TTL, waitForInstance, lease re-grant after an etcd restart, stale routes).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Etcd3 } from 'etcd3';
import { AetherError } from '../src/core/errors.js';
import type { InstanceRoute, WorkerInfo } from '../src/core/ports.js';
import type { FunctionRecord } from '../src/core/types.js';
import { connectEtcd } from '../src/adapters/etcd/client.js';
import { EtcdDiscovery, type DiscoveryChange } from '../src/adapters/etcd/discovery.js';
import { EtcdFunctionStore, type FunctionChange } from '../src/adapters/etcd/function-store.js';
import { functionKey, instanceKey, nameKey, ROUTES_PREFIX, workerKey } from '../src/adapters/etcd/keys.js';
import { startServices, type Services } from './helpers/services.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

let services: Services;
let endpoint: string;
let raw: Etcd3; // for looking at (and changing) etcd behind the adapters' backs
const cleanups: (() => unknown)[] = [];

before(async () => {
  services = await startServices();
  endpoint = services.env.ETCD_ENDPOINTS!;
  raw = connectEtcd(endpoint);
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  raw.close();
  await services.stop();
});

async function store(at = endpoint): Promise<EtcdFunctionStore> {
  const s = new EtcdFunctionStore(at);
  cleanups.push(() => s.close());
  await s.ready();
  return s;
}

async function discovery(leaseTtlS = 2): Promise<EtcdDiscovery> {
  const d = new EtcdDiscovery(endpoint, { leaseTtlS });
  cleanups.push(() => d.close());
  await d.ready();
  return d;
}

function record(name: string, over: Partial<FunctionRecord> = {}): FunctionRecord {
  const now = new Date().toISOString();
  return {
    id: randomUUID(),
    name,
    runtime: 'node',
    entrypoint: null,
    memory_mb: 128,
    vcpu: 1,
    port: 3000,
    env_vars: { A: '1' },
    timeout_ms: 30_000,
    concurrency: 1,
    min_instances: 0,
    max_instances: 10,
    idle_timeout_s: 300,
    event_format: 'apigw-v2',
    max_retries: 2,
    max_event_age_s: 21_600,
    version: 1,
    code_hash: null,
    code_size: null,
    created_at: now,
    updated_at: now,
    ...over,
  };
}

function worker(id: string, over: Partial<WorkerInfo> = {}): WorkerInfo {
  return {
    id,
    url: `http://127.0.0.1:1/${id}`,
    driver: 'bwrap',
    driver_reason: 'test',
    cpus: 2,
    memory_mb: 1024,
    max_instances: 8,
    instances: 0,
    started_at: new Date().toISOString(),
    ...over,
  };
}

function route(functionId: string, instanceId: string, workerId: string, version = 1): InstanceRoute {
  return {
    function_id: functionId,
    instance_id: instanceId,
    worker_id: workerId,
    worker_url: `http://127.0.0.1:1/${workerId}`,
    version,
    concurrency: 1,
    started_at: new Date().toISOString(),
  };
}

/** Resolves with the first event that matches; fails the test after `ms`. */
function nextEvent<E>(on: (listener: (ev: E) => void) => () => void, match: (ev: E) => boolean, what: string, ms = 10_000): Promise<E> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what}`));
    }, ms);
    const off = on((ev) => {
      if (!match(ev)) return;
      clearTimeout(timer);
      off();
      resolve(ev);
    });
  });
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (
    !(await Promise.resolve()
      .then(check)
      .catch(() => false))
  ) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

const isError = (status: number, code: string, message: RegExp) => (err: unknown) =>
  err instanceof AetherError && err.status === status && err.code === code && message.test(err.message);

test('concurrent creates of one name from three clients: exactly one wins, the rest get 409', async () => {
  const stores = await Promise.all([store(), store(), store()]);
  const candidates = Array.from({ length: 9 }, () => record('contested'));
  const results = await Promise.allSettled(candidates.map((fn, i) => stores[i % 3]!.create(fn)));
  const winners = candidates.filter((_, i) => results[i]!.status === 'fulfilled');
  assert.equal(winners.length, 1);
  for (const r of results) {
    if (r.status === 'rejected')
      assert.ok(isError(409, 'conflict', /^a function named contested already exists$/)(r.reason), String(r.reason));
  }
  const stored = Object.values(await raw.getAll().prefix('/aether/functions/').json()) as FunctionRecord[];
  assert.deepEqual(
    stored.filter((f) => f.name === 'contested').map((f) => f.id),
    [winners[0]!.id],
  );
  assert.equal(await raw.get(nameKey('contested')).string(), winners[0]!.id);
  for (const s of stores) await until('every store to see the winner', async () => (await s.get('contested'))?.id === winners[0]!.id);
});

test('rename: a taken name is refused, a free one is taken and the old name freed in one step', async () => {
  const [a, b] = await Promise.all([store(), store()]);
  const alpha = record('alpha');
  await a.create(alpha);
  await a.create(record('beta'));
  await assert.rejects(
    a.update({ ...alpha, name: 'beta', version: 2 }),
    isError(409, 'conflict', /^a function named beta already exists$/),
  );
  assert.equal((await a.get('alpha'))?.version, 1);

  await a.update({ ...alpha, name: 'gamma', version: 2 });
  // Read-your-writes on the writing process, without waiting for the watch.
  assert.equal((await a.get('gamma'))?.version, 2);
  assert.equal((await a.get(alpha.id))?.name, 'gamma');
  assert.equal(await a.get('alpha'), undefined);
  assert.equal(await raw.get(nameKey('alpha')).string(), null);
  assert.equal(await raw.get(nameKey('gamma')).string(), alpha.id);
  // The old name is free for anyone at once (uniqueness is checked in etcd, not in a cache).
  const newAlpha = record('alpha');
  await b.create(newAlpha);
  await until('the renaming store to see the new alpha', async () => (await a.get('alpha'))?.id === newAlpha.id);
  assert.equal((await a.get('gamma'))?.id, alpha.id);
  await assert.rejects(a.update(record('nowhere')), isError(404, 'not_found', /no function/));
});

test('delete frees the name and reaches other stores through the watch; a second delete is false', async () => {
  const [a, b] = await Promise.all([store(), store()]);
  const fn = record('ephemeral');
  const seen = nextEvent<FunctionChange>(
    (l) => b.onChange(l),
    (ev) => ev.type === 'put' && ev.fn.id === fn.id,
    'the put on b',
  );
  await a.create(fn);
  assert.deepEqual(((await seen) as { fn: FunctionRecord }).fn, fn);
  const gone = nextEvent<FunctionChange>(
    (l) => b.onChange(l),
    (ev) => ev.type === 'delete' && ev.id === fn.id,
    'the delete on b',
  );
  assert.equal(await a.delete(fn.id), true);
  assert.equal(await a.get(fn.id), undefined);
  await gone;
  assert.equal(await b.get('ephemeral'), undefined);
  assert.ok(!(await b.list()).some((f) => f.id === fn.id));
  assert.equal(await raw.get(nameKey('ephemeral')).string(), null);
  assert.equal(await a.delete(fn.id), false);
  await b.create(record('ephemeral'));
});

test('cache coherence: updates made through one store show up in the other with their new version', async () => {
  const [a, b] = await Promise.all([store(), store()]);
  const fn = record('coherent');
  await a.create(fn);
  const next = { ...fn, version: 2, code_hash: 'abc', code_size: 10, env_vars: { A: '2' } };
  const updated = nextEvent<FunctionChange>(
    (l) => b.onChange(l),
    (ev) => ev.type === 'put' && ev.fn.id === fn.id && ev.fn.version === 2,
    'version 2 on b',
  );
  await a.update(next);
  await updated;
  assert.deepEqual(await b.get('coherent'), next);
  assert.deepEqual(
    (await b.list()).find((f) => f.id === fn.id),
    next,
  );
  // Cached records are shared, so they are frozen rather than silently corruptible.
  const cached = (await b.get('coherent'))!;
  assert.throws(() => Object.assign(cached, { version: 3 }), TypeError);
});

/** A TCP proxy in front of etcd whose link can be cut: one client loses etcd while others keep it. */
async function cuttableLink(target: number): Promise<{ url: string; cut(): void; restore(): void; close(): void }> {
  let open = true;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((down) => {
    if (!open) return down.destroy();
    const up = net.connect(target, '127.0.0.1');
    for (const s of [down, up]) {
      sockets.add(s);
      s.on('error', () => {}).on('close', () => {
        sockets.delete(s);
        down.destroy();
        up.destroy();
      });
    }
    down.pipe(up).pipe(down);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  const cut = () => {
    open = false;
    for (const s of sockets) s.destroy();
  };
  return {
    url: `http://127.0.0.1:${port}`,
    cut,
    restore: () => (open = true),
    close: () => {
      cut();
      server.close();
    },
  };
}

test('etcd down: reads are served from the cache, writes fail fast with 503; changes made during the gap arrive after', async () => {
  const link = await cuttableLink(Number(new URL(endpoint).port));
  cleanups.push(() => link.close());
  const a = await store(link.url);
  const keep = record('survivor');
  const doomed = record('doomed');
  await a.create(keep);
  await a.create(doomed);

  await services.etcd.stop('SIGKILL');
  try {
    assert.equal((await a.get('survivor'))?.id, keep.id);
    assert.ok((await a.list()).some((f) => f.id === doomed.id));
    for (const write of [() => a.create(record('while-down')), () => a.update({ ...keep, version: 2 }), () => a.delete(doomed.id)]) {
      const t0 = Date.now();
      await assert.rejects(write(), isError(503, 'store_unavailable', /etcd/));
      assert.ok(Date.now() - t0 < 3000, `a write took ${Date.now() - t0} ms to fail`);
    }
  } finally {
    link.cut(); // `a` stays cut off while another client changes things
    await services.etcd.start();
  }
  const other = await store();
  assert.equal(await other.delete(doomed.id), true);
  const born = record('born-in-gap');
  await other.create(born);
  // With the history compacted, the only way `a` can learn of the delete is by listing again.
  const fresh = connectEtcd(endpoint);
  cleanups.push(() => fresh.close());
  const { header } = await fresh.get('anything').exec();
  await fresh.kv.compact({ revision: header.revision, physical: true });
  await sleep(300);
  assert.equal((await a.get('doomed'))?.id, doomed.id, 'a cut-off store keeps serving what it had');

  const deleted = nextEvent<FunctionChange>(
    (l) => a.onChange(l),
    (ev) => ev.type === 'delete' && ev.id === doomed.id,
    'the gap delete on a',
    15_000,
  );
  const created = nextEvent<FunctionChange>(
    (l) => a.onChange(l),
    (ev) => ev.type === 'put' && ev.fn.id === born.id,
    'the gap create on a',
    15_000,
  );
  link.restore();
  await Promise.all([deleted, created]);
  assert.equal(await a.get('doomed'), undefined);
  assert.deepEqual(
    (await a.list()).map((f) => f.name).filter((n) => ['survivor', 'doomed', 'born-in-gap'].includes(n)),
    ['born-in-gap', 'survivor'],
  );
  await until('writes to work again', async () => {
    await a.update({ ...keep, version: 2 });
    return true;
  });
});

/** A worker in its own process: registers itself and one instance, then idles until killed. */
function workerProcess(info: WorkerInfo, r: InstanceRoute): { proc: ReturnType<typeof spawn>; registered: Promise<void> } {
  const code = `
    const { EtcdDiscovery } = await import(${JSON.stringify(pathToFileURL(path.join(root, 'src/adapters/etcd/discovery.ts')).href)});
    const d = new EtcdDiscovery(process.env.ETCD_ENDPOINTS, { leaseTtlS: 2 });
    await d.registerWorker(JSON.parse(process.env.WORKER));
    await d.registerInstance(JSON.parse(process.env.ROUTE));
    process.stdout.write('registered\\n');`;
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: root,
    env: { ...process.env, ETCD_ENDPOINTS: endpoint, WORKER: JSON.stringify(info), ROUTE: JSON.stringify(r) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  cleanups.push(() => proc.kill('SIGKILL'));
  const registered = new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', () => resolve());
    proc.once('exit', (code) => reject(new Error(`worker process exited (${code}) before registering`)));
  });
  return { proc, registered };
}

test('a SIGKILLed worker process and its instances vanish within the lease TTL, not before', async () => {
  const gw = await discovery();
  const up = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'instance_up' && ev.route.worker_id === 'w-doomed',
    'the doomed instance',
  );
  const doomed = workerProcess(worker('w-doomed'), route('fn-doomed', 'i-1', 'w-doomed'));
  await doomed.registered;
  await up;
  assert.ok(gw.workers().some((w) => w.id === 'w-doomed'));
  await sleep(2500); // longer than the TTL: keepalives hold it
  assert.deepEqual(
    gw.instances('fn-doomed').map((r) => r.instance_id),
    ['i-1'],
  );

  const down = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'worker_down' && ev.worker.id === 'w-doomed',
    'the worker to vanish',
  );
  const gone = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'instance_down' && ev.route.instance_id === 'i-1',
    'the instance to vanish',
  );
  const killedAt = Date.now();
  doomed.proc.kill('SIGKILL');
  await Promise.all([down, gone]);
  const elapsed = Date.now() - killedAt;
  assert.ok(elapsed < 2000 + 1500, `took ${elapsed} ms`);
  assert.deepEqual(gw.instances('fn-doomed'), []);
  assert.equal(await raw.get(instanceKey('fn-doomed', 'i-1')).string(), null);
});

test('waitForInstance resolves on the first matching route of a registered worker, rejects at the deadline', async () => {
  const gw = await discovery();
  const w = await discovery();
  await w.registerWorker(worker('w-wait'));
  const waiting = gw.waitForInstance('fn-wait', 3, Date.now() + 5000);
  // Neither a route on a worker that is not registered nor an older version counts.
  await raw.put(instanceKey('fn-wait', 'ghost')).value(JSON.stringify(route('fn-wait', 'ghost', 'w-nobody', 3)));
  await w.registerInstance(route('fn-wait', 'old', 'w-wait', 2));
  await w.registerInstance(route('fn-wait', 'new', 'w-wait', 3));
  assert.equal((await waiting).instance_id, 'new');
  assert.equal((await gw.waitForInstance('fn-wait', 3, Date.now() + 1000)).instance_id, 'new');
  assert.deepEqual(
    gw
      .instances('fn-wait')
      .map((r) => r.instance_id)
      .sort(),
    ['new', 'old'],
  );

  const t0 = Date.now();
  await assert.rejects(gw.waitForInstance('fn-wait', 4, t0 + 700), isError(504, 'timeout', /fn-wait version 4/));
  const waited = Date.now() - t0;
  assert.ok(waited >= 690 && waited < 1200, `rejected after ${waited} ms`);
});

async function leaseOf(key: string): Promise<string | undefined> {
  return (await raw.get(key).exec()).kvs[0]?.lease;
}

test('a revoked lease is re-granted with the worker and all its instances on it', async () => {
  const gw = await discovery();
  const w = await discovery(1);
  await w.registerWorker(worker('w-revoked'));
  await w.registerInstance(route('fn-revoked', 'i-1', 'w-revoked'));
  const first = await leaseOf(workerKey('w-revoked'));
  assert.ok(first && first !== '0');
  const down = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'worker_down' && ev.worker.id === 'w-revoked',
    'the revocation',
  );
  const back = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'instance_up' && ev.route.instance_id === 'i-1',
    'the re-registration',
    5000,
  );
  await raw.leaseClient.leaseRevoke({ ID: first });
  await down;
  await back;
  const second = await leaseOf(workerKey('w-revoked'));
  assert.notEqual(second, first);
  assert.equal(await leaseOf(instanceKey('fn-revoked', 'i-1')), second);
  assert.ok(gw.workers().some((x) => x.id === 'w-revoked'));
});

test('after an etcd restart longer than the TTL, a new lease holds the worker and its instances', async () => {
  const gw = await discovery();
  const w = await discovery(1);
  await w.registerWorker(worker('w-phoenix'));
  await w.registerInstance(route('fn-phoenix', 'i-1', 'w-phoenix'));
  const firstLease = await leaseOf(workerKey('w-phoenix'));
  await services.etcd.stop('SIGKILL');
  await sleep(2500); // the client gives the lease up after 2 TTLs without keepalive
  // Registered while etcd is down: rejected for now, written once the worker is registered again.
  await assert.rejects(w.registerInstance(route('fn-phoenix', 'i-2', 'w-phoenix')), isError(503, 'discovery_unavailable', /etcd/));
  await services.etcd.start();
  const fresh = connectEtcd(endpoint);
  cleanups.push(() => fresh.close());
  await until('the worker on a new lease', async () => {
    const [wl, i1, i2] = await Promise.all(
      [workerKey('w-phoenix'), instanceKey('fn-phoenix', 'i-1'), instanceKey('fn-phoenix', 'i-2')].map(
        async (k) => (await fresh.get(k).exec()).kvs[0]?.lease,
      ),
    );
    return wl !== undefined && wl !== firstLease && i1 === wl && i2 === wl;
  });
  await sleep(2500); // the old lease, revived by the restart for a TTL, has expired by now
  assert.ok((await fresh.get(workerKey('w-phoenix')).string()) !== null);
  await until('the gateway to list both instances', () => gw.instances('fn-phoenix').length === 2);
});

test('changes a worker makes during a short etcd outage are written once it is back, on the same lease', async () => {
  const w = await discovery(5);
  await w.registerWorker(worker('w-steady'));
  await w.registerInstance(route('fn-steady', 'leaving', 'w-steady'));
  const lease = await leaseOf(workerKey('w-steady'));
  await services.etcd.stop('SIGKILL');
  try {
    await assert.rejects(w.registerInstance(route('fn-steady', 'arriving', 'w-steady')), isError(503, 'discovery_unavailable', /etcd/));
    await assert.rejects(w.unregisterInstance('fn-steady', 'leaving'), isError(503, 'discovery_unavailable', /etcd/));
  } finally {
    await services.etcd.start();
  }
  const fresh = connectEtcd(endpoint);
  cleanups.push(() => fresh.close());
  await until('the outage changes to be written', async () => {
    const keys = await fresh.getAll().prefix(`${ROUTES_PREFIX}fn-steady/`).keys();
    return keys.length === 1 && keys[0] === instanceKey('fn-steady', 'arriving');
  });
  assert.equal((await fresh.get(instanceKey('fn-steady', 'arriving')).exec()).kvs[0]!.lease, lease);
});

test('removeStaleInstances deletes the routes of a previous life whatever their lease, and nothing else', async () => {
  const w = await discovery();
  await w.registerWorker(worker('w-restarted'));
  await w.registerInstance(route('fn-stale', 'current', 'w-restarted'));
  const oldLease = raw.lease(30);
  cleanups.push(() => oldLease.revoke());
  await oldLease.put(instanceKey('fn-stale', 'old-1')).value(JSON.stringify(route('fn-stale', 'old-1', 'w-restarted')));
  await raw.put(instanceKey('fn-other', 'old-2')).value(JSON.stringify(route('fn-other', 'old-2', 'w-restarted')));
  await raw.put(instanceKey('fn-stale', 'theirs')).value(JSON.stringify(route('fn-stale', 'theirs', 'w-else')));
  assert.equal(await w.removeStaleInstances('w-restarted'), 2);
  const keys = await raw.getAll().prefix(ROUTES_PREFIX).keys();
  assert.ok(keys.includes(instanceKey('fn-stale', 'current')));
  assert.ok(keys.includes(instanceKey('fn-stale', 'theirs')));
  assert.ok(!keys.includes(instanceKey('fn-stale', 'old-1')) && !keys.includes(instanceKey('fn-other', 'old-2')));
});

test('updateWorker and unregisterInstance reach gateways; close() revokes the lease at once', async () => {
  const gw = await discovery();
  const w = new EtcdDiscovery(endpoint); // default 5 s TTL
  await w.registerWorker(worker('w-polite'));
  await w.registerInstance(route('fn-polite', 'i-1', 'w-polite'));
  const updated = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'worker_up' && ev.worker.id === 'w-polite' && ev.worker.instances === 1,
    'the update',
  );
  await w.updateWorker(worker('w-polite', { instances: 1 }));
  await updated;
  const removed = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'instance_down' && ev.route.instance_id === 'i-1',
    'the unregistration',
  );
  await w.unregisterInstance('fn-polite', 'i-1');
  await removed;
  assert.deepEqual(gw.instances('fn-polite'), []);

  const left = nextEvent<DiscoveryChange>(
    (l) => gw.onChange(l),
    (ev) => ev.type === 'worker_down' && ev.worker.id === 'w-polite',
    'the worker to leave',
    1000,
  );
  await w.close();
  await left;
  assert.ok(!gw.workers().some((x) => x.id === 'w-polite'));
});

test('store keys follow the documented layout', async () => {
  const s = await store();
  const fn = record('layout');
  await s.create(fn);
  assert.deepEqual(await raw.get(functionKey(fn.id)).json(), fn);
  assert.equal(await raw.get(nameKey('layout')).string(), fn.id);
});
