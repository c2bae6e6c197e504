/**
 * The narrow interfaces the core depends on. Adapters (SQLite, local files, bubblewrap, gVisor,
 * later etcd/Redis/S3/QEMU/Firecracker) implement them; the core never imports an adapter.
 */
import type { Socket } from 'node:net';
import type { InvocationOutcome } from './invocation-outcome.js';
import type { InvocationQuery } from './invocations.js';
import type { LogEntry, LogFilter, LogPage, LogQuery, LogLine } from './logs.js';
import type {
  AliasRecord,
  AsyncEvent,
  DeadLetter,
  EventFormat,
  FunctionRecord,
  InstanceInfo,
  InvocationRecord,
  StartMode,
} from './types.js';

/**
 * Async so that shared stores (etcd) fit as well as the embedded one (SQLite). Besides the current
 * record, a function has its versions (immutable records, see core/versions.ts) and aliases.
 */
export interface FunctionStore {
  create(fn: FunctionRecord): Promise<void>; // rejects with conflict when the name is taken
  get(idOrName: string): Promise<FunctionRecord | undefined>;
  list(): Promise<FunctionRecord[]>;
  /** Also stores the record as its version `fn.version` (from 1 on), in the same transaction. Rejects with conflict when a new name is taken. */
  update(fn: FunctionRecord): Promise<void>;
  /** The function with its versions and aliases. */
  delete(id: string): Promise<boolean>;
  version(functionId: string, version: number): Promise<FunctionRecord | undefined>;
  /** Newest first. */
  versions(functionId: string): Promise<FunctionRecord[]>;
  removeVersions(functionId: string, versions: number[]): Promise<void>;
  /** Whether a function's record or a stored version runs this code. */
  codeInUse(hash: string): Promise<boolean>;
  alias(functionId: string, name: string): Promise<AliasRecord | undefined>;
  /** By name. */
  aliases(functionId: string): Promise<AliasRecord[]>;
  putAlias(alias: AliasRecord): Promise<void>;
  deleteAlias(functionId: string, name: string): Promise<boolean>;
}

export interface InvocationLog {
  /** Fire and forget: recording must never slow down or fail an invocation. */
  record(inv: InvocationRecord): void;
  /** Newest first (by id, i.e. by start time), filtered and paged as the query says. */
  query(functionId: string, q: InvocationQuery): Promise<InvocationRecord[]>;
  /** Drops a deleted function's records (fire and forget too). */
  forget(functionId: string): void;
}

/** An event the queue handed to one dispatcher; `receipt` is the queue's own handle on it. */
export interface TakenEvent {
  event: AsyncEvent;
  receipt: string;
}

/**
 * Async invocations waiting to run, running, and dead-lettered (single node: SQLite; cluster: Redis
 * Streams). An event taken and not filed (done, retry, deadLetter) runs again after its taker died.
 */
export interface AsyncQueue {
  /** Resolves once the event is durable. */
  enqueue(event: AsyncEvent): Promise<void>;
  /** Events due at `now`, at most `room(functionId)` of each function (that many more may run here now); never waits. */
  take(room: (functionId: string) => number, now: number): Promise<TakenEvent[]>;
  /** The attempt succeeded (or the function is gone): the event leaves the queue. */
  done(taken: TakenEvent): Promise<void>;
  /** The event (its attempts and last error updated) runs again from `event.due_at`. */
  retry(taken: TakenEvent, event: AsyncEvent): Promise<void>;
  /** The event leaves the queue for its function's dead-letter list, in one step. */
  deadLetter(taken: TakenEvent, letter: DeadLetter): Promise<void>;
  /** Newest failure first. */
  deadLetters(functionId: string, limit: number): Promise<DeadLetter[]>;
  /** Queues one dead letter (or all) again as new (redriven in async-invocations.ts); how many. */
  redrive(functionId: string, eventId: string | undefined, now: number): Promise<number>;
  removeDeadLetters(functionId: string, eventId: string | undefined): Promise<number>;
  /** A deleted function's queued events and dead letters go. */
  forget(functionId: string): Promise<void>;
}

/** Where function log lines go (single node: SQLite; cluster workers: Redis Streams). */
export interface LogSink {
  /** Fire and forget, batched: writing must never slow down or fail the instance that printed. */
  write(entry: LogEntry): void;
}

