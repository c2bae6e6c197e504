/**
 * The guest agent: runs inside an instance as `node main.mjs`, fetches its config with the token it
 * reads from stdin, loads the function in this same process and dials the host's request channel.
 * Cold start is a headline metric: nothing on this path may wait for anything it does not need.
 */
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadBundle } from './bundle.mjs';
import { configRequest, readToken, replaceEnv } from './config.mjs';
import { detectMode, resolveEntry, type Mode } from './entry.mjs';
import { fetchResponder } from './fetch-mode.mjs';
import { serveFrames } from './frame-mode.mjs';
import { serveConnections } from './http-mode.mjs';
import { lambdaAnswerer, lambdaResponder } from './lambda.mjs';
import { blockingOutput, tagOutput } from './output-tagging.mjs';
import { errorMessage, fail, log } from './log.mjs';
import { AGENT_ENV, AGENT_SOCKET, EXIT_CONFIG, FRAMES_SOCKET, GUEST_PATHS, type AgentConfig } from './protocol.mjs';
import { proxyConnections, waitForPort } from './server-mode.mjs';
import { Spares } from './spares.mjs';

const runDir = process.env[AGENT_ENV.runDir] || GUEST_PATHS.run;
const codeDir = process.env[AGENT_ENV.codeDir] || GUEST_PATHS.code;

let config: AgentConfig;
let entry: string;
try {
  // A pre-started instance connects first and then waits here, in readToken, until it gets a function.
  const early = process.env[AGENT_ENV.prewarm] ? configRequest(runDir) : undefined;
  const token = readToken();
  // Only microVMs can be snapshots; elsewhere the import would cost a cold start a few ms.
  if (process.env[AGENT_ENV.reseed]) (await import('./reseed.mjs')).reseedMathRandom();
  config = await (early ?? configRequest(runDir))(token);
  replaceEnv(config);
  process.chdir(codeDir);
  entry = resolveEntry(codeDir, config.entrypoint);
} catch (err) {
  fail(errorMessage(err), EXIT_CONFIG);
}

blockingOutput(); // before the function's code can print
let mod: Parameters<typeof detectMode>[0];
try {
  if (config.start === 'bundle') {
    const bundle = loadBundle(GUEST_PATHS.start, entry);
    if (bundle.cacheRejected) log('V8 rejected the code cache of the prepared bundle: compiling without it');
    mod = bundle.mod;
  } else {
    mod = await import(pathToFileURL(entry).href);
  }
} catch (err) {
  log(`entry module ${relative(codeDir, entry)} failed to load: ${errorMessage(err)}`);
  console.error(err);
  process.exit(1);
}

const mode: Mode = detectMode(mod);
if (mode.kind === 'server') await waitForPort(config.port);
else tagOutput(); // handler mode: lines name the invocation that wrote them

const spares = new Spares(join(runDir, AGENT_SOCKET));
spares.start(connectionHandler(mode));

function connectionHandler(mode: Mode) {
  const onFirstUse = spares.used.bind(spares);
  switch (mode.kind) {
    case 'server':
      return proxyConnections(config.port, onFirstUse);
    case 'lambda': {
      // Dialed before the spares, so that the host usually has it by the time the instance is ready.
      const answer = lambdaAnswerer(mode.handler, config);
      serveFrames(join(runDir, FRAMES_SOCKET), answer);
      return serveConnections(lambdaResponder(answer), onFirstUse);
    }
    case 'fetch':
      return serveConnections(fetchResponder(mode.target), onFirstUse);
  }
}
