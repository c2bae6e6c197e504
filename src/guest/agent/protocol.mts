/**
 * The contract between the host and the guest side of every instance: each name, path, port, line
 * and exit code that both sides rely on is defined here, once. The guest agent carries this module
 * (it is built into dist/guest/agent, which every instance mounts), so it holds only types and
 * constants and imports nothing. The drivers, the channel and the microVM image import it from here.
 * docs/agent-protocol.md and docs/microvm.md describe the protocol these names make up.
 */

// ---- Inside every instance

/** Where an instance sees its code, the agent and its channel (sandbox mounts; the microVM root image). */
/** start: a function's prepared start (bundle.mts), when it has one. */
export const GUEST_PATHS = { code: '/code', agent: '/opt/aether/agent', run: '/run/aether', start: '/opt/aether/start' } as const;

/** Modules in the agent directory: the agent, and the helpers microVM guests run around it. */
export const AGENT_MODULES = {
  main: 'main.mjs',
  /** QEMU guests: preloaded; relays the channel over hostfwd and a virtio-serial port. */
  listenMode: 'listen-mode.mjs',
  /** Firecracker guests: preloaded; drops to AGENT_ENV.uid before the agent runs. */
  dropPrivileges: 'drop-privileges.mjs',
  /** Firecracker guests: run once by init to read the instance from MMDS. */
  mmdsFetch: 'mmds-fetch.mjs',
  /** Run by the host, not in instances: V8's code cache of a prepared bundle. */
  codeCache: 'code-cache.mjs',
} as const;

/** Environment the agent reads, set by the driver or the VM's init (the function never sees it). */
export const AGENT_ENV = {
  runDir: 'AETHER_RUN_DIR',
  codeDir: 'AETHER_CODE_DIR',
  listenPort: 'AETHER_LISTEN_PORT',
  mmdsPort: 'AETHER_MMDS_PORT',
  uid: 'AETHER_UID',
  /** Set in microVMs: the agent may be a restored snapshot's, so it reseeds Math.random (reseed.mts). */
  reseed: 'AETHER_RESEED',
  /**
   * Set by the sandbox drivers on a pre-started (warm pool) instance: the agent opens its metadata
   * connection before it waits for the token, which tells the host that node and the agent are up.
   */
  prewarm: 'AETHER_PREWARM',
} as const;

/** Lines the agent writes itself start with this: the host quotes them first when a start fails. */
export const AGENT_LOG_PREFIX = '[aether-agent]';

/** Exit code of an agent that refused to start (no valid token, no config, no entry module): EX_CONFIG. */
export const EXIT_CONFIG = 78;

// ---- The channel: a directory the host listens in and the agent dials (GUEST_PATHS.run inside)

export const MMDS_SOCKET = 'mmds.sock';
export const AGENT_SOCKET = 'agent.sock';
/**
 * Handler mode's frame channel (frames.mts): one connection the agent dials here carries many
 * invocations at once. Optional on both sides: HTTP on agent.sock carries whatever it does not.
 */
export const FRAMES_SOCKET = 'frames.sock';
/** Unused connections the agent keeps dialed to agent.sock, on top of those carrying requests. */
export const SPARE_CONNECTIONS = 2;
/** What the metadata service serves, once, to the holder of the token. */
export const CONFIG_PATH = '/v1/config';

/** What the per-instance metadata service (mmds.sock) serves at CONFIG_PATH, once. */
export interface AgentConfig {
  instance_id: string;
  function_id: string;
  entrypoint: string | null;
  port: number;
  env: Record<string, string>;
  concurrency: number;
  /** Handler mode: what the Lambda-style context reports. */
  function_name: string;
  memory_mb: number;
  /** Handler mode: the shape of the event an HTTP request becomes, and how the result is read (lambda-events.mts). */
  event_format: string;
  /** `bundle`: load the prepared bundle at GUEST_PATHS.start rather than the entry module (absent: plain). */
  start?: 'bundle' | 'plain';
}

/** The ARN a function's Lambda context and the Invoke API's errors name it by (`<prefix><name>[:qualifier]`). */
export const FUNCTION_ARN_PREFIX = 'arn:aether:lambda:local:000000000000:function:';

export const REQUEST_ID_HEADER = 'x-aether-request-id';
export const DEADLINE_HEADER = 'x-aether-deadline';
/** The client's address as the first Aether hop saw it (the sourceIp of API Gateway events). */
export const SOURCE_IP_HEADER = 'x-aether-source-ip';
/**
 * On an answer the agent made itself (the handler threw, the body was too large): why, for the
 * invocation record. The message is cut to ERROR_HEADER_MAX_CHARS and URI-encoded (headers are
 * latin1). A cluster worker passes it on to its gateway; clients never see it.
 */
export const ERROR_HEADER = 'x-aether-error';
export const ERROR_HEADER_MAX_CHARS = 2000;
/**
 * Set by the host on a Lambda Invoke API call (never passed on from a client): the body is the event
 * itself, as JSON, and the answer's body the handler's result as JSON. Server-mode and fetch functions
 * get such calls as `POST /events` (the pass-through path of AWS's Lambda Web Adapter).
 */