/** Reading function logs back (single node: SQLite; cluster gateways: Redis Streams of every worker). */
export interface LogReader {
  /** A page of lines, oldest first (see LogPage for the cursors). */
  query(functionId: string, q: LogQuery): Promise<LogPage>;
  /** The cursor just before the first line at or after `time`; without it the current end. */
  cursorAt(functionId: string, time?: number): Promise<string>;
  /**
   * Lines after the cursor as they arrive, from every instance, in batches, until `signal` aborts.
   * Pull-based: nothing is read ahead of a slow consumer.
   */
  follow(functionId: string, filter: LogFilter, after: string, signal: AbortSignal): AsyncIterable<LogLine[]>;
  /** Forgets a deleted function's lines. */
  remove(functionId: string): Promise<void>;
}

export interface StoredCode {
  hash: string; // sha256 hex of the archive as uploaded
  size: number; // archive bytes
}

export interface CodeStore {
  /**
   * Validates and unpacks an archive stream, storing it by content hash. Nothing becomes visible
   * unless the whole archive was valid (throws a 400/413 AetherError otherwise).
   */
  put(archive: NodeJS.ReadableStream, format: ArchiveFormat, opts?: PutOptions): Promise<StoredCode>;
  /** Host path of the unpacked, read-only tree for a hash. */
  dir(hash: string): Promise<string>;
  remove(hash: string): Promise<void>;
}

export type ArchiveFormat = 'zip' | 'tar.gz';

export interface PutOptions {
  /** Reject (400 `no_entry_point`) code in which a function with this entrypoint (null: the defaults) finds no module. */
  check?: { entrypoint: string | null };
}

/** What a prepared start depends on. */
export interface StartPrep {
  codeDir: string;
  entrypoint?: string | null;
  memoryMb: number;
}

/** What a driver needs to start one instance. Nothing here is specific to a sandbox technology. */
export interface InstanceSpec {
  instanceId: string;
  functionId: string;
  codeDir: string; // host path of the function's unpacked code, mounted read-only
  entrypoint?: string; // relative to the code dir; the agent resolves the default when absent
  env: Record<string, string>;
  port: number; // where a server-mode function listens inside the instance
  memoryMb: number;
  vcpu: number;
  concurrency: number;
  /** Handler mode: the function's name (in its Lambda context) and the shape of its events; defaults: the id, apigw-v2. */
  functionName?: string;
  eventFormat?: EventFormat;
  startTimeoutMs: number;
  /** A line the instance wrote; handler mode names the invocation that wrote it. */
  onLog(stream: 'stdout' | 'stderr', line: string, requestId?: string): void;
}

export interface ExitInfo {
  code: number | null;
  signal: string | null;
  /** Human-readable cause when known, e.g. "memory limit of 128 MB exceeded". */
  reason?: string;
  oom?: boolean;
}

/** A running instance: a way to open HTTP/1.1 byte streams to it, and its lifecycle. */
export interface InstanceHandle {
  readonly id: string;
  /** Opens a new HTTP/1.1 connection to the instance (TCP, Unix socket or a dialed-in channel). */
  connect(): Promise<Socket>;
  /**
   * The instance's frame connection (a handler-mode agent's lighter channel, docs/agent-protocol.md),
   * when it has one open; otherwise invocations go over connect()'s HTTP.
   */
  frames?(): Socket | undefined;
  /**
   * Settles as soon as the instance is known to be ending (the host killed it or is stopping it, or it
   * exited), with why; nothing may be routed to it from then on. `exited` follows after teardown.
   */
  readonly condemned: Promise<string>;
  /** Settles once when the instance has ended, for whatever reason. */
  readonly exited: Promise<ExitInfo>;
  /** Stops the instance: asks politely, then kills after graceMs. Idempotent. */
  stop(graceMs?: number): Promise<void>;
  /** Where the start-up time went, where the driver measures it (the microVM drivers). */
  readonly boot?: BootPhases;
  /** It was started ahead of its function, as a generic instance of a warm pool. */
  readonly prewarmed?: boolean;
}

/** What a generic instance is started for, before its function is known. */
export interface PrestartShape {
  /** node's heap limit is set at start: such an instance can only take a function of this memory size. */
  memoryMb: number;
  startTimeoutMs: number;
}

/** A generic instance started up to the point where only the function is missing (a warm pool's). */
export interface PrestartedInstance {
  readonly memoryMb: number;
  /** Settles if it ends before or after it was assigned. */
  readonly exited: Promise<ExitInfo>;
  /**
   * Gives it its function (code, env through the single-use token, limits) and resolves once it is
   * ready, as IsolationDriver.start does. Once only: the instance serves that function until it ends.
   */
  assign(spec: InstanceSpec): Promise<InstanceHandle>;
  stop(graceMs?: number): Promise<void>;
  /** What it costs while it waits: memory charged to it now, and CPU time used so far. */
  usage(): Promise<{ memoryBytes: number; cpuMs: number }>;
}

