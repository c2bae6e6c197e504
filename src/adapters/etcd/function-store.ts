/**
 * Function metadata in etcd, shared by every gateway and worker: `/aether/functions/{id}` holds the
 * record, `/aether/names/{name}` its id. Each write is one transaction that checks the name key,
 * so a name stays unique across the cluster and a rename frees the old name in the same step.
 * A record's versions (`/aether/versions/{id}/{n}`) are written in the transaction that makes them;
 * aliases live under `/aether/aliases/{id}/{name}`.
 *
 * Reads come from a watch-fed copy in memory: invocations keep being routed while etcd is down
 * (writes then fail fast with a 503), and the copy is relisted when etcd comes back.
 */
import type { Etcd3, IDeleteRangeResponse, ITxnResponse } from 'etcd3';
import { conflict, notFound } from '../../core/errors.js';
import { storedRecord } from '../../core/function-spec.js';
import type { FunctionStore, Logger } from '../../core/ports.js';
import type { FunctionRecord } from '../../core/types.js';
import { asUnavailable, connectEtcd, silentLogger } from './client.js';
import type { AliasRecord } from '../../core/types.js';
import { ALIASES_PREFIX, aliasKey, FUNCTIONS_PREFIX, functionKey, nameKey, VERSIONS_PREFIX, versionKey } from './keys.js';
import { Listeners } from './listeners.js';
import { PrefixMirror } from './prefix-mirror.js';

export type FunctionChange = { type: 'put'; fn: FunctionRecord } | { type: 'delete'; id: string };

/** How long a read waits for the very first load before answering 503 (a gateway started while etcd is down). */
const FIRST_LOAD_WAIT_MS = 3000;
/** Optimistic writes retry this often when the record changed between their read and their transaction. */
const WRITE_ATTEMPTS = 5;

export class EtcdFunctionStore implements FunctionStore {
  private readonly client: Etcd3;
  private readonly mirrorClients: [Etcd3, Etcd3];
  private readonly mirror: PrefixMirror<FunctionRecord>;
  private readonly versionMirror: PrefixMirror<FunctionRecord>;
  private readonly aliasMirror: PrefixMirror<AliasRecord>;
  private readonly idByName = new Map<string, string>();
  private readonly listeners: Listeners<FunctionChange>;

  constructor(endpoints: string | string[], opts: { log?: Logger } = {}) {
    const log = opts.log ?? silentLogger;
    this.client = connectEtcd(endpoints);
    this.listeners = new Listeners(log);
    this.mirror = new PrefixMirror(this.client, FUNCTIONS_PREFIX, decodeRecord, (key, fn, prev) => this.changed(key, fn, prev), log);
    // etcd3's watch manager loses track of its watchers when several on one client break and re-attach
    // together (an etcd restart) and throws from its stream: the other mirrors watch through clients of their own.
    this.mirrorClients = [connectEtcd(endpoints), connectEtcd(endpoints)];
    this.versionMirror = new PrefixMirror(this.mirrorClients[0], VERSIONS_PREFIX, decodeRecord, () => {}, log);
    this.aliasMirror = new PrefixMirror(this.mirrorClients[1], ALIASES_PREFIX, decodeAlias, () => {}, log);
  }

  /** Resolves once every function, version and alias has been loaded from etcd. */
  async ready(): Promise<void> {
    await Promise.all([this.mirror.ready(), this.versionMirror.ready(), this.aliasMirror.ready()]);
  }

  /** Called for every change, whoever made it (this process's writes included); returns an unsubscribe. */
  onChange(listener: (ev: FunctionChange) => void): () => void {
    return this.listeners.add(listener);
  }

  /** Records are frozen: they are the cache itself, shared by every caller. */
  async get(idOrName: string): Promise<FunctionRecord | undefined> {
    await this.loaded();
    const byId = this.mirror.get(functionKey(idOrName));
    if (byId) return byId;
    const id = this.idByName.get(idOrName);
    return id === undefined ? undefined : this.mirror.get(functionKey(id));
  }

