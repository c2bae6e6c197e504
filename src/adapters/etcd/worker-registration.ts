/**
 * A worker's presence in etcd: its `/workers/{id}` key and the routes of its instances, all on one
 * lease that is kept alive, so that a worker that dies (kill -9, host lost) disappears from every
 * gateway within the lease TTL.
 *
 * What should be registered is kept here as desired state and written to etcd again whenever it
 * may have been lost: when the lease is lost (etcd restarted after the TTL, keepalives failed for
 * too long) a new lease is granted and every key is put on it; when keepalives resume after an
 * outage, keys written or deleted meanwhile are caught up. All writes go through one queue, so a
 * catch-up can never put back an instance that was unregistered after it started.
 */
import type { Etcd3, Lease } from 'etcd3';
import type { InstanceRoute, Logger, WorkerInfo } from '../../core/ports.js';
import { errorMessage } from '../../core/errors.js';
import { asUnavailable } from './client.js';
import { instanceKey, ROUTES_PREFIX, workerKey } from './keys.js';

const REGRANT_MIN_MS = 200;
const REGRANT_MAX_MS = 2000;

export class WorkerRegistration {
  private worker?: WorkerInfo;
  private readonly routes = new Map<string, InstanceRoute>(); // by instance key
  private readonly unwritten = new Set<string>(); // deleted here, maybe still in etcd
  private lease?: Lease; // only set while granted and holding every key
  private granting?: Promise<void>;
  private behind = false; // a write failed or keepalives did: catch up when they succeed again
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    private readonly ttlS: number,
    private readonly log: Logger,
  ) {}

  /** Resolves once the worker is registered; while etcd is unreachable it keeps trying. */
  register(info: WorkerInfo): Promise<void> {
    this.worker = info;
    if (this.lease) return this.write(workerKey(info.id), info);
    return (this.granting ??= this.grant().finally(() => (this.granting = undefined)));
  }

  update(info: WorkerInfo): Promise<void> {
    this.worker = info;
    return this.write(workerKey(info.id), info);
  }

  addInstance(route: InstanceRoute): Promise<void> {
    const key = instanceKey(route.function_id, route.instance_id);
    this.routes.set(key, route);
    this.unwritten.delete(key);
    return this.write(key, route);
  }

  removeInstance(functionId: string, instanceId: string): Promise<void> {
    const key = instanceKey(functionId, instanceId);
    this.routes.delete(key);
    this.unwritten.add(key);
    return this.serial(async () => {
      try {
        await this.client.delete().key(key).exec();
        this.unwritten.delete(key);
      } catch (err) {
        this.behind = true;
        throw unavailable(err);
      }
    });
  }

  /** Deletes routes of `workerId` that this registration does not hold (a previous life's), whatever their lease. */
  removeStale(workerId: string): Promise<number> {
    return this.serial(async () => {
      try {
        const res = await this.client.getAll().prefix(ROUTES_PREFIX).exec();
        const stale = res.kvs.filter((kv) => !this.routes.has(kv.key.toString()) && routeOf(kv.value.toString())?.worker_id === workerId);
        await Promise.all(
          stale.map((kv) => this.client.if(kv.key, 'Mod', '==', kv.mod_revision).then(this.client.delete().key(kv.key)).commit()),
        );
        return stale.length;
      } catch (err) {
        throw unavailable(err);
      }
    });
  }

  /** Revokes the lease: the worker and its instances vanish from discovery at once. */
  async close(): Promise<void> {
    this.closed = true;
    const lease = this.lease;
    this.lease = undefined;
    await lease
      ?.revoke()
      .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, 'could not revoke the worker lease; it expires by itself'));
  }

  private write(key: string, value: WorkerInfo | InstanceRoute): Promise<void> {
    return this.serial(async () => {
      const lease = this.lease;
      if (!lease) throw unavailable(new Error('the worker holds no lease (registering)'));
      try {
        await lease.put(key).value(JSON.stringify(value)).exec();
      } catch (err) {
        this.behind = true;
        throw unavailable(err);
      }
    });
  }

  /** Grants a lease and puts every key on it, retrying until it works or the registration is closed. */
  private async grant(): Promise<void> {
    for (let failures = 0; !this.closed; ) {
      const lease = this.client.lease(this.ttlS);
      lease.on('lost', (err) => this.lost(lease, err));
      lease.on('keepaliveFailed', () => (this.behind = true));
      lease.on('keepaliveSucceeded', () => this.catchUp(lease));
      try {
        await lease.grant();
        await this.serial(() => this.putAll(lease));
        if (lease.revoked()) continue; // lost while the keys were being put: start over
        this.lease = lease;
        if (this.closed) await this.close();
        return;
      } catch (err) {
        lease.release();
        if (failures === 0) this.log.warn({ err: errorMessage(err) }, 'cannot register the worker in etcd, retrying');
        await sleep(Math.min(REGRANT_MAX_MS, REGRANT_MIN_MS * 2 ** failures++));
      }
    }
  }

  private lost(lease: Lease, err: Error): void {
    if (lease !== this.lease || this.closed) return;
    this.lease = undefined;
    this.log.warn({ err: err.message }, 'worker lease lost, registering again');
    this.granting ??= this.grant().finally(() => (this.granting = undefined));
  }

  /** After an outage that the lease survived: writes what changed meanwhile. */
  private catchUp(lease: Lease): void {
    if (!this.behind || lease !== this.lease) return;
    this.behind = false;
    this.serial(() => this.putAll(lease)).catch((err: unknown) => {
      this.behind = true;
      this.log.warn({ err: errorMessage(err) }, 'could not bring the worker registration up to date');
    });
  }

  private async putAll(lease: Lease): Promise<void> {
    const puts: [string, WorkerInfo | InstanceRoute][] = [...this.routes];
    if (this.worker) puts.push([workerKey(this.worker.id), this.worker]);
    await Promise.all([
      ...puts.map(([key, value]) => lease.put(key).value(JSON.stringify(value)).exec()),
      ...[...this.unwritten].map((key) =>
        this.client
          .delete()
          .key(key)
          .exec()
          .then(() => this.unwritten.delete(key)),
      ),
    ]);
  }

  /** Runs etcd writes one at a time, in call order. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    const result = this.queue.then(op);
    this.queue = result.catch(() => {});
    return result;
  }
}

function routeOf(raw: string): InstanceRoute | undefined {
  try {
    return JSON.parse(raw) as InstanceRoute;
  } catch {
    return undefined;
  }
}

const unavailable = (err: unknown) => asUnavailable(err, 'discovery', 'discovery_unavailable');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref());