/** A microVM's start-up, phase by phase, in ms: VMM start, guest kernel, init, agent ready. */
export interface BootPhases {
  vmm?: number;
  kernel?: number;
  init?: number;
  agent?: number;
}

export interface IsolationDriver {
  readonly name: string;
  /** Resolves when the instance is ready to take requests; rejects (and cleans up) otherwise. */
  start(spec: InstanceSpec): Promise<InstanceHandle>;
  /**
   * Prepares a function's code for faster starts of its instances (at deploy time) and says how they
   * will start; never rejects. A driver without it always starts plainly.
   */
  prepare?(spec: StartPrep): Promise<StartMode>;
  /** Drivers that can: a generic instance for a warm pool, resolved once node and the agent are up. */
  prestart?(shape: PrestartShape): Promise<PrestartedInstance>;
  /** Releases what the driver holds on the host once every instance has stopped. */
  close?(): Promise<void>;
}

/** Structured logger (pino's call shape). Secrets must never be passed in either argument. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/**
 * Where functions' instances live: the local Scheduler in single-node mode and on a worker, the
 * cluster view (discovery) on a gateway. The function service tells it about changes.
 */
export interface Placement {
  updated(fn: FunctionRecord): void;
  removed(functionId: string): Promise<void>;
  instances(functionId: string): InstanceInfo[] | Promise<InstanceInfo[]>;
  /** How the function's instances start here (absent where instances do not run: a cluster gateway). */
  startMode?(functionId: string): StartMode | undefined;
}

/** A worker as it announces itself in discovery (cluster mode). */
export interface WorkerInfo {
  id: string;
  url: string; // where gateways reach its invocation endpoint
  driver: string;
  driver_reason: string;
  cpus: number;
  memory_mb: number;
  max_instances: number;
  instances: number;
  started_at: string;
}

/** One running instance as discovery lists it: which worker has it, for which version. */
export interface InstanceRoute {
  function_id: string;
  instance_id: string;
  worker_id: string;
  worker_url: string;
  version: number;
  concurrency: number;
  started_at: string;
}

/** The gateway's read side of discovery: a cache kept current by watching, never by polling. */
export interface RouteDirectory {
  workers(): WorkerInfo[];
  instances(functionId: string): InstanceRoute[];
  /** Resolves with the first instance of that version to appear; rejects at the deadline. */
  waitForInstance(functionId: string, version: number, deadline: number): Promise<InstanceRoute>;
}

export interface ProvisionRequest {
  functionId: string;
  version: number;
  /** Which instance of the function this asks for (0 = the first): requests for one slot are deduplicated. */
  slot: number;
  targetWorker: string;
  deadline: number;
}

/** Cold starts in cluster mode go through a queue to the worker chosen for them. */
export interface ProvisionRequests {
  request(req: ProvisionRequest): Promise<{ jobId: string; enqueued: boolean }>;
  /** Withdraws a job nobody waits for any more (its cold start timed out). */
  cancel(jobId: string, req: ProvisionRequest): Promise<void>;
}

/**
 * What Aether counts about itself, for Prometheus (the adapter under adapters/metrics). Calls are
 * fire and forget and never fail. Series are per function *name* (never a path or request id), and
 * a deleted function's series go away.
 */
export interface Metrics {
  /** One invocation through this process, from the moment its function is known. */
  invocationStarted(fn: FunctionRecord): InvocationMetrics;
  /** An instance became ready after `ms`; microVMs add their boot phases. */
  coldStart(fn: FunctionRecord, ms: number, phases?: BootPhases): void;
  /** An instance failed to start. */
  startFailed(fn: FunctionRecord): void;
  /** An instance was killed for exceeding its memory limit. */
  oomKilled(fn: FunctionRecord): void;
  /** Lines of a function's output that the log pipeline dropped (rate limit, backpressure). */
  logLinesDropped(fn: FunctionRecord, lines: number): void;
  /** Cluster worker: how long a provisioning job waited in the queue before this worker took it. */
  provisionLag(ms: number): void;
}

/** One invocation's progress: waiting for an instance, then running on one (again waiting on a retry), then done. */
export interface InvocationMetrics {
  waiting(): void;
  running(): void;
  done(outcome: InvocationOutcome, ms: number): void;
}
