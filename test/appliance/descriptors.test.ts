/**
 * Region descriptors on a real appliance (in-process, real sockets): given at create, listed,
 * replaced only by a higher generation (atomically, also under concurrent PUTs), refused when
 * malformed, confined to the region's tenant, kept in a file-backed region's metadata across a
 * stop and start (the real-process restart is descriptor-restart.test.ts), carried by
 * migration (also a replacement made while the migration runs), and reached through
 * ApplianceDirectory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { DESCRIPTOR_BYTES_MAX } from '../../src/catalog/descriptor.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { ApplianceDirectory } from '../../src/fabric/directory.js';
import type { MigrationStatus } from '../../src/appliance/migration.js';
import { adminProxy } from './admin-proxy.js';
import { TEST_TOKEN, bearer, startAppliance, testAuth, type ApiAnswer } from './harness.js';

const MiB = 1024 * 1024;

function descriptor(generation: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { format: 1, id: 'r-1', name: 'vol', generation, shards: [{ index: 0 }], ...extra };
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-descriptors-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a descriptor given at create is listed with the region and its connection count', async (t) => {
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  const d = descriptor(1, { nested: { list: [1, 'two', null], flag: true } });
  const created = await call('POST', '/v1/regions', { name: 's0', size: MiB, descriptor: d });
  assert.equal(created.status, 201);
  assert.deepEqual(created.json.descriptor, d);
  assert.equal(created.json.connections, 0);
  assert.equal((await call('POST', '/v1/regions', { name: 'bare', size: MiB })).status, 201);

  const listed = (await call('GET', '/v1/regions')).json.regions as Array<Record<string, unknown>>;
  assert.deepEqual(
    listed.map((r) => [r.name, r.descriptor, r.connections]),
    [
      ['bare', undefined, 0],
      ['s0', d, 0],
    ],
  );
  assert.equal('descriptor' in listed[0]!, false, 'no descriptor field when none is set');
  assert.deepEqual((await call('GET', '/v1/regions/s0')).json.descriptor, d);
  // The stored copy is the appliance's own: changing the object given changes nothing.
  (d.nested as { flag: boolean }).flag = false;
  assert.equal(
    ((await call('GET', '/v1/regions/s0')).json.descriptor.nested as { flag: boolean }).flag,
    true,
  );
});

test('malformed descriptors are refused with 400 naming the field, and nothing is created', async (t) => {
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'x', size: MiB, descriptor: descriptor(0) })).status,
    201,
  );
  const big = descriptor(1, { pad: 'x'.repeat(DESCRIPTOR_BYTES_MAX) });
  const cases: Array<[unknown, RegExp]> = [
    [[1, 2], /descriptor/],
    ['text', /descriptor/],
    [null, /descriptor/],
    [{ id: 'no generation' }, /descriptor\.generation/],
    [descriptor(-1), /descriptor\.generation/],
    [descriptor(1.5), /descriptor\.generation/],
    [descriptor(2 ** 53), /descriptor\.generation/],
    [{ generation: '3' }, /descriptor\.generation/],
    [big, new RegExp(`at most ${DESCRIPTOR_BYTES_MAX}`)],
  ];
  for (const [value, message] of cases) {
    const created = await call('POST', '/v1/regions', { name: 'y', size: MiB, descriptor: value });
    assert.equal(created.status, 400, JSON.stringify(value)?.slice(0, 80));
    assert.ok(
      [ErrorCodes.INVALID_ARGUMENT, ErrorCodes.BAD_REQUEST].includes(created.json.error.code),
      created.json.error.code,
    );
    assert.match(created.json.error.message, message);
    const put = await call('PUT', '/v1/regions/x/descriptor', { descriptor: value });
    assert.equal(put.status, 400);
    assert.match(put.json.error.message, message);
  }
  // Nesting deep enough to overflow a recursive serializer is refused, and the server survives.
  for (const depth of [33, 30_000]) {
    const raw = `{"name":"y","size":4096,"descriptor":{"generation":1,"a":${'['.repeat(depth)}${']'.repeat(depth)}}}`;
    const deep = await call('POST', '/v1/regions', undefined, raw);
    assert.equal(deep.status, 400, `depth ${depth}: ${deep.text.slice(0, 200)}`);
    assert.match(deep.json.error.message, /deeper than 32 levels/);
  }
  assert.equal(appliance.registry.find('y'), undefined);
  assert.deepEqual(appliance.registry.require('x').descriptor, descriptor(0), 'the stored one is unchanged');
  const nested32 = descriptor(1, { a: JSON.parse(`${'['.repeat(31)}${']'.repeat(31)}`) });
  assert.equal((await call('PUT', '/v1/regions/x/descriptor', { descriptor: nested32 })).status, 200);
  // Exactly the bound is kept.
  const fits = descriptor(2);
  fits.pad = 'x'.repeat(DESCRIPTOR_BYTES_MAX - JSON.stringify({ ...fits, pad: '' }).length);
  assert.equal(JSON.stringify(fits).length, DESCRIPTOR_BYTES_MAX);
  assert.equal((await call('PUT', '/v1/regions/x/descriptor', { descriptor: fits })).status, 200);
  // The body must be { descriptor } and nothing else.
  assert.equal((await call('PUT', '/v1/regions/x/descriptor', { generation: 5 })).status, 400);
  assert.equal(
    (await call('PUT', '/v1/regions/x/descriptor', { descriptor: descriptor(9), extra: 1 })).status,
    400,
  );
  assert.equal((await call('PUT', '/v1/regions/nope/descriptor', { descriptor: descriptor(9) })).status, 404);
});

test('PUT replaces the descriptor iff its generation is higher (a model of any sequence)', async (t) => {
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.option(fc.nat({ max: 20 }), { nil: undefined }),
      fc.array(fc.nat({ max: 20 }), { maxLength: 12 }),
      async (initial, generations) => {
        const name = `p${run++}`;
        const body = {
          name,
          size: MiB,
          ...(initial !== undefined ? { descriptor: descriptor(initial) } : {}),
        };
        assert.equal((await call('POST', '/v1/regions', body)).status, 201);
        let stored = initial;
        for (const [i, generation] of generations.entries()) {
          const put = await call('PUT', `/v1/regions/${name}/descriptor`, {
            descriptor: descriptor(generation, { step: i }),
          });
          if (stored === undefined || generation > stored) {
            assert.equal(put.status, 200);
            assert.deepEqual(put.json, { generation });
            stored = generation;
          } else {
            assert.equal(put.status, 409);
            assert.equal(put.json.error.code, ErrorCodes.STALE_GENERATION);
            assert.match(put.json.error.message, new RegExp(`generation ${stored}\\b`));
            assert.match(put.json.error.message, /reopen/);
          }
        }
        const got = (await call('GET', `/v1/regions/${name}`)).json.descriptor;
        assert.equal(got?.generation, stored);
        assert.equal((await call('DELETE', `/v1/regions/${name}`)).status, 204);
      },
    ),
    { numRuns: 40 },
  );
});

for (const file of [false, true]) {
  test(`concurrent PUTs (${file ? 'file-backed' : 'memory'}): one winner per generation, the highest stays`, async (t) => {
    const dataDir = tempDir(t);
    const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false, dataDir });
    t.after(() => appliance.stop());
    assert.equal(
      (await call('POST', '/v1/regions', { name: 'c', size: MiB, file, descriptor: descriptor(1) })).status,
      201,
    );
    // 8 clients race to install generation 2, then 24 PUTs of generations 3..10 in any order.
    const same = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        call('PUT', '/v1/regions/c/descriptor', { descriptor: descriptor(2, { client: i }) }),
      ),
    );
    assert.deepEqual(same.map((a) => a.status).sort(), [200, ...Array<number>(7).fill(409)]);
    const winner = same.findIndex((a) => a.status === 200);
    assert.equal(appliance.registry.require('c').descriptor?.client, winner);
    const mixed = await Promise.all(
      [3, 10, 4, 9, 5, 8, 6, 7, 3, 10, 4, 9, 5, 8, 6, 7, 3, 10, 4, 9, 5, 8, 6, 7].map((g, i) =>
        call('PUT', '/v1/regions/c/descriptor', { descriptor: descriptor(g, { put: i }) }),
      ),
    );
    const accepted = mixed.filter((a) => a.status === 200).map((a) => a.json.generation as number);
    assert.ok(mixed.every((a) => a.status === 200 || a.json.error.code === ErrorCodes.STALE_GENERATION));
    assert.equal(new Set(accepted).size, accepted.length, 'no generation was accepted twice');
    assert.ok(accepted.includes(10));
    assert.equal(appliance.registry.require('c').descriptor?.generation, 10);
    if (file) {
      // What the metadata file holds is the last accepted one.
      const meta = JSON.parse(readFileSync(join(dataDir, 'c.region.json'), 'utf8'));
      assert.deepEqual(meta.descriptor, appliance.registry.require('c').descriptor);
    }
  });
}

test('a file-backed region keeps its descriptor across a stop and start; a damaged one is dropped', async (t) => {
  const dataDir = tempDir(t);
  const first = await startAppliance({ defaultRegion: false, merge: false, dataDir, auth: testAuth });
  assert.equal(
    (await first.call('POST', '/v1/regions', { name: 'f', size: MiB, file: true, descriptor: descriptor(3) }))
      .status,
    201,
  );
  assert.equal(
    (await first.call('POST', '/v1/regions', { name: 'g', size: MiB, file: true, descriptor: descriptor(1) }))
      .status,
    201,
  );
  assert.equal(
    (await first.call('PUT', '/v1/regions/f/descriptor', { descriptor: descriptor(4, { moved: true }) }))
      .status,
    200,
  );
  await first.appliance.stop();
  // g's descriptor is damaged by hand: g still loads (its data is fine), without a descriptor.
  const gMeta = join(dataDir, 'g.region.json');
  const meta = JSON.parse(readFileSync(gMeta, 'utf8'));
  meta.descriptor = { generation: -5 };
  (await import('node:fs')).writeFileSync(gMeta, JSON.stringify(meta));

  const second = await startAppliance({ defaultRegion: false, merge: false, dataDir, auth: testAuth });
  t.after(() => second.appliance.stop());
  await second.appliance.loaded;
  const f = (await second.call('GET', '/v1/regions/f')).json;
  assert.equal(f.state, 'ready');
  assert.deepEqual(f.descriptor, descriptor(4, { moved: true }));
  const g = (await second.call('GET', '/v1/regions/g')).json;
  assert.equal(g.state, 'ready');
  assert.equal(g.descriptor, undefined);
  // The generation rule holds across the restart.
  const stale = await second.call('PUT', '/v1/regions/f/descriptor', { descriptor: descriptor(4) });
  assert.equal(stale.status, 409);
  assert.equal(stale.json.error.code, ErrorCodes.STALE_GENERATION);
  assert.equal(
    (await second.call('PUT', '/v1/regions/g/descriptor', { descriptor: descriptor(0) })).status,
    200,
  );
});

test('tenant tokens: a tenant replaces its own regions’ descriptors only', async (t) => {
  const { appliance, call, callAs } = await startAppliance({
    defaultRegion: false,
    merge: false,
    auth: { tenantTokens: { a: 'token-of-tenant-a-0123456789', b: 'token-of-tenant-b-0123456789' } },
  });
  t.after(() => appliance.stop());
  const a = 'token-of-tenant-a-0123456789';
  assert.equal(
    (await callAs(a, 'POST', '/v1/regions', { name: 'ra', size: MiB, descriptor: descriptor(1) })).status,
    201,
  );
  assert.equal((await call('POST', '/v1/regions', { name: 'rb', size: MiB, tenant: 'b' })).status, 201);
  assert.equal(
    (await callAs(a, 'PUT', '/v1/regions/ra/descriptor', { descriptor: descriptor(2) })).status,
    200,
  );
  const other = await callAs(a, 'PUT', '/v1/regions/rb/descriptor', { descriptor: descriptor(2) });
  assert.equal(other.status, 404, 'another tenant’s region is as absent');
  assert.equal(appliance.registry.require('rb').descriptor, undefined);
  assert.equal(
    (await callAs(undefined, 'PUT', '/v1/regions/ra/descriptor', { descriptor: descriptor(3) })).status,
    401,
  );
  const seen = (await callAs(a, 'GET', '/v1/regions')).json.regions as Array<{ name: string }>;
  assert.deepEqual(
    seen.map((r) => r.name),
    ['ra'],
  );
});

/** Polls the migration's status until it is done or failed (bounded). */
async function migrationDone(
  call: (method: string, path: string) => Promise<ApiAnswer>,
  name: string,
): Promise<MigrationStatus> {
  for (let poll = 0; poll < 6000; poll++) {
    const status = (await call('GET', `/v1/regions/${name}/migration`)).json as MigrationStatus;
    if (status.state === 'done' || status.state === 'failed') return status;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`migration of ${name} did not finish`);
}

