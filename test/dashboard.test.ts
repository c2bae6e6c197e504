/**
 * The web dashboard in a real browser: headless Chromium (Debian's package) driven by playwright-core,
 * against a real `aether serve` with bwrap sandboxes, and against a cluster gateway (a worker, real
 * etcd, Redis and S3). A person's path: log in, create a function, deploy a zip by upload, invoke it
 * with the form, watch the invocation and its log line arrive, see it scale to zero, delete it.
 * axe-core audits the pages for accessibility. Screenshots go to test-output/dashboard/ (git ignores it).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import { type Aether, makeZip, ROOT, startAether, TOKEN } from './helpers/aether.ts';
import { type Services, startServices } from './helpers/services.ts';
import { skipUnless } from './helpers/skip.ts';
import { until } from './helpers/wait.ts';

const CHROMIUM = '/usr/bin/chromium';
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
const SHOTS = path.join(ROOT, 'test-output/dashboard');
const noChromium = skipUnless(fs.existsSync(CHROMIUM), `no ${CHROMIUM}: apt-get install chromium (npm test's set-up does)`);
const PHONE = { width: 375, height: 812 };

/** Server mode, as in the README's walk-through: it logs each request and echoes it. */
const HELLO = `require('http').createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    console.log('got ' + req.method + ' ' + req.url + ' ' + body);
    res.setHeader('content-type', 'text/plain');
    res.end('hello ' + process.env.WHO + ' from ' + req.url + ': ' + body);
  });
}).listen(process.env.PORT || 3000);`;

/** A page that records what a reviewer would worry about: script errors, CSP violations, the token in a URL. */
async function openPage(browser: Browser, base: string) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems: string[] = [];
  const urls: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  // The API's 4xx answers (a wrong token, a rejected upload) are part of the path and shown on the page.
  const expected = /^Failed to load resource: the server responded with a status of 4\d\d/;
  page.on('console', (msg) => msg.type() === 'error' && !expected.test(msg.text()) && problems.push(`console: ${msg.text()}`));
  page.on('request', (req) => urls.push(req.url()));
  await page.goto(base);
  return { page, problems, urls };
}

async function login(page: Page, token: string) {
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
}

/** Nothing wider than the window: no sideways scrolling on a phone. */
async function assertNoHorizontalScroll(page: Page, where: string) {
  const { scroll, width } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
  assert.ok(scroll <= width, `${where}: the page is ${scroll} px wide in a ${width} px window`);
}

const shot = (page: Page, name: string) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });

describe('dashboard on one node', { skip: noChromium }, () => {
  let a: Aether;
  let browser: Browser;
  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    [a, browser] = await Promise.all([
      startAether({ isolation: 'bwrap' }),
      chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] }),
    ]);
  });
  after(async () => {
    await browser?.close();
    await a?.stop();
  });

  test('the page and its assets are served at / without the token, cached by content hash, and the API keeps its routes', async () => {
    const page = await fetch(`${a.url}/`);
    assert.equal(page.status, 200);
    assert.equal(page.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(page.headers.get('cache-control'), 'no-cache');
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
    const html = await page.text();
    const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]!);
    assert.equal(assets.length, 2, 'one script, one style sheet');
    for (const asset of assets) {
      const res = await fetch(a.url + asset, { headers: { 'accept-encoding': 'gzip' } });
      assert.equal(res.status, 200, asset);
      assert.match(res.headers.get('content-type')!, asset.endsWith('.js') ? /^text\/javascript/ : /^text\/css/);
      assert.equal(res.headers.get('cache-control'), 'public, max-age=31536000, immutable');
      assert.ok((await res.text()).length > 1000, 'fetch undid the gzip; the bundle is there');
    }
    const again = await fetch(`${a.url}/`, { headers: { 'if-none-match': page.headers.get('etag')! } });
    assert.equal(again.status, 304);
    const missing = await fetch(`${a.url}/assets/main-OLD.js`);
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error.code, 'not_found');
    // The rest is as it was: the API wants the token, health and unknown routes answer JSON.
    assert.equal((await fetch(`${a.url}/api/functions`)).status, 401);
    assert.equal((await fetch(`${a.url}/healthz`)).status, 200);
    assert.equal((await (await fetch(`${a.url}/nothing/here`)).json()).error.code, 'not_found');
  });

  test('log in, create, deploy a zip, invoke, see the invocation and log line live, scale to zero, delete, log out', async () => {
    const { page, problems, urls } = await openPage(browser, a.url);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'token', 'the token field has the focus');
    await login(page, 'not-the-token');
    await page.getByRole('alert').filter({ hasText: 'That token was not accepted.' }).waitFor();
    await login(page, TOKEN);
    await page.getByRole('heading', { name: 'Functions' }).waitFor();
    await page.waitForFunction(() => document.activeElement?.tagName === 'H1', null, { timeout: 5000 }); // a new page focuses its heading
    assert.equal(await page.getByRole('navigation', { name: 'Main' }).count(), 1);
    await page.getByText('No functions yet').waitFor();

    await page.getByText('New function').click();
    await page.getByLabel('Name').fill('hello');
    await page.getByLabel('Idle timeout (s)').fill('5');
    await page.getByLabel(/Environment/).fill('WHO=world\nAPI_KEY=secret-value-123');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.getByRole('heading', { name: 'hello', level: 1 }).waitFor();
    await page.locator('.badge', { hasText: 'no code' }).waitFor();
    const config = page.getByRole('region', { name: 'Configuration' });
    await config.getByText('API_KEY').waitFor();
    assert.ok(!(await config.textContent())!.includes('secret-value-123'), 'env var values are masked');

    // A rejected upload shows the API's own message; then the real zip, through the file input.
    const junk = Buffer.from('this is not an archive');
    const expected = await fetch(`${a.url}/api/functions/hello/code`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/zip' },
      body: junk,
    });
    const { message } = (await expected.json()).error;
    await page.getByLabel(/choose a file/).setInputFiles({ name: 'notes.zip', mimeType: 'application/zip', buffer: junk });
    await page
      .getByRole('status')
      .filter({ hasText: `Upload rejected: ${message}` })
      .waitFor();
    // The real zip is dropped on the drop zone, as if dragged from the desktop; with a megabyte of data
    // (base64 of random bytes, which zip cannot shrink much) the progress bar has something to show.
    const zip = Buffer.from(makeZip({ 'handler.js': HELLO, 'data.txt': randomBytes(768 * 1024).toString('base64') }));
    // Every state the bar shows, as it shows it (a string, not a function: tsx would wrap a named
    // function in a helper the page does not have).
    await page.evaluate(`{
      const seen = (window.progressSeen = []);
      new MutationObserver(() => {
        const bar = document.querySelector('progress');
        if (bar && seen.at(-1) !== bar.getAttribute('aria-valuetext')) seen.push(bar.getAttribute('aria-valuetext'));
      }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['aria-valuetext'] });
    }`);
    const files = await page.evaluateHandle((base64) => {
      const transfer = new DataTransfer();
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], 'hello.zip', { type: 'application/zip' }));
      return transfer;
    }, zip.toString('base64'));
    await page.locator('.dropzone').dispatchEvent('dragover', { dataTransfer: files });
    await page.locator('.dropzone').dispatchEvent('drop', { dataTransfer: files });
    await page.getByRole('status').filter({ hasText: 'Deployed hello.zip: version 1' }).waitFor();
    const progress: string[] = await page.evaluate(() => (window as any).progressSeen);
    assert.equal(progress[0], '0 % uploaded', 'a progress bar was shown from the start of the upload');
    assert.equal(progress.at(-1), '100 % uploaded', `and reached the end: ${progress.join(', ')}`);
    assert.equal(await page.locator('progress').count(), 0, 'and is gone once the upload is done');
    await page.locator('.badge', { hasText: 'scaled to zero' }).waitFor();

    // The log tail is open before the request: its line can only arrive live.
    const log = page.getByRole('log');
    const invoke = page.getByRole('region', { name: 'Invoke' });
    await invoke.getByLabel('Method').selectOption('POST');
    await invoke.getByLabel('Path').fill('/greet?x=1');
    await invoke.getByLabel('Body').fill('from the browser');
    await invoke.getByRole('button', { name: 'Send' }).click();
    await invoke.getByText('HTTP 200').waitFor();
    await invoke.getByText('hello world from /greet?x=1: from the browser').waitFor();
    const requestId = (await invoke.locator('code').textContent())!;
    assert.match(requestId, /^[0-9a-f-]{36}$/);
    await log.getByText('got POST /greet?x=1 from the browser').waitFor();
    const invocations = page.getByRole('region', { name: 'Invocations' });
    await invocations.getByText(requestId).waitFor();
    await page.getByRole('region', { name: 'Instances' }).getByText('ready').waitFor();
    await invocations.getByLabel('cold starts').check();
    await invocations.getByText(requestId).waitFor(); // the first request waited for the instance
    await invocations.getByLabel('errors').check();
    await invocations.getByText('None that match').waitFor();
    await shot(page, 'function');

    // The function's own URL opens in a new tab that gets no copy of the token (the function shares the origin).
    const [tab] = await Promise.all([page.waitForEvent('popup'), page.getByRole('link', { name: `${a.url}/functions/hello/` }).click()]);
    await tab.waitForLoadState();
    assert.match((await tab.textContent('body'))!, /^hello world from \/: $/);
    assert.equal(await tab.evaluate(() => sessionStorage.length), 0, 'no token in the function page');
    await tab.close();

    // Idle for idle_timeout_s (5 s): the last instance stops.
    await page.locator('.badge', { hasText: 'scaled to zero' }).waitFor({ timeout: 15_000 });
    await page.getByRole('region', { name: 'Instances' }).getByText('None: scaled to zero').waitFor();

    await page.setViewportSize(PHONE);
    await assertNoHorizontalScroll(page, 'function page on a phone');
    await shot(page, 'function-phone');

    await page.getByRole('navigation').getByRole('link', { name: 'Functions' }).click();
    const row = page.getByRole('row', { name: /hello/ });
    await row.getByText('scaled to zero').waitFor();
    await row.getByText('0 %').waitFor(); // an error rate: the stats counted the invocation
    await until(async () => (await row.locator('canvas').count()) === 2, 5000, 'the two charts');
    await assertNoHorizontalScroll(page, 'functions on a phone');
    await shot(page, 'functions-phone');
    await page.setViewportSize({ width: 1280, height: 900 });
    await shot(page, 'functions');

    await page.getByRole('navigation').getByRole('link', { name: 'Workers' }).click();
    await page.getByRole('region', { name: 'This server' }).getByText('bwrap').waitFor();

    await page.goto(`${a.url}/#/functions/hello`);
    await page.getByRole('button', { name: 'Delete' }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete hello?' });
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await a.api('GET', '/api/functions/hello')).status, 200, 'Cancel deletes nothing');
    await page.getByRole('button', { name: 'Delete' }).click();
    await dialog.getByRole('button', { name: 'Delete hello' }).click();
    await page.getByText('No functions yet').waitFor();
    assert.equal((await a.api('GET', '/api/functions/hello')).status, 404);

    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('API token').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'the token is gone');
    assert.deepEqual(
      urls.filter((u) => u.includes(TOKEN)),
      [],
      'the token is never in a URL',
    );
    assert.deepEqual(problems, [], 'no script errors or blocked content');
    await page.close();
  });

  test('axe finds no WCAG 2 A/AA or best-practice violations on the login, functions, function and workers pages', async () => {
    await a.deploy({ name: 'audited', env_vars: { WHO: 'axe' } }, { 'handler.js': HELLO });
    assert.equal((await a.invoke('audited', '/')).status, 200);
    // The audit injects axe's script, which the page's CSP would block (and rightly): this page bypasses it.
    const context = await browser.newContext({ bypassCSP: true });
    const page = await context.newPage();
    const audit = async (where: string) => {
      await page.addScriptTag({ path: AXE });
      const result = await page.evaluate(() => (window as any).axe.run({ runOnly: ['wcag2a', 'wcag2aa', 'best-practice'] }));
      const found = result.violations.map(
        (v: any) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n: any) => n.target).join(', ')}`,
      );
      assert.deepEqual(found, [], where);
      assert.ok(result.passes.length > 10, `${where}: axe ran its checks`);
    };
    await page.goto(a.url);
    await audit('login');
    await login(page, TOKEN);
    await page
      .getByRole('row', { name: /audited/ })
      .locator('canvas')
      .first()
      .waitFor();
    await audit('functions');
    await page.goto(`${a.url}/#/functions/audited`);
    await page.getByRole('log').getByText('instance started').waitFor();
    await page.getByRole('region', { name: 'Invocations' }).getByRole('row').nth(1).waitFor();
    await audit('function');
    await page.goto(`${a.url}/#/workers`);
    await page.getByRole('region', { name: 'This server' }).waitFor();
    await audit('workers');
    await context.close();
  });
});

