/** Functions that misbehave on request, for tests of what Aether records and reports. */

/** Handler mode: reports the request id it saw; /throw throws, /crash exits, /oom allocates until killed, /hang never answers. */
export const PROBE = `
exports.handler = async (event, context) => {
  if (event.path === '/throw') throw new Error('kaput in handler');
  if (event.path === '/crash') process.exit(3);
  if (event.path === '/oom') { const keep = []; for (;;) keep.push(Buffer.alloc(8 * 1024 * 1024, 1)); }
  if (event.path === '/hang') return new Promise(() => {});
  if (event.path === '/fail') return { statusCode: 500, body: 'my own 500' };
  return { statusCode: 200, headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ context: context.requestId, aws: context.awsRequestId, event: event.requestId, header: event.headers['x-request-id'] }) };
};`;
