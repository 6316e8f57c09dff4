/**
 * Sub-allocation on the appliance: the chunk allocator on its own (unit tests and a fast-check
 * model: random claims and releases by several owners never overlap, freed chunks are reused
 * first-fit, statistics add up), then the admin API routes on a real in-process appliance.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { Appliance } from '../../src/appliance/index.js';
import { regionChunks } from '../../src/appliance/chunk-routes.js';
import {
  ALLOCATIONS_PER_OWNER_MAX,
  CHUNKS_MAX,
  ChunkAllocator,
  LIST_LIMIT_MAX,
  OWNERS_MAX,
} from '../../src/appliance/chunks.js';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { startAppliance } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;

function code(error: unknown): string | undefined {
  return error instanceof MemfabricError ? error.code : undefined;
}

function rejectsWith(fn: () => unknown, expected: string, pattern?: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.equal(code(error), expected, String(error));
    if (pattern) assert.match((error as Error).message, pattern);
    return true;
  });
}

// ---- the allocator ------------------------------------------------------------------------

test('allocator: first fit, free by offset, reuse, statistics', () => {
  const chunks = new ChunkAllocator({ regionBytes: 10 * 64 * KiB + 5, chunkBytes: 64 * KiB, pageSize: PAGE });
  assert.equal(chunks.chunks, 10, 'the tail after the last whole chunk is not handed out');
  const a = chunks.allocate('alice', 3);
  const b = chunks.allocate('bob', 2);
  const c = chunks.allocate('alice', 1);
  assert.deepEqual(a, { offset: 0, length: 3 * 64 * KiB, owner: 'alice' });
  assert.deepEqual(b, { offset: 3 * 64 * KiB, length: 2 * 64 * KiB, owner: 'bob' });
  assert.equal(c.offset, 5 * 64 * KiB);
  assert.deepEqual(chunks.stats(), {
    chunkSize: 64 * KiB,
    chunksTotal: 10,
    chunksUsed: 6,
    chunksFree: 4,
    largestFreeRun: 4,
    allocations: 3,
    owners: 2,
  });
  assert.deepEqual(chunks.owners(), [
    { owner: 'alice', allocations: 2, chunks: 4 },
    { owner: 'bob', allocations: 1, chunks: 2 },
  ]);
  assert.deepEqual(chunks.allocationAt(4 * 64 * KiB + 17), b);
  assert.equal(chunks.allocationAt(9 * 64 * KiB), undefined);

  rejectsWith(() => chunks.free(b.offset, 'alice'), ErrorCodes.CONFLICT, /another owner/);
  rejectsWith(() => chunks.free(b.offset + 64 * KiB, 'bob'), ErrorCodes.NOT_FOUND, /no allocation starts/);
  rejectsWith(() => chunks.free(7, 'bob'), ErrorCodes.NOT_FOUND);
  assert.deepEqual(chunks.free(b.offset, 'bob'), b);
  assert.equal(chunks.stats().owners, 1, 'an owner holding nothing is forgotten');
  // First fit: a one-chunk claim takes the lowest free chunk, the freed hole.
  assert.equal(chunks.allocate('carol', 1).offset, 3 * 64 * KiB);
  // Five chunks fit only after the hole: chunks 6..9 are four. Exhausted, nothing changed.
  rejectsWith(() => chunks.allocate('dave', 5), ErrorCodes.CHUNKS_EXHAUSTED, /longest free run is 4/);
  assert.equal(chunks.stats().owners, 2, 'a refused claim registers no owner');
  rejectsWith(() => chunks.allocate('dave', 11), ErrorCodes.INVALID_ARGUMENT, /can never fit/);
  assert.equal(chunks.allocate('dave', 4).offset, 6 * 64 * KiB);
  assert.equal(chunks.stats().chunksFree, 1);
  assert.equal(chunks.free(a.offset, undefined, true).owner, 'alice', 'force frees any owner');
  chunks.check();
});

test('allocator: bad arguments and bounds', () => {
  const make = (regionBytes: number, chunkBytes: number) =>
    new ChunkAllocator({ regionBytes, chunkBytes, pageSize: PAGE });
  rejectsWith(() => make(MiB, 1000), ErrorCodes.INVALID_ARGUMENT, /multiple of the page size/);
  rejectsWith(() => make(MiB, 0), ErrorCodes.INVALID_ARGUMENT);
  rejectsWith(() => make(MiB, 2 * MiB), ErrorCodes.INVALID_ARGUMENT, /larger than the region/);
  rejectsWith(() => make(2 ** 50, MiB), ErrorCodes.INVALID_ARGUMENT, /at least 1073741824/);
  assert.equal(make(CHUNKS_MAX * PAGE, PAGE).chunks, CHUNKS_MAX);
  const chunks = make(MiB, PAGE);
  for (const owner of ['', ' x', '-x', 'a/b', 'x'.repeat(129), 'ünïcode']) {
    rejectsWith(() => chunks.allocate(owner, 1), ErrorCodes.INVALID_ARGUMENT, /owner/);
  }
  for (const count of [0, -1, 1.5, Number.NaN]) {
    rejectsWith(() => chunks.allocate('ok', count), ErrorCodes.INVALID_ARGUMENT, /chunk count/);
  }
  chunks.allocate('host-1:worker@2_a.b', 1);
  chunks.check();
});

test('allocator: at most OWNERS_MAX owners and ALLOCATIONS_PER_OWNER_MAX allocations each', () => {
  const chunks = new ChunkAllocator({
    regionBytes: (ALLOCATIONS_PER_OWNER_MAX + OWNERS_MAX + 8) * PAGE,
    chunkBytes: PAGE,
    pageSize: PAGE,
  });
  for (let i = 0; i < ALLOCATIONS_PER_OWNER_MAX; i++) chunks.allocate('greedy', 1);
  rejectsWith(() => chunks.allocate('greedy', 1), ErrorCodes.CHUNKS_EXHAUSTED, /allocations/);
  for (let i = 1; i < OWNERS_MAX; i++) chunks.allocate(`owner-${i}`, 1);
  rejectsWith(() => chunks.allocate('one-too-many', 1), ErrorCodes.CHUNKS_EXHAUSTED, /owners/);
  chunks.free(ALLOCATIONS_PER_OWNER_MAX * PAGE, 'owner-1');
  assert.equal(chunks.allocate('one-too-many', 1).offset, ALLOCATIONS_PER_OWNER_MAX * PAGE);
  chunks.check();
});

test('allocator: listing pages with a cursor and filters by owner', () => {
  const chunks = new ChunkAllocator({ regionBytes: 10_000 * PAGE, chunkBytes: PAGE, pageSize: PAGE });
  for (let i = 0; i < 5000; i++) chunks.allocate(i % 2 === 0 ? 'even' : 'odd', 2);
  const first = chunks.list();
  assert.equal(first.allocations.length, LIST_LIMIT_MAX);
  assert.equal(first.next, LIST_LIMIT_MAX * 2 * PAGE);
  const rest = chunks.list({ after: first.next! });
  assert.equal(rest.allocations.length, 5000 - LIST_LIMIT_MAX);
  assert.equal(rest.next, null);
  const odd = chunks.list({ owner: 'odd', limit: 3, after: PAGE });
  assert.deepEqual(
    odd.allocations.map((a) => a.offset),
    [2 * PAGE, 6 * PAGE, 10 * PAGE],
    'an `after` inside an allocation skips it',
  );
  assert.equal(odd.next, 14 * PAGE);
  assert.deepEqual(chunks.list({ owner: 'nobody' }), { allocations: [], next: null });
});

interface Claim {
  kind: 'claim';
  owner: number;
  count: number;
}
interface Release {
  kind: 'release';
  pick: number;
  as: number;
  force: boolean;
}
interface BadRelease {
  kind: 'bad-release';
  chunk: number;
}
type Op = Claim | Release | BadRelease;

const OWNER_NAMES = ['w0', 'w1', 'w2', 'w3', 'w4'];
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('claim' as const),
      owner: fc.nat(OWNER_NAMES.length - 1),
      count: fc.integer({ min: 1, max: 9 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('release' as const),
      pick: fc.nat(),
      as: fc.nat(OWNER_NAMES.length - 1),
      force: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('bad-release' as const), chunk: fc.nat(200) }) },
);

test('allocator model: random claims and releases by several owners never overlap', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 100 }), fc.array(opArb, { maxLength: 120 }), (total, ops) => {
      const chunkBytes = 2 * PAGE;
      const chunks = new ChunkAllocator({ regionBytes: total * chunkBytes, chunkBytes, pageSize: PAGE });
      // The model: who holds each chunk (-1: free) and the allocations by first chunk.
      const holder = new Int32Array(total).fill(-1);
      const allocations = new Map<number, { owner: number; count: number }>();
      const firstFit = (count: number) => {
        for (let start = 0; start + count <= total; start++) {
          let free = true;
          for (let i = start; i < start + count && free; i++) free = holder[i] === -1;
          if (free) return start;
        }
        return -1;
      };
      for (const op of ops) {
        if (op.kind === 'claim') {
          const expected = firstFit(op.count);
          let got: number;
          try {
            got = chunks.allocate(OWNER_NAMES[op.owner]!, op.count).offset / chunkBytes;
          } catch (error) {
            const why = op.count > total ? ErrorCodes.INVALID_ARGUMENT : ErrorCodes.CHUNKS_EXHAUSTED;
            assert.equal(code(error), why, String(error));
            assert.equal(expected, -1, `refused ${op.count} chunks though ${expected} was free`);
            continue;
          }
          assert.equal(got, expected, 'first fit: the lowest free run (freed chunks are reused)');
          for (let i = got; i < got + op.count; i++) {
            assert.equal(holder[i], -1, `chunk ${i} handed out twice`);
            holder[i] = op.owner;
          }
          allocations.set(got, { owner: op.owner, count: op.count });
        } else if (op.kind === 'release') {
          if (allocations.size === 0) continue;
          const starts = [...allocations.keys()];
          const start = starts[op.pick % starts.length]!;
          const { owner, count } = allocations.get(start)!;
          const as = OWNER_NAMES[op.as]!;
          if (!op.force && op.as !== owner) {
            rejectsWith(() => chunks.free(start * chunkBytes, as), ErrorCodes.CONFLICT);
            continue;
          }
          const freed = chunks.free(start * chunkBytes, as, op.force);
          assert.deepEqual(freed, {
            offset: start * chunkBytes,
            length: count * chunkBytes,
            owner: OWNER_NAMES[owner],
          });
          holder.fill(-1, start, start + count);
          allocations.delete(start);
        } else if (!allocations.has(op.chunk)) {
          rejectsWith(() => chunks.free(op.chunk * chunkBytes, 'w0', true), ErrorCodes.NOT_FOUND);
        }
        chunks.check();
        const used = holder.reduce((n, h) => n + (h === -1 ? 0 : 1), 0);
        const stats = chunks.stats();
        assert.equal(stats.chunksUsed, used);
        assert.equal(stats.chunksUsed + stats.chunksFree, stats.chunksTotal);
        assert.equal(stats.allocations, allocations.size);
        assert.equal(stats.owners, new Set([...allocations.values()].map((a) => a.owner)).size);
        const owners = chunks.owners();
        assert.equal(
          owners.reduce((n, o) => n + o.chunks, 0),
          used,
        );
        assert.equal(
          owners.reduce((n, o) => n + o.allocations, 0),
          allocations.size,
        );
      }
      const listed = chunks.list().allocations;
      assert.deepEqual(
        listed,
        [...allocations]
          .sort(([a], [b]) => a - b)
          .map(([start, { owner, count }]) => ({
            offset: start * chunkBytes,
            length: count * chunkBytes,
            owner: OWNER_NAMES[owner],
          })),
      );
    }),
    { numRuns: 300 },
  );
});

// ---- the admin API ------------------------------------------------------------------------

/** An appliance without background merging, so chunk bytes stay as written. */
function start(options: Parameters<typeof Appliance.start>[0] = {}) {
  return startAppliance({ merge: false, ...options });
}

