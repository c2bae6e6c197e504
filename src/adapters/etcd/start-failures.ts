/**
 * Start failures shared through etcd: a worker whose instance of a function failed to start writes
 * `/aether/failing/{functionId}`, and clears it once one starts. Every gateway and worker holds a
 * watch-fed copy, so all of them back off together (one probe start after the delay, not one per
 * worker) and a gateway waiting for a cold start hears at once that it failed.
 */
import type { Etcd3 } from 'etcd3';
import { errorMessage } from '../../core/errors.js';
import type { Logger } from '../../core/ports.js';
import type { SharedStartFailures, StartFailure } from '../../core/start-failures.js';
import { connectEtcd, silentLogger } from './client.js';
import { FAILING_PREFIX, failingKey } from './keys.js';
import { Listeners } from './listeners.js';
import { PrefixMirror } from './prefix-mirror.js';

export class EtcdStartFailures implements SharedStartFailures {
  private readonly client: Etcd3;
  private readonly mirror: PrefixMirror<StartFailure>;
  private readonly listeners: Listeners<StartFailure>;
  private readonly log: Logger;
  /** This process's failures not yet acknowledged by etcd: they count here at once (and while etcd is down). */
  private readonly unwritten = new Map<string, StartFailure>();

  constructor(endpoints: string | string[], opts: { log?: Logger } = {}) {
    this.log = opts.log ?? silentLogger;
    this.client = connectEtcd(endpoints);
    this.listeners = new Listeners(this.log);
    this.mirror = new PrefixMirror(
      this.client,
      FAILING_PREFIX,
      decode,
      (_key, state) => {
        if (state) this.listeners.emit(state);
      },
      this.log,
    );
  }

  get(functionId: string): StartFailure | undefined {
    return this.unwritten.get(functionId) ?? this.mirror.get(failingKey(functionId));
  }

  record(state: StartFailure): void {
    const key = failingKey(state.functionId);
    const raw = JSON.stringify(state);
    this.unwritten.set(state.functionId, state);
    this.client
      .put(key)
      .value(raw)
      .exec()
      .then(
        (res) => {
          this.mirror.applyLocal(key, raw, Number(res.header.revision));
          if (this.unwritten.get(state.functionId) === state) this.unwritten.delete(state.functionId);
        },
        (err: unknown) => this.log.warn({ function: state.functionId, err: errorMessage(err) }, 'start failure not shared (etcd)'),
      );
  }

  clear(functionId: string, version: number): void {
    const current = this.get(functionId);
    if (!current || current.version > version) return;
    this.unwritten.delete(functionId);
    const key = failingKey(functionId);
    this.client
      .delete()
      .key(key)
      .exec()
      .then(
        (res) => this.mirror.applyLocal(key, undefined, Number(res.header.revision)),
        (err: unknown) => this.log.warn({ function: functionId, err: errorMessage(err) }, 'start failure not cleared (etcd)'),
      );
  }

  onRecorded(functionId: string, listener: (state: StartFailure) => void): () => void {
    return this.listeners.add((state) => {
      if (state.functionId === functionId) listener(state);
    });
  }

  close(): void {
    this.mirror.close();
    this.listeners.clear();
    this.client.close();
  }
}

function decode(key: string, raw: string): StartFailure | undefined {
  const s = JSON.parse(raw) as StartFailure;
  const valid =
    key === failingKey(s?.functionId) &&
    typeof s.lastError === 'string' &&
    typeof s.instanceId === 'string' &&
    [s.version, s.failures, s.failingSince, s.retryAt].every((n) => typeof n === 'number' && Number.isFinite(n));
  return valid ? Object.freeze(s) : undefined;
}
