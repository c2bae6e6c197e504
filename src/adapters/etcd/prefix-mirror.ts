/**
 * An in-memory copy of every key under one etcd prefix, kept current by a watch, so that readers
 * never wait for etcd and keep being served while it is down.
 *
 * Loading is a prefix get followed by a watch from the revision after it. When the watch breaks
 * (etcd down or restarted, history compacted) the watch is dropped and the whole prefix is listed
 * again: changes made during the gap, deletions included, are then reflected, whatever etcd still
 * has in its history.
 *
 * Every fact about a key carries the etcd revision it was true at, and an older fact never
 * overwrites a newer one. That lets writers apply their own successful writes at once
 * (read-your-writes) without a late watch event or a list taken just before undoing them.
 */
import type { Etcd3, IKeyValue, IWatchResponse, Watcher } from 'etcd3';
import type { Logger } from '../../core/ports.js';
import { errorMessage } from '../../core/errors.js';

interface Entry<T> {
  value: T | undefined; // undefined: deleted (a tombstone, kept until the mirror has caught up with it)
  raw: string | undefined;
  rev: number;
}

export type MirrorListener<T> = (key: string, value: T | undefined, previous: T | undefined) => void;

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;

export class PrefixMirror<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly tombstones = new Set<string>();
  /** The revision up to which this mirror has seen every change (from a list or the watch). */
  private seen = 0;
  private watcher?: Watcher;
  private stopWatching?: () => void;
  private retryTimer?: NodeJS.Timeout;
  private closed = false;
  private loadedOnce = false;
  private readonly loaded: Promise<void>;
  private markLoaded!: () => void;

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    /** Parses a stored value; undefined (or a throw) makes the key count as absent. */
    private readonly decode: (key: string, raw: string) => T | undefined,
    private readonly onChange: MirrorListener<T>,
    private readonly log: Logger,
  ) {
    this.loaded = new Promise((resolve) => (this.markLoaded = resolve));
    void this.sync(0);
  }

  /** Resolves once the prefix has been listed for the first time. */
  ready(): Promise<void> {
    return this.loaded;
  }

  /** Whether the first list is done, waiting at most `waitMs` for it. */
  async isLoaded(waitMs: number): Promise<boolean> {
    if (this.loadedOnce) return true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.loaded, new Promise((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
    return this.loadedOnce;
  }

  get(key: string): T | undefined {
    return this.entries.get(key)?.value;
  }

  *values(): IterableIterator<T> {
    for (const e of this.entries.values()) if (e.value !== undefined) yield e.value;
  }

  /** Records a write this process made and etcd acknowledged at `rev` (raw undefined: a delete). */
  applyLocal(key: string, raw: string | undefined, rev: number): void {
    // At or below `seen` the mirror already shows this write or something newer.
    if (rev > this.seen) this.apply(key, raw, rev);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.stopWatching?.();
  }

  /** Lists the prefix, then follows it with a watch until that breaks; retries with backoff. */
  private async sync(failures: number): Promise<void> {
    if (this.closed) return;
    try {
      const res = await this.client.getAll().prefix(this.prefix).exec();
      if (this.closed) return;
      const rev = Number(res.header.revision);
      this.applyList(res.kvs, rev);
      if (!this.loadedOnce) {
        this.loadedOnce = true;
        this.markLoaded();
      } else {
        this.log.info({ prefix: this.prefix, revision: rev }, 'etcd mirror resynchronised');
      }
      this.follow(rev + 1);
    } catch (err) {
      if (failures === 0) this.log.warn({ prefix: this.prefix, err: errorMessage(err) }, 'etcd unreachable, serving the cached copy');
      this.retry(failures + 1);
    }
  }

  private retry(failures: number): void {
    if (this.closed) return;
    const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** failures);
    this.retryTimer = setTimeout(() => void this.sync(failures), delay);
    this.retryTimer.unref();
  }

  private follow(fromRevision: number): void {
    const w = this.client.watch().prefix(this.prefix).startRevision(String(fromRevision)).watcher();
    this.watcher = w;
    const stop = () => {
      if (this.watcher !== w) return false;
      this.watcher = undefined;
      this.stopWatching = undefined;
      w.removeAllListeners();
      w.on('error', () => {}); // the client may still report the cancellation on it
      w.cancel().catch(() => {});
      return true;
    };
    const broken = (err: Error) => {
      if (!stop()) return;
      this.log.warn({ prefix: this.prefix, err: err.message }, 'etcd watch broken, serving the cached copy until etcd is back');
      this.retry(1);
    };
    this.stopWatching = stop;
    w.on('data', (res: IWatchResponse) => {
      if (this.watcher === w) this.applyWatch(res);
    });
    w.on('disconnected', broken);
    w.on('error', broken);
  }

  private applyWatch(res: IWatchResponse): void {
    let rev = Number(res.header.revision); // a progress notification: everything up to it was sent
    for (const ev of res.events) {
      // While catching up, the header is etcd's current revision, not how far the events go.
      rev = Number(ev.kv.mod_revision);
      const deleted = String(ev.type).toLowerCase() === 'delete';
      this.apply(ev.kv.key.toString(), deleted ? undefined : ev.kv.value.toString(), rev);
    }
    this.caughtUp(rev);
  }

  private applyList(kvs: IKeyValue[], rev: number): void {
    const listed = new Set<string>();
    for (const kv of kvs) {
      const key = kv.key.toString();
      listed.add(key);
      this.apply(key, kv.value.toString(), Number(kv.mod_revision));
    }
    for (const [key, e] of this.entries) if (e.raw !== undefined && !listed.has(key)) this.apply(key, undefined, rev);
    this.caughtUp(rev);
  }

  /** Tombstones only guard against facts older than them; none can arrive once the mirror has seen their revision. */
  private caughtUp(rev: number): void {
    if (rev <= this.seen) return;
    this.seen = rev;
    for (const key of this.tombstones) {
      if (this.entries.get(key)!.rev > rev) continue;
      this.entries.delete(key);
      this.tombstones.delete(key);
    }
  }

  private apply(key: string, raw: string | undefined, rev: number): void {
    const cur = this.entries.get(key);
    if (cur && cur.rev >= rev) return;
    const previous = cur?.value;
    const value = raw === undefined ? undefined : this.parse(key, raw);
    this.entries.set(key, { value, raw, rev });
    if (raw === undefined) this.tombstones.add(key);
    else this.tombstones.delete(key);
    if (raw !== undefined && raw === cur?.raw) return;
    if (value === undefined && previous === undefined) return;
    try {
      this.onChange(key, value, previous);
    } catch (err) {
      this.log.error({ key, err: errorMessage(err) }, 'etcd mirror listener failed');
    }
  }

  private parse(key: string, raw: string): T | undefined {
    try {
      const value = this.decode(key, raw);
      if (value === undefined) this.log.warn({ key }, 'ignoring an etcd value of unexpected shape');
      return value;
    } catch {
      this.log.warn({ key }, 'ignoring an etcd value that is not valid JSON');
      return undefined;
    }
  }
}