  async list(): Promise<FunctionRecord[]> {
    await this.loaded();
    return [...this.mirror.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async create(fn: FunctionRecord): Promise<void> {
    const raw = JSON.stringify(fn);
    const res = await this.txn(() =>
      this.client
        .if(nameKey(fn.name), 'Create', '==', 0)
        .and(functionKey(fn.id), 'Create', '==', 0)
        .then(this.client.put(nameKey(fn.name)).value(fn.id), this.client.put(functionKey(fn.id)).value(raw))
        .else(this.client.get(nameKey(fn.name)))
        .commit(),
    );
    if (!res.succeeded) {
      throw res.responses[0]!.response_range.kvs.length > 0 ? nameTaken(fn.name) : conflict(`a function with id ${fn.id} already exists`);
    }
    this.applied(functionKey(fn.id), raw, res);
  }

  async update(fn: FunctionRecord): Promise<void> {
    const raw = JSON.stringify(fn);
    for (let attempt = 0; attempt < WRITE_ATTEMPTS; attempt++) {
      // Usually one round trip: the name key points at this function, so the stored record has
      // this name too and overwriting it (last writer wins) keeps names consistent.
      const kept = await this.txn(() =>
        this.client
          .if(nameKey(fn.name), 'Value', '==', fn.id)
          .then(this.client.put(functionKey(fn.id)).value(raw), ...this.versionPut(fn, raw))
          .commit(),
      );
      if (kept.succeeded) return this.appliedUpdate(fn, raw, kept);
      // A rename: move the name key along, provided nobody changed the record since it was read.
      const current = await this.read(fn.id);
      if (!current) throw notFound(`no function ${fn.id}`);
      const moved = await this.txn(() =>
        this.client
          .if(functionKey(fn.id), 'Mod', '==', current.modRevision)
          .and(nameKey(fn.name), 'Create', '==', 0)
          .then(
            this.client.put(functionKey(fn.id)).value(raw),
            this.client.delete().key(nameKey(current.fn.name)),
            this.client.put(nameKey(fn.name)).value(fn.id),
            ...this.versionPut(fn, raw),
          )
          .else(this.client.get(nameKey(fn.name)))
          .commit(),
      );
      if (moved.succeeded) return this.appliedUpdate(fn, raw, moved);
      const owner = moved.responses[0]!.response_range.kvs[0]?.value.toString();
      if (owner !== undefined && owner !== fn.id) throw nameTaken(fn.name);
    }
    throw concurrentChange(fn.id);
  }

  async delete(id: string): Promise<boolean> {
    for (let attempt = 0; attempt < WRITE_ATTEMPTS; attempt++) {
      const current = await this.read(id);
      if (!current) return false;
      const res = await this.txn(() =>
        this.client
          .if(functionKey(id), 'Mod', '==', current.modRevision)
          .then(
            this.client.delete().key(functionKey(id)),
            this.client.delete().key(nameKey(current.fn.name)),
            this.client.delete().prefix(`${VERSIONS_PREFIX}${id}/`),
            this.client.delete().prefix(`${ALIASES_PREFIX}${id}/`),
          )
          .commit(),
      );
      if (res.succeeded) {
        const rev = Number(res.header.revision);
        for (const v of this.versionsOf(id)) this.versionMirror.applyLocal(versionKey(id, v.version), undefined, rev);
        for (const a of this.aliasesOf(id)) this.aliasMirror.applyLocal(aliasKey(id, a.name), undefined, rev);
        this.applied(functionKey(id), undefined, res);
        return true;
      }
    }
    throw concurrentChange(id);
  }

  async version(functionId: string, version: number): Promise<FunctionRecord | undefined> {
    await this.loaded();
    return this.versionMirror.get(versionKey(functionId, version));
  }

  async versions(functionId: string): Promise<FunctionRecord[]> {
    await this.loaded();
    return this.versionsOf(functionId).sort((a, b) => b.version - a.version);
  }

  async removeVersions(functionId: string, versions: number[]): Promise<void> {
    if (versions.length === 0) return;
    const keys = versions.map((v) => versionKey(functionId, v));
    const res = await this.txn(() =>
      this.client
        .if(functionKey(functionId), 'Create', '>', 0)
        .then(...keys.map((k) => this.client.delete().key(k)))
        .commit(),
    );
    for (const k of keys) this.versionMirror.applyLocal(k, undefined, Number(res.header.revision));
  }

  async codeInUse(hash: string): Promise<boolean> {
    await this.loaded();
    const runs = (fn: FunctionRecord) => fn.code_hash === hash;
    return [...this.mirror.values()].some(runs) || [...this.versionMirror.values()].some(runs);
  }

  async alias(functionId: string, name: string): Promise<AliasRecord | undefined> {
    await this.loaded();
    return this.aliasMirror.get(aliasKey(functionId, name));
  }

  async aliases(functionId: string): Promise<AliasRecord[]> {
    await this.loaded();
    return this.aliasesOf(functionId).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Only while the function exists: an alias never outlives it. */
  async putAlias(alias: AliasRecord): Promise<void> {
    const key = aliasKey(alias.function_id, alias.name);
    const raw = JSON.stringify(alias);
    const res = await this.txn(() =>
      this.client.if(functionKey(alias.function_id), 'Create', '>', 0).then(this.client.put(key).value(raw)).commit(),
    );
    if (!res.succeeded) throw notFound(`no function ${alias.function_id}`);
    this.aliasMirror.applyLocal(key, raw, Number(res.header.revision));
  }

  async deleteAlias(functionId: string, name: string): Promise<boolean> {
    const key = aliasKey(functionId, name);
    let res: IDeleteRangeResponse;
    try {
      res = await this.client.delete().key(key).exec();
    } catch (err) {
      throw storeUnavailable(err);
    }
    this.aliasMirror.applyLocal(key, undefined, Number(res.header.revision));
    return Number(res.deleted) > 0;
  }

  close(): void {
    this.mirror.close();
    this.versionMirror.close();
    this.aliasMirror.close();
    this.listeners.clear();
    this.client.close();
    for (const client of this.mirrorClients) client.close();
  }

  /** The stored record and its revision, straight from etcd (the cache may lag behind other writers). */
  private async read(id: string): Promise<{ fn: FunctionRecord; modRevision: string } | undefined> {
    try {
      const res = await this.client.get(functionKey(id)).exec();
      const kv = res.kvs[0];
      return kv && { fn: storedRecord(kv.value.toString()), modRevision: kv.mod_revision };
    } catch (err) {
      throw storeUnavailable(err);
    }
  }

  private async txn(run: () => Promise<ITxnResponse>): Promise<ITxnResponse> {
    try {
      return await run();
    } catch (err) {
      throw storeUnavailable(err);
    }
  }

  /** The version is written with the record that makes it (immutable: never rewritten by a later write). */
  private versionPut(fn: FunctionRecord, raw: string) {
    return fn.version >= 1 ? [this.client.put(versionKey(fn.id, fn.version)).value(raw)] : [];
  }

  private appliedUpdate(fn: FunctionRecord, raw: string, res: ITxnResponse): void {
    if (fn.version >= 1) this.versionMirror.applyLocal(versionKey(fn.id, fn.version), raw, Number(res.header.revision));
    this.applied(functionKey(fn.id), raw, res);
  }

  private versionsOf(functionId: string): FunctionRecord[] {
    return [...this.versionMirror.values()].filter((v) => v.id === functionId);
  }

  private aliasesOf(functionId: string): AliasRecord[] {
    return [...this.aliasMirror.values()].filter((a) => a.function_id === functionId);
  }

  /** Read-your-writes: the cache shows an acknowledged write before the watch brings it. */
  private applied(key: string, raw: string | undefined, res: ITxnResponse): void {
    this.mirror.applyLocal(key, raw, Number(res.header.revision));
  }

  private async loaded(): Promise<void> {
    const mirrors = [this.mirror, this.versionMirror, this.aliasMirror];
    const loaded = await Promise.all(mirrors.map((m) => m.isLoaded(FIRST_LOAD_WAIT_MS)));
    if (!loaded.every(Boolean)) throw storeUnavailable(new Error('functions not loaded yet'));
  }

  private changed(key: string, fn: FunctionRecord | undefined, prev: FunctionRecord | undefined): void {
    if (prev && prev.name !== fn?.name && this.idByName.get(prev.name) === prev.id) this.idByName.delete(prev.name);
    if (fn) this.idByName.set(fn.name, fn.id);
    this.listeners.emit(fn ? { type: 'put', fn } : { type: 'delete', id: key.slice(FUNCTIONS_PREFIX.length) });
  }
}

function decodeRecord(_key: string, raw: string): FunctionRecord | undefined {
  const fn = storedRecord(raw);
  if (typeof fn?.id !== 'string' || typeof fn.name !== 'string') return undefined;
  Object.freeze(fn.env_vars);
  return Object.freeze(fn);
}

function decodeAlias(_key: string, raw: string): AliasRecord | undefined {
  const alias = JSON.parse(raw) as AliasRecord;
  if (typeof alias?.function_id !== 'string' || typeof alias.name !== 'string') return undefined;
  return Object.freeze(alias);
}

const nameTaken = (name: string) => conflict(`a function named ${name} already exists`);
const concurrentChange = (id: string) => conflict(`function ${id} is being changed concurrently, try again`);
const storeUnavailable = (err: unknown) => asUnavailable(err, 'the function store', 'store_unavailable');
