/**
 * The appliance's Prometheus metrics as an operator scrapes them: process and Node.js defaults
 * on each appliance's own registry, build info, NBD latency histograms per command, admin
 * latency per route, NBD errors by errno, bytes by region and tenant, rebuilds; and one
 * statistics snapshot per scrape. I/O goes through the project's NBD client over real sockets.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { NbdClient, NbdRequestError } from '../../src/nbd/index.js';
import type { FleetController } from '../../src/catalog/controller.js';
import { startAppliance } from './harness.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

/** The value of one sample line (labels exactly as written), or undefined. */
function sample(metrics: string, line: string): number | undefined {
  const escaped = line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const match = new RegExp(`^${escaped} (\\S+)$`, 'm').exec(metrics);
  return match ? Number(match[1]) : undefined;
}

test('default process and Node.js metrics and build info, on each appliance of a process', async (t) => {
  const one = await startAppliance();
  t.after(() => one.appliance.stop());
  const two = await startAppliance();
  t.after(() => two.appliance.stop());
  for (const { call } of [one, two]) {
    const metrics = (await call('GET', '/metrics')).text;
    for (const name of [
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_heap_size_used_bytes',
      'nodejs_eventloop_lag_seconds',
    ]) {
      assert.match(metrics, new RegExp(`^${name} [0-9.e+-]+$`, 'm'), name);
    }
    assert.equal(sample(metrics, `memfabric_build_info{version="${VERSION}",node="${process.version}"}`), 1);
    const started = sample(metrics, 'memfabric_start_time_seconds');
    assert.ok(started !== undefined && Math.abs(started * 1000 - Date.now()) < 3600_000, String(started));
  }
});

test('NBD latency histograms count every request by command, buckets cumulative up to +Inf', async (t) => {
  const { appliance, call } = await startAppliance();
  t.after(() => appliance.stop());
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'default' });
  t.after(() => client.disconnect());
  const writes = 7;
  const reads = 5;
  for (let i = 0; i < writes; i++) await client.write(i * 4096, Buffer.alloc(4096, i + 1));
  for (let i = 0; i < reads; i++) await client.read(i * 4096, 4096);
  // A READ larger than one reply piece is answered piece by piece; it still counts once.
  await client.read(0, 4 * 1024 * 1024);
  await client.flush();
  // Pipelined: many requests arrive in one chunk and are timed as one batch; each still counts.
  const burst = 64;
  await Promise.all(
    Array.from({ length: burst }, (_, i) =>
      client.write((64 + i) * 4096, Buffer.alloc(4096, 9), { fua: i % 8 === 0 }),
    ),
  );
  const metrics = (await call('GET', '/metrics')).text;
  assert.match(metrics, /^# TYPE memfabric_nbd_request_duration_seconds histogram$/m);
  const expected = { write: writes + burst, read: reads + 1, flush: 1, trim: 0 };
  for (const [command, count] of Object.entries(expected)) {
    const name = 'memfabric_nbd_request_duration_seconds';
    assert.equal(sample(metrics, `${name}_count{command="${command}"}`), count, command);
    assert.equal(sample(metrics, `${name}_bucket{command="${command}",le="+Inf"}`), count, command);
    const buckets = [
      ...metrics.matchAll(new RegExp(`^${name}_bucket\\{command="${command}",le="([^"]+)"\\} (\\S+)$`, 'gm')),
    ];
    assert.ok(buckets.length > 10, `${command}: ${buckets.length} buckets`);
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(Number(buckets[i]![2]) >= Number(buckets[i - 1]![2]), `${command} buckets are cumulative`);
    }
    const sum = sample(metrics, `${name}_sum{command="${command}"}`)!;
    assert.ok(count === 0 ? sum === 0 : sum > 0, `${command} sum ${sum}`);
  }
  assert.doesNotMatch(
    metrics,
    /^memfabric_nbd_request_duration_seconds\w*\{command="disc"/m,
    'DISC is never answered, so never timed',
  );
});

