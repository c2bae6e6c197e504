/**
 * Cluster discovery in etcd. Workers publish themselves (`/workers/{id}`) and their instances
 * (`/functions/{fnId}/instances/{instanceId}`) on a kept-alive lease; gateways hold a watch-fed
 * copy of both and route from memory, never polling etcd.
 */
import type { Etcd3 } from 'etcd3';
import { timedOut } from '../../core/errors.js';
import type { InstanceRoute, Logger, RouteDirectory, WorkerInfo } from '../../core/ports.js';
import { connectEtcd, silentLogger } from './client.js';
import { instanceKey, ROUTES_PREFIX, WORKERS_PREFIX, workerKey } from './keys.js';
import { Listeners } from './listeners.js';
import { PrefixMirror } from './prefix-mirror.js';
import { WorkerRegistration } from './worker-registration.js';

export type DiscoveryChange =
  | { type: 'worker_up'; worker: WorkerInfo } // registered or updated
  | { type: 'worker_down'; worker: WorkerInfo } // last known info
  | { type: 'instance_up'; route: InstanceRoute }
  | { type: 'instance_down'; route: InstanceRoute };

export interface DiscoveryOptions {
  /** TTL of a worker's lease: how long a dead worker stays listed at most. */
  leaseTtlS?: number;
  log?: Logger;
}

export class EtcdDiscovery implements RouteDirectory {
  private readonly client: Etcd3;
  private readonly registration: WorkerRegistration;
  private readonly workerMirror: PrefixMirror<WorkerInfo>;
  private readonly routeMirror: PrefixMirror<InstanceRoute>;
  private readonly routesByFunction = new Map<string, Map<string, InstanceRoute>>();
  private readonly listeners: Listeners<DiscoveryChange>;

  constructor(endpoints: string | string[], opts: DiscoveryOptions = {}) {
    const log = opts.log ?? silentLogger;
    this.client = connectEtcd(endpoints);
    this.listeners = new Listeners(log);
    this.registration = new WorkerRegistration(this.client, opts.leaseTtlS ?? 5, log);
    this.workerMirror = new PrefixMirror(
      this.client,
      WORKERS_PREFIX,
      decodeWorker,
      (_key, worker, prev) => this.workerChanged(worker, prev),
      log,
    );
    this.routeMirror = new PrefixMirror(
      this.client,
      ROUTES_PREFIX,
      decodeRoute,
      (_key, route, prev) => this.routeChanged(route, prev),
      log,
    );
  }

  // Worker side.

  /** Grants the lease and puts the worker on it; while etcd is unreachable this keeps trying. */
  registerWorker(info: WorkerInfo): Promise<void> {
    return this.registration.register(info);
  }

  updateWorker(info: WorkerInfo): Promise<void> {
    return this.registration.update(info);
  }

  /**
   * Publishes a route on the worker's lease. If etcd cannot be reached this rejects (503) but the
   * route stays registered and is written as soon as etcd is back; likewise for unregistering.
   */
  registerInstance(route: InstanceRoute): Promise<void> {
    return this.registration.addInstance(route);
  }

  unregisterInstance(functionId: string, instanceId: string): Promise<void> {
    return this.registration.removeInstance(functionId, instanceId);
  }

  /** For a restarted worker: deletes the routes its previous life left (any lease); returns how many. */
  removeStaleInstances(workerId: string): Promise<number> {
    return this.registration.removeStale(workerId);
  }

  // Gateway side (served from memory).

  /** Resolves once workers and routes have been loaded from etcd. */
  async ready(): Promise<void> {
    await Promise.all([this.workerMirror.ready(), this.routeMirror.ready()]);
  }

  workers(): WorkerInfo[] {
    return [...this.workerMirror.values()];
  }

  /** Whether the worker is registered right now (a lookup, not a copy of the list). */
  hasWorker(workerId: string): boolean {
    return this.workerMirror.get(workerKey(workerId)) !== undefined;
  }

  /** Routes of the function on workers that are registered right now. */
  instances(functionId: string): InstanceRoute[] {
    const routes = this.routesByFunction.get(functionId);
    if (!routes) return [];
    return [...routes.values()].filter((r) => this.hasWorker(r.worker_id));
  }

  /** `deadline` is a Date.now() timestamp; rejects with a 504 AetherError when it passes. */
  waitForInstance(functionId: string, version: number, deadline: number): Promise<InstanceRoute> {
    const find = () => this.instances(functionId).find((r) => r.version === version);
    const found = find();
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stop();
        reject(timedOut(`no instance of function ${functionId} version ${version} was registered in time`));
      }, deadline - Date.now());
      const stop = this.listeners.add((ev) => {
        // Only a route of this function, or its worker (re)appearing, can make a match appear.
        if (ev.type === 'instance_up' ? ev.route.function_id !== functionId : ev.type !== 'worker_up') return;
        const route = find();
        if (!route) return;
        clearTimeout(timer);
        stop();
        resolve(route);
      });
    });
  }

  /** Every change seen in etcd (this process's own included); returns the unsubscribe function. */
  onChange(listener: (ev: DiscoveryChange) => void): () => void {
    return this.listeners.add(listener);
  }

  /** Revokes the worker's lease, if any (its keys vanish at once), and stops watching. */
  async close(): Promise<void> {
    await this.registration.close();
    this.workerMirror.close();
    this.routeMirror.close();
    this.client.close();
  }

  private workerChanged(worker: WorkerInfo | undefined, prev: WorkerInfo | undefined): void {
    if (worker) this.listeners.emit({ type: 'worker_up', worker });
    else if (prev) this.listeners.emit({ type: 'worker_down', worker: prev });
  }

  private routeChanged(route: InstanceRoute | undefined, prev: InstanceRoute | undefined): void {
    if (prev) this.routesByFunction.get(prev.function_id)?.delete(prev.instance_id);
    if (prev && this.routesByFunction.get(prev.function_id)?.size === 0) this.routesByFunction.delete(prev.function_id);
    if (route) {
      let routes = this.routesByFunction.get(route.function_id);
      if (!routes) this.routesByFunction.set(route.function_id, (routes = new Map()));
      routes.set(route.instance_id, route);
      this.listeners.emit({ type: 'instance_up', route });
    } else if (prev) {
      this.listeners.emit({ type: 'instance_down', route: prev });
    }
  }
}

function decodeWorker(key: string, raw: string): WorkerInfo | undefined {
  const worker = JSON.parse(raw) as WorkerInfo;
  return key === workerKey(worker?.id) && typeof worker.url === 'string' ? Object.freeze(worker) : undefined;
}

/** A route must sit under the key its own ids name (anything else under `/functions/` is not a route). */
function decodeRoute(key: string, raw: string): InstanceRoute | undefined {
  const route = JSON.parse(raw) as InstanceRoute;
  return key === instanceKey(route?.function_id, route?.instance_id) && typeof route.worker_id === 'string'
    ? Object.freeze(route)
    : undefined;
}
