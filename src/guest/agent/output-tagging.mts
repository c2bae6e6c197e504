/**
 * Handler mode: every line an invocation writes to stdout or stderr (console.* or the streams
 * directly, from the handler or anything it awaits) starts with a frame naming its request id, so
 * that the host can file it under that invocation. The invocation is followed with AsyncLocalStorage;
 * output outside any invocation (module load, timers started before) stays plain. A line is tagged by
 * whoever starts it: concurrent invocations writing partial lines into one stream can mix.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { LOG_FRAME_END, LOG_FRAME_START } from './protocol.mjs';

const invocation = new AsyncLocalStorage<string>();
/** Ids that cannot break a frame or a line (the host's request ids are of this kind). */
const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const NEWLINE = 0x0a;

/** Runs `fn` as the invocation `requestId`: what it writes is tagged (an unsafe id is not used). */
export function asInvocation<T>(requestId: string | undefined, fn: () => T): T {
  return requestId !== undefined && SAFE_ID.test(requestId) ? invocation.run(requestId, fn) : fn();
}

/**
 * Makes writes to stdout and stderr wait while the host is behind. The host's ends are sockets, which
 * node writes to asynchronously, queueing what the host has not read in the function's own memory
 * without bound: a function printing faster than a busy host reads was killed for memory. Blocking
 * is the backpressure a pipe gives; the host keeps reading (and counting what the rate limit drops).
 */
export function blockingOutput(): void {
  for (const stream of [process.stdout, process.stderr]) {
    (stream as unknown as { _handle?: { setBlocking?(on: boolean): unknown } })._handle?.setBlocking?.(true);
  }
}

/** Wraps the write of process.stdout and process.stderr (once, at start). */
export function tagOutput(): void {
  for (const stream of [process.stdout, process.stderr]) tagStream(stream);
}

type Write = (chunk: unknown, encoding?: unknown, cb?: unknown) => boolean;

function tagStream(stream: NodeJS.WriteStream): void {
  const write = stream.write.bind(stream) as Write;
  let atLineStart = true;
  const tagged: Write = (chunk, encoding, cb) => {
    const requestId = invocation.getStore();
    const isText = typeof chunk === 'string' && (typeof encoding !== 'string' || /^utf-?8$/i.test(encoding));
    const isBytes = chunk instanceof Uint8Array;
    if (!isText && !isBytes) return write(chunk, encoding, cb);
    const data = chunk as string | Uint8Array;
    if (data.length === 0) return write(chunk, encoding, cb);
    const startsLine = atLineStart;
    atLineStart = isText ? (data as string).endsWith('\n') : data[data.length - 1] === NEWLINE;
    if (requestId === undefined) return write(chunk, encoding, cb);
    const frame = `${LOG_FRAME_START}${requestId}${LOG_FRAME_END}`;
    const done = typeof encoding === 'function' ? encoding : cb;
    return isText
      ? write(frameText(data as string, frame, startsLine), 'utf8', done)
      : write(frameBytes(data as Uint8Array, frame, startsLine), done);
  };
  stream.write = tagged as typeof stream.write;
}

/** A frame before the first line (if the write starts one) and after every line break but a final one. */
function frameText(text: string, frame: string, startsLine: boolean): string {
  let out = text.replaceAll('\n', `\n${frame}`);
  if (text.endsWith('\n')) out = out.slice(0, -frame.length); // the next line is the next write's
  return startsLine ? frame + out : out;
}

/** The same on bytes, without decoding them (a write may end inside a UTF-8 character). */
function frameBytes(bytes: Uint8Array, frame: string, startsLine: boolean): Buffer {
  const tag = Buffer.from(frame);
  const parts: Uint8Array[] = startsLine ? [tag] : [];
  let from = 0;
  for (let nl = bytes.indexOf(NEWLINE); nl !== -1 && nl < bytes.length - 1; nl = bytes.indexOf(NEWLINE, nl + 1)) {
    parts.push(bytes.subarray(from, nl + 1), tag);
    from = nl + 1;
  }
  parts.push(bytes.subarray(from));
  return Buffer.concat(parts);
}