test('chunks API: claim, list, release; released bytes are trimmed', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  assert.equal((await call('POST', '/v1/regions', { name: 'pool', size: '16MiB' })).status, 201);
  const empty = await call('GET', '/v1/regions/pool/chunks');
  assert.deepEqual(empty.json, {
    region: 'pool',
    chunkSize: null,
    stats: null,
    owners: [],
    allocations: [],
    next: null,
  });

  const a = await call('POST', '/v1/regions/pool/chunks', { owner: 'a', chunkSize: '256KiB' });
  assert.equal(a.status, 201, a.text);
  assert.deepEqual(a.json, {
    region: 'pool',
    offset: 0,
    length: 256 * KiB,
    owner: 'a',
    chunkSize: 256 * KiB,
  });
  const b = await call('POST', '/v1/regions/pool/chunks', { owner: 'b', size: 300 * KiB });
  assert.deepEqual(b.json, {
    region: 'pool',
    offset: 256 * KiB,
    length: 512 * KiB,
    owner: 'b',
    chunkSize: 256 * KiB,
  });
  const c = await call('POST', '/v1/regions/pool/chunks', { owner: 'a', count: 3, chunkSize: 256 * KiB });
  assert.equal(c.json.offset, 768 * KiB);
  assert.equal(c.json.length, 768 * KiB);

  const region = appliance.registry.require('pool');
  region.write(b.json.offset, Buffer.alloc(b.json.length, 0xbb));
  const list = await call('GET', '/v1/regions/pool/chunks');
  assert.equal(list.status, 200);
  assert.deepEqual(list.json.allocations, [
    { offset: 0, length: 256 * KiB, owner: 'a' },
    { offset: 256 * KiB, length: 512 * KiB, owner: 'b' },
    { offset: 768 * KiB, length: 768 * KiB, owner: 'a' },
  ]);
  assert.deepEqual(list.json.stats, {
    chunkSize: 256 * KiB,
    chunksTotal: 64,
    chunksUsed: 6,
    chunksFree: 58,
    largestFreeRun: 58,
    allocations: 3,
    owners: 2,
  });
  assert.deepEqual(list.json.owners, [
    { owner: 'a', allocations: 2, chunks: 4 },
    { owner: 'b', allocations: 1, chunks: 2 },
  ]);
  const onlyA = await call('GET', '/v1/regions/pool/chunks?owner=a&limit=1');
  assert.deepEqual(onlyA.json.allocations, [{ offset: 0, length: 256 * KiB, owner: 'a' }]);
  assert.equal(onlyA.json.next, 768 * KiB, "the next of a's allocations");
  const restA = await call('GET', `/v1/regions/pool/chunks?owner=a&after=${onlyA.json.next}`);
  assert.deepEqual(
    restA.json.allocations.map((x: { offset: number }) => x.offset),
    [768 * KiB],
  );

  const used = appliance.pool.used;
  assert.equal((await call('DELETE', `/v1/regions/pool/chunks/${256 * KiB}?owner=b`)).status, 204);
  assert.equal(appliance.pool.used, used - (512 * KiB) / PAGE, 'the released chunk gave its frames back');
  const after = Buffer.alloc(b.json.length, 1);
  region.read(b.json.offset, after);
  assert.ok(
    after.every((x) => x === 0),
    "the next owner never sees the previous owner's data",
  );
  // The freed hole is reused first.
  const d = await call('POST', '/v1/regions/pool/chunks', { owner: 'd', count: 2 });
  assert.equal(d.json.offset, 256 * KiB);
  assert.equal((await call('DELETE', `/v1/regions/pool/chunks/0?force=true`)).status, 204);
  regionChunks(region)!.check();
});

