/**
 * The functions under test, in both of Aether's modes, and the same logic as a plain node server
 * (the baseline: what the function costs without Aether). All trivial on purpose: the bench measures
 * what Aether adds, not what the function does.
 */

export type Mode = 'handler' | 'server';
export const MODES: Mode[] = ['handler', 'server'];

/** Server mode: the function is its own HTTP server on $PORT. */
const SERVER = `require('http').createServer((req, res) => res.end('ok')).listen(process.env.PORT || 3000);`;

/** Handler mode: a Lambda-style export, no server. */
const HANDLER = `exports.handler = async () => ({ statusCode: 200, body: 'ok' });`;

/**
 * The handler behind a minimal node HTTP server doing what any handler host must: read the body,
 * build an event, call the handler, write its result.
 */
const HANDLER_HOST = `
require('http').createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const q = req.url.indexOf('?');
  const event = {
    method: req.method,
    path: q === -1 ? req.url : req.url.slice(0, q),
    rawQuery: q === -1 ? '' : req.url.slice(q + 1),
    headers: req.headers,
    body: Buffer.concat(chunks).toString(),
  };
  const result = await exports.handler(event, {});
  const body = Buffer.from(result.body ?? '');
  res.writeHead(result.statusCode, { ...result.headers, 'content-length': body.length });
  res.end(body);
}).listen(process.env.PORT || 3000);`;

/** The zip contents deployed to Aether. */
export function functionFiles(mode: Mode): Record<string, string> {
  return { 'handler.js': mode === 'server' ? SERVER : HANDLER };
}

/** Source for `node -e` that serves the same function directly. */
export function directSource(mode: Mode): string {
  return mode === 'server' ? SERVER : `${HANDLER}\n${HANDLER_HOST}`;
}
