/**
 * The admin API of a real appliance (in-process, real sockets): validation, status codes,
 * region lifecycle, clones, tenants and merging, the memory budget, metrics and dashboard.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Appliance } from '../../src/appliance/index.js';
import { ErrorCodes, type MemfabricError } from '../../src/index.js';
import { pino } from 'pino';
import { startAppliance } from './harness.js';

const MiB = 1024 * 1024;

const start = startAppliance;

test('regions: create, list, get, clone, delete', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  const created = await call('POST', '/v1/regions', { name: 'vm1', size: '1TiB', tenant: 'acme' });
  assert.equal(created.status, 201);
  assert.equal(created.json.size, 1024 ** 4);
  assert.equal(created.json.tenant, 'acme');
  assert.equal(created.json.stats.residentBytes, 0, 'a 1 TiB region costs nothing until written');
  const region = appliance.registry.require('vm1');
  // Every page differs (its index at byte 100), so the appliance's merger has nothing to merge
  // while the test counts frames.
  const pages = Buffer.alloc(MiB, 0xab);
  for (let page = 0; page < MiB / 4096; page++) pages.writeUInt32LE(page, page * 4096 + 100);
  region.write(5 * MiB, pages);
  const clone = await call('POST', '/v1/regions/vm1/clone', { name: 'vm1-snap', readOnly: true });
  assert.equal(clone.status, 201);
  assert.equal(clone.json.clonedFrom, 'vm1');
  assert.equal(clone.json.readOnly, true);
  assert.equal(clone.json.stats.sharedBytes, MiB, 'the clone shares every written page');
  const snap = appliance.registry.require('vm1-snap');
  const bytes = Buffer.alloc(16);
  snap.read(5 * MiB, bytes);
  assert.ok(bytes.every((b) => b === 0xab));
  region.write(5 * MiB, Buffer.alloc(16, 1));
  snap.read(5 * MiB, bytes);
  assert.ok(
    bytes.every((b) => b === 0xab),
    'writing the original leaves the clone as it was',
  );
  const list = await call('GET', '/v1/regions');
  assert.deepEqual(
    list.json.regions.map((r: { name: string }) => r.name),
    ['default', 'vm1', 'vm1-snap'],
  );
  const got = await call('GET', '/v1/regions/vm1');
  assert.equal(got.json.stats.writes, 2);
  const used = appliance.pool.used;
  assert.equal((await call('DELETE', '/v1/regions/vm1')).status, 204);
  assert.equal((await call('GET', '/v1/regions/vm1')).status, 404);
  assert.equal(
    appliance.pool.used,
    used - 1,
    'only the page vm1 had copied is freed; the clone keeps the rest',
  );
  assert.equal((await call('DELETE', '/v1/regions/vm1-snap')).status, 204);
  assert.equal(appliance.pool.used, 0);
});

test('bad requests get 4xx with a code and a message, and change nothing', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  const cases: Array<[string, string, unknown, string | undefined, number, string]> = [
    ['POST', '/v1/regions', { size: 5 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', '/v1/regions', { name: 'a', size: 'lots' }, undefined, 400, ErrorCodes.INVALID_SIZE],
    ['POST', '/v1/regions', { name: 'a', size: -1 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', '/v1/regions', { name: 'a', size: 0.5 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', '/v1/regions', { name: 'a', size: '2PiB' }, undefined, 400, ErrorCodes.INVALID_ARGUMENT],
    ['POST', '/v1/regions', { name: '../etc', size: 5 }, undefined, 400, ErrorCodes.INVALID_ARGUMENT],
    ['POST', '/v1/regions', { name: 'a', size: 5, colour: 'red' }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', '/v1/regions', { name: 'a', size: 5, readOnly: 'yes' }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', '/v1/regions', { name: 'a', size: 5, file: true }, undefined, 400, ErrorCodes.INVALID_ARGUMENT],
    ['POST', '/v1/regions', undefined, '{"name": "a", "size":', 400, ErrorCodes.BAD_REQUEST],
    [
      'POST',
      '/v1/regions',
      undefined,
      `{"name":"${'x'.repeat(70_000)}","size":1}`,
      413,
      ErrorCodes.BAD_REQUEST,
    ],
    ['POST', '/v1/regions', { name: 'default', size: 5 }, undefined, 409, ErrorCodes.ALREADY_EXISTS],
    ['POST', '/v1/regions/nope/clone', { name: 'b' }, undefined, 404, ErrorCodes.NOT_FOUND],
    ['POST', '/v1/regions/default/clone', { name: 'default' }, undefined, 409, ErrorCodes.ALREADY_EXISTS],
    ['POST', '/v1/regions/default/clone', {}, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['DELETE', '/v1/regions/nope', undefined, undefined, 404, ErrorCodes.NOT_FOUND],
    ['GET', '/v2/everything', undefined, undefined, 404, ErrorCodes.NOT_FOUND],
  ];
  for (const [method, path, body, raw, status, code] of cases) {
    const response = await call(method, path, body, raw);
    assert.equal(
      response.status,
      status,
      `${method} ${path} ${raw?.slice(0, 30) ?? JSON.stringify(body)}: ${response.text}`,
    );
    assert.equal(response.json.error.code, code, response.text);
    assert.ok(response.json.error.message.length > 10);
  }
  assert.deepEqual(
    appliance.registry.all().map((r) => r.name),
    ['default'],
  );
});

test('a region with NBD clients attached cannot be deleted', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  appliance.registry.onAttach('default', 1);
  const busy = await call('DELETE', '/v1/regions/default');
  assert.equal(busy.status, 409);
  assert.equal(busy.json.error.code, ErrorCodes.BUSY);
  appliance.registry.onAttach('', -1);
  assert.equal((await call('DELETE', '/v1/regions/default')).status, 204);
});

test('the memory budget: a write that cannot get a frame fails alone', async () => {
  const appliance = await Appliance.start({
    memory: '1MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    merge: false,
  });
  try {
    const region = await appliance.registry.create({ name: 'big', size: '1GiB' });
    region.write(0, Buffer.alloc(768 * 1024, 1));
    assert.throws(
      () => region.write(MiB, Buffer.alloc(512 * 1024, 2)),
      (error: { code?: string }) => error.code === ErrorCodes.POOL_EXHAUSTED,
    );
    const back = Buffer.alloc(16);
    region.read(MiB, back);
    assert.ok(
      back.every((b) => b === 0),
      'the failed write left nothing behind',
    );
    region.read(0, back);
    assert.ok(back.every((b) => b === 1));
    region.trim(0, 768 * 1024);
    region.write(MiB, Buffer.alloc(512 * 1024, 2));
    assert.equal(appliance.stats().memory.usedBytes, 512 * 1024);
  } finally {
    await appliance.stop();
  }
});

test('merging shares pages within a tenant, never across tenants', async () => {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: { quietEpochs: 0, cpuShare: 0.5 },
  });
  try {
    const a1 = await appliance.registry.create({ name: 'a1', size: '16MiB', tenant: 'a' });
    const a2 = await appliance.registry.create({ name: 'a2', size: '16MiB', tenant: 'a' });
    const b1 = await appliance.registry.create({ name: 'b1', size: '16MiB', tenant: 'b' });
    const data = Buffer.alloc(4 * MiB);
    for (let offset = 0; offset < data.length; offset += 4096) data.writeUInt32LE(offset + 1, offset);
    for (const region of [a1, a2, b1]) region.write(0, data);
    assert.equal(appliance.pool.used, 3 * 1024);
    const deadline = Date.now() + 10_000;
    while (appliance.stats().merger!.fullScans < 2 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 5));
    assert.equal(appliance.pool.used, 2 * 1024, 'a1 and a2 share; b1 keeps its own copy');
    assert.equal(a1.stats().sharedBytes, 4 * MiB);
    assert.equal(b1.stats().sharedBytes, 0);
    assert.ok(appliance.stats().merger!.bytesSaved > 3 * MiB);
  } finally {
    await appliance.stop();
  }
});

test('stats, Prometheus metrics and the dashboard describe the regions', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  assert.equal((await call('POST', '/v1/regions', { name: 'web<1>', size: 5 })).status, 400);
  await call('POST', '/v1/regions', { name: 'cache', size: '8MiB', tenant: 't2' });
  // Distinct pages, so the background merger has nothing to merge while we look.
  const distinct = Buffer.alloc(MiB, 3);
  for (let offset = 0; offset < MiB; offset += 4096) distinct.writeUInt32LE(offset + 1, offset);
  appliance.registry.require('cache').write(0, distinct);
  // At least two full scans, so a reply that drops or zeroes the count is seen; the background
  // merger keeps scanning, so its count in the reply lies between these two readings.
  for (let i = 0; i < 10 && appliance.merger!.stats().fullScans < 2; i++) appliance.merger!.scan();
  const scansBefore = appliance.merger!.stats().fullScans;
  const stats = await call('GET', '/v1/stats');
  const scansAfter = appliance.merger!.stats().fullScans;
  assert.equal(stats.status, 200);
  assert.equal(stats.json.regions, 2);
  assert.equal(stats.json.memory.usedBytes, MiB);
  assert.equal(stats.json.memory.capacityBytes, 64 * MiB);
  assert.equal(stats.json.endpoints.nbd.port, appliance.nbdAddress.port);
  const fullScans = stats.json.merger.fullScans;
  assert.ok(
    scansBefore >= 2 && Number.isInteger(fullScans) && fullScans >= scansBefore && fullScans <= scansAfter,
    `merger.fullScans ${fullScans} outside [${scansBefore}, ${scansAfter}]`,
  );
  assert.equal(stats.json.merger.pagesShared, 0, 'distinct pages: nothing merged');
  const metrics = await call('GET', '/metrics');
  assert.equal(metrics.status, 200);
  assert.match(metrics.text, /^memfabric_memory_used_bytes 1048576$/m);
  assert.match(metrics.text, /^memfabric_region_resident_bytes\{region="cache",tenant="t2"\} 1048576$/m);
  assert.match(metrics.text, /^memfabric_region_operations_total\{region="cache",op="write"\} 1$/m);
  assert.match(metrics.text, /^# TYPE memfabric_nbd_requests_total counter$/m);
  const page = await call('GET', '/');
  assert.equal(page.status, 200);
  assert.match(page.text, /<td>cache<\/td>/);
  assert.match(page.text, new RegExp(`nbdinfo nbd://127.0.0.1:${appliance.nbdAddress.port}/cache`));
  assert.match(page.text, /1 MiB of 64 MiB used/);
});

test('a malformed body is refused with a message that names the field and says what it must be', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  const cases: [unknown, RegExp][] = [
    [
      { name: 'a', size: 0 },
      /^field 'size' must be a size: a whole number of bytes, 1 or more, or a string such as "1GiB"$/,
    ],
    [
      { name: 'a', size: 5, colour: 'red' },
      /^unknown field 'colour' \(this request takes: name, size, readOnly, tenant, file, descriptor\)$/,
    ],
    [{ size: 5 }, /^missing field 'name': give a name of 1 to 128 characters$/],
    [{ name: 'a', size: 5, readOnly: 'yes' }, /^field 'readOnly' must be of type boolean$/],
    [[1, 2], /^the request body must be a JSON object$/],
  ];
  for (const [body, message] of cases) {
    const reply = await call('POST', '/v1/regions', body);
    assert.equal(reply.status, 400, JSON.stringify(body));
    assert.equal(reply.json.error.code, ErrorCodes.BAD_REQUEST);
    assert.match(reply.json.error.message, message, JSON.stringify(body));
  }
});

test('starting on an address in use fails with a typed error naming the flag to change, and starts nothing', async (t) => {
  const { appliance } = await start();
  t.after(() => appliance.stop());
  const busyNbd = Appliance.start({
    memory: '4MiB',
    nbd: { port: appliance.nbdAddress.port },
    http: { port: 0 },
  });
  await assert.rejects(busyNbd, (error: MemfabricError) => {
    assert.equal(error.code, ErrorCodes.LISTEN_FAILED);
    assert.match(
      error.message,
      new RegExp(
        `^cannot listen for NBD on 127.0.0.1:${appliance.nbdAddress.port}: the address is in use: .*--nbd HOST:PORT \\(:0 picks a free port\\)$`,
      ),
    );
    return true;
  });
  const busyHttp = Appliance.start({
    memory: '4MiB',
    nbd: { port: 0 },
    http: { port: appliance.httpAddress.port },
  });
  await assert.rejects(
    busyHttp,
    (error: MemfabricError) =>
      error.code === ErrorCodes.LISTEN_FAILED && /admin API.*--http/.test(error.message),
  );
  // The refused appliances released their NBD listener: the first still serves, and the port the
  // second bound for NBD before its admin API failed is free again.
  assert.equal((await fetch(`http://127.0.0.1:${appliance.httpAddress.port}/v1/stats`)).status, 200);
});

test('a region larger than the appliance is created thin, with a warning in the reply and the log', async (t) => {
  const lines: { level: number; msg: string; region?: string }[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const { appliance, call } = await start({ logger });
  t.after(() => appliance.stop());
  const capacity = appliance.pool.capacity * appliance.pool.pageSize;
  const fits = await call('POST', '/v1/regions', { name: 'fits', size: capacity });
  assert.equal(fits.status, 201);
  assert.equal(fits.json.warnings, undefined);
  const big = await call('POST', '/v1/regions', { name: 'big', size: '1TiB' });
  assert.equal(big.status, 201);
  assert.equal(big.json.stats.residentBytes, 0);
  assert.equal(big.json.warnings.length, 1);
  assert.match(
    big.json.warnings[0],
    /^region big \(1 TiB\) is larger than this appliance's memory \(.+\): regions are thin, but writes fail with ENOSPC/,
  );
  const warned = lines.filter((line) => line.level === 40);
  assert.deepEqual(
    warned.map((line) => [line.region, line.msg]),
    [['big', big.json.warnings[0]]],
  );
});