test('migration carries the descriptor, including one replaced while the migration runs', async (t) => {
  const a = await startAppliance({ defaultRegion: false, merge: false, auth: testAuth });
  const b = await startAppliance({ defaultRegion: false, merge: false, auth: testAuth });
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  // 1. The descriptor given at create arrives with the region.
  assert.equal(
    (await a.call('POST', '/v1/regions', { name: 'm1', size: 4 * MiB, descriptor: descriptor(7) })).status,
    201,
  );
  a.appliance.registry.require('m1').write(0, Buffer.alloc(MiB, 0x5a));
  const first = await a.call('POST', '/v1/regions/m1/migrate', { target: b.base, targetToken: TEST_TOKEN });
  assert.equal(first.status, 202);
  assert.equal((await migrationDone(a.call, 'm1')).state, 'done');
  assert.deepEqual(b.appliance.registry.require('m1').descriptor, descriptor(7));

  // 2. Replaced on A after B's region was made (B's create answer is held meanwhile): B ends
  // with the replacement, sent in the blackout.
  const proxy = await adminProxy(b.base);
  t.after(() => proxy.close());
  const create = proxy.hold('POST', '/v1/regions');
  assert.equal(
    (await a.call('POST', '/v1/regions', { name: 'm2', size: 4 * MiB, descriptor: descriptor(1) })).status,
    201,
  );
  a.appliance.registry.require('m2').write(MiB, Buffer.alloc(MiB, 0xa5));
  const second = await a.call('POST', '/v1/regions/m2/migrate', {
    target: proxy.url,
    targetToken: TEST_TOKEN,
  });
  assert.equal(second.status, 202);
  await create.held;
  assert.deepEqual(
    b.appliance.registry.require('m2').descriptor,
    descriptor(1),
    'B was made with generation 1',
  );
  const put = await a.call('PUT', '/v1/regions/m2/descriptor', {
    descriptor: descriptor(2, { during: true }),
  });
  assert.equal(put.status, 200);
  create.release();
  const done = await migrationDone(a.call, 'm2');
  assert.equal(done.state, 'done', JSON.stringify(done.error));
  assert.deepEqual(b.appliance.registry.require('m2').descriptor, descriptor(2, { during: true }));
  const bytes = Buffer.alloc(MiB);
  b.appliance.registry.require('m2').read(MiB, bytes);
  assert.ok(bytes.every((x) => x === 0xa5));
  // A forwards: a replacement sent to A now is told the region moved.
  const late = await a.call('PUT', '/v1/regions/m2/descriptor', { descriptor: descriptor(3) });
  assert.equal(late.status, 404);
  assert.match(late.json.error.message, /moved to/);
});

