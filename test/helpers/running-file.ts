/**
 * Function source defining `runningFile()`: the file V8 runs that code from, read from the raw stack
 * frame, before the agent's source map names the function's own file (a prepared bundle's frames
 * show /code/handler.js, but run from /opt/aether/start/bundle.js).
 */
export const RUNNING_FILE = `function runningFile() {
  const prepare = Error.prepareStackTrace;
  Error.prepareStackTrace = (_, frames) => frames[0].getFileName();
  const file = new Error().stack;
  Error.prepareStackTrace = prepare;
  return file;
}`;