describe('dashboard against a cluster gateway', { skip: noChromium }, () => {
  let services: Services;
  let worker: Aether;
  let gateway: Aether;
  let browser: Browser;
  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    [services, browser] = await Promise.all([startServices(), chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })]);
    worker = await startAether({
      role: 'worker',
      isolation: 'bwrap',
      env: { ...services.env, WORKER_IP: '127.0.0.1', AETHER_WORKER_ID: 'w0' },
    });
    gateway = await startAether({ role: 'gateway', env: services.env });
    await until(async () => (await gateway.api('GET', '/api/workers')).body.length === 1, 10_000, 'the worker to register');
  });
  after(async () => {
    await browser?.close();
    await Promise.all([gateway?.stop(), worker?.stop()]);
    await services?.stop();
  });

  test('log in at the gateway: its functions with their traffic, and the workers with driver and capacity', async () => {
    await gateway.deploy({ name: 'greeter', idle_timeout_s: 60 }, { 'handler.js': HELLO });
    assert.equal((await gateway.invoke('greeter', '/hi')).status, 200);

    const { page, problems } = await openPage(browser, gateway.url);
    await login(page, TOKEN);
    const row = page.getByRole('row', { name: /greeter/ });
    await row.getByText('ready').waitFor();
    await row.getByText('0 %').waitFor({ timeout: 20_000 }); // the invocation, counted from Redis through the gateway
    await shot(page, 'cluster-functions');

    await page.getByRole('navigation').getByRole('link', { name: 'Workers' }).click();
    const w0 = page.getByRole('row', { name: /w0/ });
    await w0.getByText('bwrap').waitFor();
    await w0.getByText(/^\d+ \/ [1-9]\d*$/).waitFor(); // instances, of its capacity
    await page.getByText('cluster gateway').waitFor();
    await shot(page, 'cluster-workers');
    assert.deepEqual(problems, []);
    await page.close();
  });
});