export const INVOKE_HEADER = 'x-aether-invoke';
export const INVOKE_PATH = '/events';
/** On the agent's answer to an Invoke API call: the handler failed (`Unhandled`), the body says how. */
export const FUNCTION_ERROR_HEADER = 'x-aether-function-error';
/**
 * On an Invoke API call whose client wants the log tail: once the handler settled, the agent writes
 * LOG_END_LINE and the request id as the invocation's last line on stdout and on stderr; with both,
 * the host has all its lines (the two streams reach it independently).
 */
export const LOG_END_HEADER = 'x-aether-log-end';
export const LOG_END_LINE = 'END RequestId: ';

/**
 * Handler mode tags each line an invocation writes to stdout/stderr with its request id:
 * LOG_FRAME_START + request id + LOG_FRAME_END + the line. Lines without the frame are plain output.
 */
export const LOG_FRAME_START = '\u001e';
export const LOG_FRAME_END = '\u001f';

// ---- microVMs: the guest's init (guest/image/init-script.ts) and the VMM drivers

/** Every line init writes to the console starts with this and ends with ` up=<seconds since boot>`. */
export const INIT_LOG_PREFIX = '[aether-init]';
/** What init says after the prefix: boot phases (timings), and the events the drivers wait for. */
export const INIT_EVENTS = {
  start: 'start',
  agentStarted: 'agent-started',
  probeOk: 'probe-ok',
  /** The agent runs and waits for its instance (QEMU: its token; Firecracker: MMDS): the moment to snapshot a template. */
  awaitingConfig: 'awaiting-config',
  /** The instance arrived; the clock is set and the RNG reseeded. */
  config: 'config',
  /** The function's code disk is mounted. */
  codeMounted: 'code-mounted',
  /** Followed by the agent's status (a shell's: 128+n for signal n). */
  agentExited: 'agent exited status=',
  fatal: 'fatal:',
} as const;

/** Kernel command line parameters the drivers pass and init reads. */
export const KERNEL_PARAMS = {
  ip: 'aether.ip',
  gateway: 'aether.gw',
  listenPort: 'aether.listen',
  /** node's arguments, comma-separated. */
  nodeArgs: 'aether.node',
  /** `=1`: say probe-ok and power off at once. */
  probe: 'aether.probe',
  /** `=firecracker`: init's Firecracker mode. */
  vmm: 'aether.vmm',
} as const;

/** The unprivileged uid the agent and the function run as inside a guest. */
export const GUEST_UID = 1000;

/** QEMU: serial numbers of the virtio-blk disks and names of the virtio-serial ports. */
export const DISK_SERIAL = { root: 'aether-root', code: 'aether-code' } as const;
export const PORT_NAME = { ctl: 'aether.ctl', mmds: 'aether.mmds', stdout: 'aether.stdout', stderr: 'aether.stderr' } as const;
/**
 * QEMU: lines on the control port. Guest to host: `waiting` (for its token), `time` (asks for the
 * host's clock), `ready`, `exit <status>`; host to guest: `<token> <random hex>` (helloLine: an answer
 * to `waiting`, or at once when a snapshot resumes: its `waiting` went to the template), `<unix
 * seconds>` (an answer to `time`: asked for just before it is set, as a restored guest may take a
 * while to get there), then `stop`.
 */
export const CONTROL = { waiting: 'waiting', time: 'time', stop: 'stop', ready: 'ready', exit: 'exit' } as const;

/** The first line to a QEMU guest: its token, and bytes for its RNG. */
export function helloLine(token: string, seedHex: string): string {
  return `${token} ${seedHex}\n`;
}
/** The host's time for a QEMU guest, in whole seconds (what busybox `date -s @` takes), rounded. */
export function timeLine(nowMs: number): string {
  return `${Math.round(nowMs / 1000)}\n`;
}
/** QEMU: the descriptor on which listen mode tells init that the agent is ready. */
export const LISTEN_READY_FD = 4;

/** Firecracker: vsock ports the guest dials on the host's CID (each arrives at the host's `<uds_path>_<port>`). */
export const FIRECRACKER_VSOCK = { hostCid: 2, agent: 1024, mmds: 1025, stdout: 1026, stderr: 1027 } as const;
/** Firecracker: where in MMDS (V2) init finds its instance. */
export const MMDS_KEY = 'aether';
export const MMDS_ADDRESS = '169.254.169.254';

/** Firecracker: what init reads from MMDS at /MMDS_KEY. */
export interface MmdsInstance {
  token: string;
  config: AgentConfig;
  /** The address to use: a restored guest still has the one of the VM that was snapshotted. */
  network: { ip: string; gateway: string };
  /** 32 random bytes (hex) init mixes into the kernel's pool before reseeding it: a restored copy must not share its template's. */
  seed: string;
  /** A restore: the host's time (unix seconds) as it hands the instance over; the clock resumed from the snapshot's. */
  time?: number;
}
