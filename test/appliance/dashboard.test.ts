/**
 * The dashboard's data and access without a browser: GET /v1/dashboard against the rest of the
 * API (regions, tenants, latency counts, a file-backed region's save state), the page's assets
 * served from the uplot package even where reads need a token, and the page for a browser
 * refused GET / (a login field) while API clients keep the JSON error.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ErrorCodes } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/index.js';
import { startAppliance } from './harness.js';

test('GET /v1/dashboard agrees with the API: regions, tenants, NBD counters, latency, save state', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'dashboard-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const { appliance, call } = await startAppliance({ dataDir });
  t.after(() => appliance.stop());
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'disk', size: '1MiB', tenant: 'acme', file: true })).status,
    201,
  );
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'mem', size: '1MiB', tenant: 'acme' })).status,
    201,
  );

  let view = (await call('GET', '/v1/dashboard')).json;
  const disk = () => view.regions.find((r: { name: string }) => r.name === 'disk');
  assert.deepEqual(disk().save, { saving: false, lastSavedAt: null, lastError: null });
  assert.equal(view.regions.find((r: { name: string }) => r.name === 'mem').save, null);

  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'disk' });
  t.after(() => client.disconnect());
  // Two pages that differ, so the background merger cannot share them between the two reads of
  // memory use below (identical pages made this flaky: 8192 bytes used, then 4096).
  const payload = Buffer.alloc(8192, 5);
  payload.fill(6, 4096);
  await client.write(0, payload);
  await client.read(0, 4096);
  await client.flush(); // saves the file-backed region
  view = (await call('GET', '/v1/dashboard')).json;

  const stats = (await call('GET', '/v1/stats')).json;
  const regions = (await call('GET', '/v1/regions')).json.regions as Array<{
    name: string;
    stats: { bytesWritten: number; bytesRead: number };
  }>;
  assert.deepEqual(
    view.regions.map((r: { name: string }) => r.name),
    regions.map((r) => r.name),
  );
  for (const region of regions) {
    const shown = view.regions.find((r: { name: string }) => r.name === region.name);
    assert.equal(shown.bytesWritten, region.stats.bytesWritten, region.name);
    assert.equal(shown.bytesRead, region.stats.bytesRead, region.name);
  }
  assert.equal(disk().ops, 3, 'a write, a read and a flush');
  assert.equal(disk().connections, 1);
  assert.equal(disk().migrating, false);
  assert.equal(disk().uri, `nbd://127.0.0.1:${appliance.nbdAddress.port}/disk`);
  assert.equal(disk().save.saving, false);
  assert.ok(disk().save.lastSavedAt >= appliance.startedAt, JSON.stringify(disk().save));
  assert.deepEqual(
    view.tenants.find((x: { tenant: string }) => x.tenant === 'acme'),
    {
      tenant: 'acme',
      regions: 2,
      bytesRead: 4096,
      bytesWritten: 8192,
      residentBytes: 8192,
      reads: 1,
      writes: 1,
    },
  );
  assert.equal(view.memory.usedBytes, stats.memory.usedBytes);
  assert.equal(view.nbd.bytesWritten, stats.nbd.bytesWritten);
  assert.equal(view.nbd.requests, 3);
  // Every answered request is in one latency bucket.
  assert.equal(
    view.latency.counts.reduce((sum: number, n: number) => sum + n, 0),
    3,
  );
  assert.equal(view.latency.counts.length, view.latency.boundsSeconds.length + 1);
  assert.equal(view.startedAt, appliance.startedAt);
  assert.match(view.version, /^\d+\.\d+\.\d+/);
  assert.equal(view.rebuilds, null, 'no fleet controller here');
});

test('with read access token: assets are public, GET / gives browsers a login page and API clients JSON', async (t) => {
  const { appliance, base, callAs } = await startAppliance({ auth: { readAccess: 'token' } });
  t.after(() => appliance.stop());
  for (const [asset, type] of [
    ['uPlot.iife.min.js', /javascript/],
    ['uPlot.min.css', /css/],
  ] as const) {
    const answer = await fetch(`${base}/dashboard/${asset}`);
    assert.equal(answer.status, 200, asset);
    assert.match(String(answer.headers.get('content-type')), type);
    assert.ok((await answer.text()).length > 1000, asset);
  }
  assert.equal((await fetch(`${base}/dashboard/package.json`)).status, 404);
  assert.equal((await fetch(`${base}/dashboard/..%2F..%2Fpackage.json`)).status, 404);

  const browser = await fetch(`${base}/`, { headers: { accept: 'text/html,application/xhtml+xml' } });
  assert.equal(browser.status, 401);
  const page = await browser.text();
  assert.match(page, /<form id="login"/);
  assert.doesNotMatch(page, /id="summary"/, 'no data without a token');
  const api = await callAs(undefined, 'GET', '/');
  assert.equal(api.status, 401);
  assert.equal(api.json.error.code, ErrorCodes.UNAUTHORIZED);
  assert.equal((await callAs(undefined, 'GET', '/v1/dashboard')).status, 401);
  assert.equal((await callAs(appliance.adminToken, 'GET', '/v1/dashboard')).status, 200);
});