test('chunks API: a claim reads as zeros even when the free chunk was written over NBD', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  const region = appliance.registry.require('default');
  region.write(0, Buffer.alloc(MiB, 0xee)); // data from before sub-allocation was enabled
  const claimed = await call('POST', '/v1/regions/default/chunks', { owner: 'x' });
  assert.equal(claimed.json.chunkSize, MiB, 'the default chunk size is 1 MiB');
  const bytes = Buffer.alloc(MiB, 1);
  region.read(0, bytes);
  assert.ok(bytes.every((x) => x === 0));
});

test('chunks API: bad requests get 4xx with a code and change nothing', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  await call('POST', '/v1/regions', { name: 'pool', size: '4MiB' });
  await call('POST', '/v1/regions', { name: 'tiny', size: '64KiB' });
  const claimed = await call('POST', '/v1/regions/pool/chunks', { owner: 'a', chunkSize: '1MiB' });
  assert.equal(claimed.status, 201);
  const ro = await call('POST', '/v1/regions/pool/clone', { name: 'ro', readOnly: true });
  assert.equal(ro.status, 201);
  const chunks = '/v1/regions/pool/chunks';
  const cases: Array<[string, string, unknown, string | undefined, number, string, RegExp?]> = [
    ['POST', chunks, {}, undefined, 400, ErrorCodes.BAD_REQUEST, /owner/],
    ['POST', chunks, { owner: 'a', colour: 'red' }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: 5 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: '' }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: 'a/b' }, undefined, 400, ErrorCodes.INVALID_ARGUMENT, /owner/],
    ['POST', chunks, { owner: 'a', count: 0 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: 'a', count: 1.5 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: 'a', size: -4 }, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: 'a', size: 'lots' }, undefined, 400, ErrorCodes.INVALID_SIZE],
    ['POST', chunks, { owner: 'a', size: '0' }, undefined, 400, ErrorCodes.INVALID_ARGUMENT],
    [
      'POST',
      chunks,
      { owner: 'a', size: 1, count: 1 },
      undefined,
      400,
      ErrorCodes.INVALID_ARGUMENT,
      /not both/,
    ],
    ['POST', chunks, { owner: 'a', count: 5 }, undefined, 400, ErrorCodes.INVALID_ARGUMENT, /never fit/],
    ['POST', chunks, undefined, '{"owner":', 400, ErrorCodes.BAD_REQUEST],
    ['POST', chunks, { owner: 'a', chunkSize: '64KiB' }, undefined, 409, ErrorCodes.CONFLICT, /1048576/],
    ['POST', chunks, { owner: 'a', count: 4 }, undefined, 507, ErrorCodes.CHUNKS_EXHAUSTED, /3 of 4/],
    ['POST', '/v1/regions/nope/chunks', { owner: 'a' }, undefined, 404, ErrorCodes.NOT_FOUND],
    ['POST', '/v1/regions/ro/chunks', { owner: 'a' }, undefined, 409, ErrorCodes.READ_ONLY],
    [
      'POST',
      '/v1/regions/tiny/chunks',
      { owner: 'a' },
      undefined,
      400,
      ErrorCodes.INVALID_ARGUMENT,
      /larger/,
    ],
    [
      'POST',
      '/v1/regions/tiny/chunks',
      { owner: 'a', chunkSize: 1000 },
      undefined,
      400,
      ErrorCodes.INVALID_ARGUMENT,
      /page size/,
    ],
    ['GET', `${chunks}?colour=red`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['GET', `${chunks}?after=-1`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['GET', `${chunks}?limit=0`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['GET', '/v1/regions/nope/chunks', undefined, undefined, 404, ErrorCodes.NOT_FOUND],
    ['DELETE', `${chunks}/0`, undefined, undefined, 400, ErrorCodes.INVALID_ARGUMENT, /owner/],
    ['DELETE', `${chunks}/0?owner=b`, undefined, undefined, 409, ErrorCodes.CONFLICT, /another owner/],
    ['DELETE', `${chunks}/0?owner=a&force=yes`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['DELETE', `${chunks}/0?owner=a&x=1`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['DELETE', `${chunks}/-5?owner=a`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['DELETE', `${chunks}/0x10?owner=a`, undefined, undefined, 400, ErrorCodes.BAD_REQUEST],
    ['DELETE', `${chunks}/${MiB}?owner=a`, undefined, undefined, 404, ErrorCodes.NOT_FOUND],
    ['DELETE', `${chunks}/4096?owner=a`, undefined, undefined, 404, ErrorCodes.NOT_FOUND],
    ['DELETE', '/v1/regions/tiny/chunks/0?owner=a', undefined, undefined, 404, ErrorCodes.NOT_FOUND],
    ['DELETE', '/v1/regions/nope/chunks/0?owner=a', undefined, undefined, 404, ErrorCodes.NOT_FOUND],
  ];
  for (const [method, path, body, raw, status, expected, pattern] of cases) {
    const response = await call(method, path, body, raw);
    const what = `${method} ${path} ${raw ?? JSON.stringify(body)}: ${response.text}`;
    assert.equal(response.status, status, what);
    assert.equal(response.json.error.code, expected, what);
    assert.ok(response.json.error.message.length > 10, what);
    if (pattern) assert.match(response.json.error.message, pattern, what);
  }
  const list = await call('GET', chunks);
  assert.deepEqual(list.json.allocations, [{ offset: 0, length: MiB, owner: 'a' }], 'nothing changed');
  assert.equal(regionChunks(appliance.registry.require('tiny')), undefined, 'refused claims enable nothing');
  assert.equal(regionChunks(appliance.registry.require('ro')), undefined);
});

test('chunks API: deleting the region drops its allocator', async (t) => {
  const { appliance, call } = await start();
  t.after(() => appliance.stop());
  await call('POST', '/v1/regions', { name: 'pool', size: '4MiB' });
  await call('POST', '/v1/regions/pool/chunks', { owner: 'a', count: 4, chunkSize: '1MiB' });
  assert.equal((await call('DELETE', '/v1/regions/pool')).status, 204);
  assert.equal((await call('GET', '/v1/regions/pool/chunks')).status, 404);
  await call('POST', '/v1/regions', { name: 'pool', size: '4MiB' });
  const fresh = await call('GET', '/v1/regions/pool/chunks');
  assert.equal(fresh.json.chunkSize, null, 'a new region of the same name starts without chunks');
  const claimed = await call('POST', '/v1/regions/pool/chunks', { owner: 'b', chunkSize: '512KiB' });
  assert.equal(claimed.status, 201, 'and may choose another chunk size');
  assert.equal(claimed.json.offset, 0);
});
