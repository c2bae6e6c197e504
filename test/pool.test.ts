/**
 * FunctionPool's cold starts, in process: the core is meant to be tested without sandboxes, so the
 * driver here is a stand-in (FakeDriver) whose instances are plain objects that record being stopped.
 * Sandboxed and real-server behaviour is covered by scaling.test.ts and isolation.test.ts.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { newFunction } from '../src/core/function-spec.js';
import { FunctionPool, type PoolDeps } from '../src/core/pool.js';
import type { ExitInfo, InstanceHandle, InstanceSpec, IsolationDriver, Metrics } from '../src/core/ports.js';
import { LocalStartFailures } from '../src/core/start-failures.js';

/** A stand-in instance: ready at once, never reachable, remembers whether it was stopped. */
class FakeInstance implements InstanceHandle {
  readonly exited: Promise<ExitInfo>;
  readonly condemned: Promise<string>;
  stopped = false;
  private end!: (exit: ExitInfo) => void;

  constructor(readonly id: string) {
    this.exited = new Promise((resolve) => (this.end = resolve));
    this.condemned = this.exited.then((exit) => exit.reason ?? 'ended');
  }

  connect(): Promise<Socket> {
    return Promise.reject(new Error('a fake instance takes no connections'));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.end({ code: null, signal: 'SIGTERM', reason: 'stopped' });
  }
}

class FakeDriver implements IsolationDriver {
  readonly name = 'fake';
  readonly started: FakeInstance[] = [];
  readonly specs: InstanceSpec[] = [];
  async start(spec: InstanceSpec): Promise<InstanceHandle> {
    const instance = new FakeInstance(spec.instanceId);
    this.started.push(instance);
    this.specs.push(spec);
    return instance;
  }
}

/** Metrics are not what these tests look at (metrics.test.ts scrapes a real server). */
const noMetrics: Metrics = {
  invocationStarted: () => ({ waiting() {}, running() {}, done() {} }),
  coldStart() {},
  startFailed() {},
  oomKilled() {},
  logLinesDropped() {},
  provisionLag() {},
};

interface Logged {
  level: string;
  msg?: string;
  obj: object;
}

function pool(deps: Partial<PoolDeps> & { driver: IsolationDriver }, logs: Logged[], overrides: Record<string, unknown> = {}) {
  const log = (level: string) => (obj: object, msg?: string) => void logs.push({ level, msg, obj });
  const fn = { ...newFunction({ name: 'fn', runtime: 'node', ...overrides }), version: 1, code_hash: 'abc' };
  return new FunctionPool(fn, {
    codeDir: async () => '/nonexistent',
    log: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
    settings: {
      maxQueue: 10,
      scaleDownGraceMs: 60_000,
      startTimeoutMs: 1000,
      stopGraceMs: 0,
      startBackoff: { initialMs: 1000, maxMs: 1000 },
    },
    startFailures: new LocalStartFailures(),
    metrics: noMetrics,
    onInstanceLog: () => {},
    ...deps,
  });
}

test('a throw after a successful start is not a failed start: the instance serves, and is stopped with the pool', async () => {
  const driver = new FakeDriver();
  const logs: Logged[] = [];
  const p = pool({ driver, onInstanceReady: () => assert.fail('announcing failed') }, logs);
  const lease = await p.acquire(Date.now() + 1000);
  assert.equal(lease.handle, driver.started[0], 'the request got the instance that started');
  assert.deepEqual(
    logs.filter((l) => l.msg === 'instance failed to start'),
    [],
  );
  assert.ok(
    logs.some((l) => l.level === 'error' && /announc/.test(l.msg ?? '')),
    'the hook failure is logged as what it is',
  );
  assert.deepEqual(
    p.info().map((i) => i.state),
    ['ready'],
  );
  lease.release();
  await p.close();
  assert.equal(driver.started.length, 1);
  assert.equal(driver.started[0]!.stopped, true, 'the live instance was stopped, not leaked');
});

test('min_instances: an instance started ahead of requests survives a failing hook too', async () => {
  const driver = new FakeDriver();
  const logs: Logged[] = [];
  let calls = 0;
  const p = pool(
    {
      driver,
      onInstanceReady: () => {
        calls++;
        throw new Error('no discovery yet');
      },
    },
    logs,
    { min_instances: 2, max_instances: 2 },
  );
  while (calls < 2) await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(
    p.info().map((i) => i.state),
    ['ready', 'ready'],
  );
  await p.close();
  assert.deepEqual(
    driver.started.map((i) => i.stopped),
    [true, true],
  );
});

/** A stand-in driver whose starts finish when the test says so, in order. */
class GatedDriver extends FakeDriver {
  readonly pending: Array<() => void> = [];
  override async start(spec: InstanceSpec): Promise<InstanceHandle> {
    await new Promise<void>((resolve) => this.pending.push(resolve));
    return super.start(spec);
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

test('a burst starts startsAtOnce instances, then more only as those are ready and only while requests still wait', async () => {
  const driver = new GatedDriver();
  const settings = {
    maxQueue: 10,
    scaleDownGraceMs: 60_000,
    startTimeoutMs: 1000,
    stopGraceMs: 0,
    startBackoff: { initialMs: 1000, maxMs: 1000 },
  };
  const p = pool({ driver, settings: { ...settings, startsAtOnce: 2 } }, [], { concurrency: 1, max_instances: 20 });
  const leases = Array.from({ length: 10 }, () => p.acquire(Date.now() + 5000));
  await tick();
  assert.equal(driver.pending.length, 2, 'two starts at once, not ten');
  driver.pending[0]!();
  const first = await leases[0]!;
  await tick();
  assert.equal(driver.pending.length, 3, 'one ready: its start slot goes to the queue that still waits');
  // The ready instance drains the queue (a fast function) before the others are up.
  let lease = first;
  for (const next of leases.slice(1)) {
    lease.release();
    lease = await next;
  }
  lease.release();
  driver.pending[1]!();
  driver.pending[2]!();
  await tick();
  await tick();
  assert.equal(driver.pending.length, 3, 'nothing waits any more: no further starts');
  assert.equal(driver.started.length, 3);
  await p.close();
});

test('concurrency 1: an untagged line is filed under the request in flight; framed lines and higher concurrency keep their own', async () => {
  for (const concurrency of [1, 2]) {
    const driver = new FakeDriver();
    const lines: [string, string | undefined][] = [];
    const p = pool({ driver, onInstanceLog: (_fn, _id, _stream, line, requestId) => void lines.push([line, requestId]) }, [], {
      concurrency,
    });
    const lease = await p.acquire(Date.now() + 1000, 'req-1');
    const { onLog } = driver.specs[0]!;
    onLog('stdout', 'during');
    onLog('stdout', 'framed', 'req-other');
    lease.release();
    onLog('stdout', 'after');
    const tagged = concurrency === 1 ? 'req-1' : undefined;
    assert.deepEqual(
      lines,
      [
        ['during', tagged],
        ['framed', 'req-other'],
        ['after', undefined],
      ],
      `concurrency ${concurrency}`,
    );
    await p.close();
  }
});