test('NBD errors by errno, bytes by region and tenant, admin latency by route', async (t) => {
  const { appliance, call } = await startAppliance({ memory: '1MiB', defaultRegion: false });
  t.after(() => appliance.stop());
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'big', size: '4MiB', tenant: 'acme' })).status,
    201,
  );
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'small', size: '64KiB', tenant: 'acme' })).status,
    201,
  );
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'other', size: '64KiB', tenant: 'beta' })).status,
    201,
  );
  assert.equal((await call('POST', '/v1/regions/small/clone', { name: 'copy' })).status, 201);
  const port = appliance.nbdAddress.port;

  const other = await NbdClient.connect({ port, exportName: 'other' });
  t.after(() => other.disconnect());
  await other.write(0, Buffer.alloc(8192, 1));
  await other.read(0, 4096);

  const big = await NbdClient.connect({ port, exportName: 'big' });
  t.after(() => big.disconnect());
  // The appliance holds 1 MiB: writing 2 MiB runs out, and the client hears ENOSPC.
  let enospc = 0;
  for (let offset = 0; offset < 2 * 1024 * 1024; offset += 64 * 1024) {
    await big.write(offset, Buffer.alloc(64 * 1024, 7)).catch((error: unknown) => {
      assert.ok(error instanceof NbdRequestError && error.errno === 28, String(error));
      enospc++;
    });
  }
  assert.ok(enospc > 0);
  assert.equal((await call('GET', '/v1/regions')).status, 200);
  assert.equal((await call('GET', '/no/such/route')).status, 404);
  const metrics = (await call('GET', '/metrics')).text;
  assert.equal(sample(metrics, 'memfabric_nbd_errors_total{errno="ENOSPC"}'), enospc);

  const regions = (await call('GET', '/v1/regions')).json.regions as Array<{
    name: string;
    tenant: string;
    stats: { bytesRead: number; bytesWritten: number; residentBytes: number };
  }>;
  const tenants = new Map<string, { read: number; write: number; resident: number; regions: number }>();
  for (const region of regions) {
    for (const direction of ['read', 'write'] as const) {
      const bytes = direction === 'read' ? region.stats.bytesRead : region.stats.bytesWritten;
      assert.equal(
        sample(
          metrics,
          `memfabric_region_bytes_total{region="${region.name}",tenant="${region.tenant}",direction="${direction}"}`,
        ),
        bytes,
        `${region.name} ${direction}`,
      );
    }
    const sums = tenants.get(region.tenant) ?? { read: 0, write: 0, resident: 0, regions: 0 };
    sums.read += region.stats.bytesRead;
    sums.write += region.stats.bytesWritten;
    sums.resident += region.stats.residentBytes;
    sums.regions++;
    tenants.set(region.tenant, sums);
  }
  assert.ok(regions.find((r) => r.name === 'big')!.stats.bytesWritten > 0);
  assert.equal(regions.find((r) => r.name === 'other')!.stats.bytesWritten, 8192);
  assert.deepEqual([...tenants.keys()].sort(), ['acme', 'beta']);
  for (const [tenant, sums] of tenants) {
    assert.equal(
      sample(metrics, `memfabric_tenant_bytes_total{tenant="${tenant}",direction="read"}`),
      sums.read,
    );
    assert.equal(
      sample(metrics, `memfabric_tenant_bytes_total{tenant="${tenant}",direction="write"}`),
      sums.write,
    );
    assert.equal(sample(metrics, `memfabric_tenant_resident_bytes{tenant="${tenant}"}`), sums.resident);
    assert.equal(sample(metrics, `memfabric_tenant_regions{tenant="${tenant}"}`), sums.regions);
  }

  const http = 'memfabric_http_request_duration_seconds';
  assert.equal(sample(metrics, `${http}_count{method="POST",route="/v1/regions",status="201"}`), 3);
  assert.equal(
    sample(metrics, `${http}_count{method="POST",route="/v1/regions/:name/clone",status="201"}`),
    1,
  );
  assert.equal(sample(metrics, `${http}_count{method="GET",route="/v1/regions",status="200"}`), 1);
  // Unknown paths share one label value: a scanner cannot grow the metric.
  assert.equal(sample(metrics, `${http}_count{method="GET",route="unmatched",status="404"}`), 1);
  assert.doesNotMatch(metrics, /no\/such\/route/);
});

test('a scrape takes the appliance statistics once, however many metrics read them', async (t) => {
  const { appliance, call } = await startAppliance();
  t.after(() => appliance.stop());
  await call('POST', '/v1/regions', { name: 'a', size: '1MiB' });
  await call('POST', '/v1/regions', { name: 'b', size: '1MiB' });
  const original = appliance.stats.bind(appliance);
  let calls = 0;
  appliance.stats = () => {
    calls++;
    return original();
  };
  const answer = await call('GET', '/metrics');
  assert.equal(answer.status, 200);
  assert.match(answer.text, /^memfabric_memory_used_bytes \d+$/m);
  assert.match(answer.text, /^memfabric_regions\{state="ready"\} 3$/m);
  assert.equal(calls, 1, 'appliance.stats() per scrape');
});

test('rebuilds the fleet controller leads are exported; without a controller the lines are absent', async (t) => {
  const { appliance, call } = await startAppliance();
  t.after(() => appliance.stop());
  assert.doesNotMatch((await call('GET', '/metrics')).text, /^memfabric_rebuilds\{/m);
  const started = Date.now();
  appliance.controller = {
    status: () => ({
      leader: 'x',
      since: started,
      at: started,
      queue: [{ tenant: 't', name: 'q' }],
      inProgress: [
        {
          tenant: 't',
          name: 'r',
          by: 'controller',
          lostAppliances: ['b'],
          startedAt: started,
          bytesDone: 3 << 20,
          bytesTotal: 8 << 20,
          rate: 1,
        },
      ],
      completed: [],
      rebalanced: [],
      failed: [],
    }),
    stop: async () => undefined,
  } as unknown as FleetController;
  const metrics = (await call('GET', '/metrics')).text;
  assert.equal(sample(metrics, 'memfabric_rebuilds{state="in_progress"}'), 1);
  assert.equal(sample(metrics, 'memfabric_rebuilds{state="queued"}'), 1);
  assert.equal(sample(metrics, 'memfabric_rebuilds{state="failed"}'), 0);
  assert.equal(sample(metrics, 'memfabric_rebuild_bytes{tenant="t",region="r",kind="done"}'), 3 << 20);
  assert.equal(sample(metrics, 'memfabric_rebuild_bytes{tenant="t",region="r",kind="total"}'), 8 << 20);
  const dashboard = (await call('GET', '/v1/dashboard')).json;
  assert.deepEqual(dashboard.rebuilds, {
    inProgress: [{ tenant: 't', name: 'r', bytesDone: 3 << 20, bytesTotal: 8 << 20, rate: 1 }],
    queued: 1,
    failed: 0,
  });
});
