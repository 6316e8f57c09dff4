/**
 * The dashboard in a real browser: an appliance on free loopback ports, I/O from the project's
 * NBD client over real sockets, the page in headless Chromium (Debian's, through puppeteer-core).
 * The numbers on the page must match the admin API, the charts must grow as the page polls,
 * and a page that needs a token must take one from its URL fragment. A screenshot is written
 * to <tmpdir>/memfabric-test-output/dashboard.png (its path is printed).
 *
 * Skipped, saying why, where Chromium is not installed (scripts/setup.sh installs it).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { NbdClient } from '../../src/nbd/index.js';
import { startAppliance } from './harness.js';

function findChromium(): string | undefined {
  try {
    return execFileSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

const chromium = findChromium();
const skip =
  chromium === undefined ? "chromium is not installed (scripts/setup.sh installs Debian's chromium)" : false;

async function launch(): Promise<Browser> {
  return puppeteer.launch({ executablePath: chromium!, args: ['--no-sandbox', '--headless=new'] });
}

/**
 * Page expressions are strings: this program is type-checked without the DOM's types, and
 * puppeteer evaluates them in the page as they are.
 */
const UPDATES = 'Number(document.body.dataset.updates)';
const LOGIN_HIDDEN = "document.querySelector('#login').hidden";
/** The raw number an element of the page carries (its data-value). */
const value = (selector: string): string =>
  `Number(document.querySelector(${JSON.stringify(selector)})?.dataset.value)`;

/** Polls `expression` in the page until `check` accepts its value (bounded: 15 s); returns the value. */
async function pageUntil<T>(
  page: Page,
  expression: string,
  check: (value: T) => boolean,
  what: string,
): Promise<T> {
  let seen: T | undefined;
  for (let i = 0; i < 150; i++) {
    seen = (await page.evaluate(expression)) as T;
    if (check(seen)) return seen;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.fail(`${what}: still ${JSON.stringify(seen)}`);
}

test(
  'the dashboard shows what the API says, live, and its charts grow',
  { skip, timeout: 60_000 },
  async (t) => {
    const { appliance, call, base } = await startAppliance({ memory: '64MiB' });
    t.after(() => appliance.stop());
    assert.equal(
      (await call('POST', '/v1/regions', { name: 'vol', size: '8MiB', tenant: 'acme' })).status,
      201,
    );
    const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'vol' });
    t.after(() => client.disconnect());
    // Random bytes: nothing merges, so used memory stays what was written.
    await client.write(0, randomBytes(256 * 1024));

    const browser = await launch();
    t.after(() => browser.close());
    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    await page.setViewport({ width: 1400, height: 1100 });
    await page.goto(`${base}/`);
    await pageUntil<number>(page, UPDATES, (n) => n >= 2, 'two live updates');
    assert.equal(
      await page.evaluate("document.querySelector('#summary').hidden"),
      true,
      'the live view replaced the summary',
    );
    assert.ok(await page.$('#chart-iops canvas'), 'uPlot drew the IOPS chart');

    const regions = (await call('GET', '/v1/regions')).json.regions as Array<{
      name: string;
      stats: { bytesWritten: number };
    }>;
    assert.equal(await page.evaluate(value('#regions-count')), regions.length);
    const vol = regions.find((r) => r.name === 'vol')!;
    assert.equal(vol.stats.bytesWritten, 256 * 1024);
    const written = value('tr[data-region="vol"] td[data-field="bytesWritten"]');
    await pageUntil<number>(page, written, (n) => n === vol.stats.bytesWritten, 'bytes written');
    const stats = (await call('GET', '/v1/stats')).json;
    await pageUntil<number>(page, value('#memory-used'), (n) => n === stats.memory.usedBytes, 'memory used');
    await pageUntil<number>(
      page,
      value('tr[data-tenant="acme"] td[data-field="bytesWritten"]'),
      (n) => n === 256 * 1024,
      'the tenant total',
    );

    // More I/O: the page's counters follow and the IOPS chart gains points.
    const points = "Number(document.querySelector('#chart-iops').dataset.points)";
    const before = (await page.evaluate(points)) as number;
    for (let i = 0; i < 64; i++) await client.write(256 * 1024 + i * 4096, randomBytes(4096));
    const after = (await call('GET', '/v1/regions/vol')).json.stats.bytesWritten as number;
    assert.equal(after, 512 * 1024);
    await pageUntil<number>(page, written, (n) => n === after, 'bytes written after more I/O');
    await pageUntil<number>(page, points, (n) => n > before, 'the IOPS chart gains points');
    assert.match(
      String(await page.evaluate("document.querySelector('#version').textContent")),
      /^memfabric \d+\.\d+\.\d+/,
    );

    const dir = join(tmpdir(), 'memfabric-test-output');
    mkdirSync(dir, { recursive: true });
    const screenshot = join(dir, 'dashboard.png');
    await page.screenshot({ path: screenshot, fullPage: true });
    t.diagnostic(`dashboard screenshot: ${screenshot}`);
    console.log(`dashboard screenshot: ${screenshot}`);
    assert.deepEqual(pageErrors, []);
  },
);

test(
  'with --read-access token the page asks for a token, and takes one from #token=',
  { skip, timeout: 60_000 },
  async (t) => {
    const { appliance, base } = await startAppliance({ auth: { readAccess: 'token' } });
    t.after(() => appliance.stop());
    const browser = await launch();
    t.after(() => browser.close());
    const page = await browser.newPage();
    const refused = await page.goto(`${base}/`);
    assert.equal(refused?.status(), 401);
    await pageUntil<boolean>(page, LOGIN_HIDDEN, (hidden) => hidden === false, 'the login field');
    assert.match(
      String(await page.evaluate("document.querySelector('#login-message').textContent")),
      /needs a token/,
    );

    // The token in the fragment never reaches the server; the page sends it as a bearer token.
    await page.goto(`${base}/#token=${encodeURIComponent(appliance.adminToken)}`);
    await pageUntil<number>(page, UPDATES, (n) => n >= 1, 'a live update with the token');
    assert.equal(await page.evaluate('location.hash'), '', 'the token left the address bar');
    assert.equal(await page.evaluate(value('#regions-count')), 1);

    // A fresh browser context, without the token, types it into the login field.
    const other = await browser.createBrowserContext();
    const typed = await other.newPage();
    await typed.goto(`${base}/`);
    await pageUntil<boolean>(typed, LOGIN_HIDDEN, (hidden) => hidden === false, 'the login field');
    await typed.type('#token', appliance.adminToken);
    await typed.click('#login button');
    await pageUntil<number>(typed, UPDATES, (n) => n >= 1, 'a live update after signing in');
  },
);