test('ApplianceDirectory: create with a descriptor, list, get, put, and a typed stale error', async (t) => {
  const { appliance, base } = await startAppliance({ defaultRegion: false, merge: false, auth: testAuth });
  t.after(() => appliance.stop());
  const directory = new ApplianceDirectory([base], 5000, { token: TEST_TOKEN });
  await directory.createRegion(base, { name: 'd0', size: MiB, tenant: 'blue', descriptor: descriptor(1) });
  await directory.createRegion(base, { name: 'd1', size: 2 * MiB, tenant: 'blue' });
  const listed = await directory.listRegions(base);
  assert.deepEqual(
    listed.map((r) => [r.name, r.size, r.tenant, r.state, r.connections, r.descriptor]),
    [
      ['d0', MiB, 'blue', 'ready', 0, descriptor(1)],
      ['d1', 2 * MiB, 'blue', 'ready', 0, undefined],
    ],
  );
  assert.equal(await directory.putDescriptor(base, 'd0', descriptor(2)), 2);
  const got = await directory.getRegion(base, 'd0');
  assert.ok(got && 'descriptor' in got);
  assert.deepEqual(got.descriptor, descriptor(2));
  assert.equal(await directory.getRegion(base, 'absent'), undefined);
  await assert.rejects(directory.putDescriptor(base, 'd0', descriptor(2)), (error: unknown) => {
    assert.ok(error instanceof MemfabricError);
    assert.equal(error.code, ErrorCodes.STALE_GENERATION);
    assert.match(error.message, /generation 2/);
    return true;
  });
  await assert.rejects(directory.putDescriptor(base, 'absent', descriptor(1)), {
    code: ErrorCodes.NOT_FOUND,
  });
  // Bearer for a raw call: the descriptor route needs a token.
  const raw = await fetch(`${base}/v1/regions/d0/descriptor`, {
    method: 'PUT',
    headers: { ...bearer(TEST_TOKEN), 'content-type': 'application/json' },
    body: JSON.stringify({ descriptor: descriptor(3) }),
  });
  assert.equal(raw.status, 200);
});
