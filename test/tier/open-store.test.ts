/**
 * openPageStore's checks of its plain-data input, the test double's knobs, and the memory
 * store's memory accounting. The contract itself is in store-conformance.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { MEMORY_CHUNK_BYTES, MemoryPageStore } from '../../src/tier/memory-store.js';
import { openPageStore } from '../../src/tier/open-store.js';
import type { StoreSpec } from '../../src/tier/page-store.js';
import { TestPageStore } from '../../src/tier/test-store.js';

const PAGE_SIZE = 4096;

function invalid(...fragments: string[]) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, ErrorCodes.INVALID_ARGUMENT, error.message);
    for (const fragment of fragments)
      assert.ok(error.message.includes(fragment), `"${fragment}" in: ${error.message}`);
    return true;
  };
}

test('page size and capacity are checked with messages that say what is allowed', async () => {
  for (const pageSize of [0, 256, 1000, 4095, 131072, Number.NaN, '4096']) {
    await assert.rejects(
      openPageStore({ kind: 'memory' }, { pageSize: pageSize as number, capacity: 8 }),
      invalid(`pageSize ${String(pageSize)}`, 'power of two from 512 to 65536'),
    );
  }
  for (const capacity of [0, -1, 1.5, Infinity, '8']) {
    await assert.rejects(
      openPageStore({ kind: 'memory' }, { pageSize: PAGE_SIZE, capacity: capacity as number }),
      invalid(`capacity ${String(capacity)}`, 'at least 1'),
    );
  }
  await assert.rejects(
    openPageStore({ kind: 'memory' }, { pageSize: PAGE_SIZE, capacity: 2 ** 31 + 1 }),
    invalid('slots one store may have'),
  );
  for (const pageSize of [512, 65536]) {
    const store = await openPageStore({ kind: 'memory' }, { pageSize, capacity: 2 });
    assert.equal(store.pageSize, pageSize);
    await store.close();
  }
});

test('a spec that is not one of the kinds is INVALID_ARGUMENT, not a TypeError', async () => {
  const geometry = { pageSize: PAGE_SIZE, capacity: 4 };
  const bad: Array<[unknown, string]> = [
    [null, 'must be an object'],
    [{ kind: 'disk' }, "'memory', 'file', 'fabric', 'nbd', 'image', 'migration-source', 'test'"],
    [{ kind: 'file' }, 'needs path'],
    [{ kind: 'file', path: '' }, 'needs path'],
    [{ kind: 'fabric', appliances: [] }, 'needs appliances'],
    [{ kind: 'fabric', appliances: ['http://127.0.0.1:1'], redundancy: 'mirror' }, 'redundancy "mirror"'],
    [{ kind: 'fabric', appliances: ['http://127.0.0.1:1'], requestTimeoutMs: -5 }, 'requestTimeoutMs -5'],
    [{ kind: 'test', writeDelayMs: -1 }, 'writeDelayMs -1'],
    [{ kind: 'test', readDelayMs: 1e9 }, 'readDelayMs'],
    [{ kind: 'test', failWriteSlots: 3 }, 'failWriteSlots'],
  ];
  for (const [spec, fragment] of bad) {
    await assert.rejects(openPageStore(spec as StoreSpec, geometry), invalid(fragment), JSON.stringify(spec));
  }
});

test('the test store fails the writes it is told to, and keeps the rest of the contract', async () => {
  // The spec crosses a worker boundary as plain data: build it from a structured clone.
  const spec = structuredClone<StoreSpec>({ kind: 'test', failWriteSlots: [2, 5] });
  const store = await openPageStore(spec, { pageSize: PAGE_SIZE, capacity: 8 });
  assert.ok(store instanceof TestPageStore);
  const data = randomBytes(PAGE_SIZE);
  await assert.rejects(store.write(5, data), (error: unknown) => {
    assert.ok(error instanceof MemfabricError);
    assert.equal(error.code, ErrorCodes.STORE_FAILED);
    assert.match(error.message, /slot 5/);
    return true;
  });
  const back = Buffer.alloc(PAGE_SIZE, 1);
  await store.read(5, back);
  assert.ok(
    back.every((byte) => byte === 0),
    'a failed write stored nothing',
  );
  await store.write(4, data);
  await store.read(4, back);
  assert.ok(back.equals(data));
  assert.deepEqual(store.stats(), {
    reads: 2,
    writes: 2,
    discards: 0,
    flushes: 0,
    failedWrites: 1,
    failedOps: 0,
    inFlightMax: 1,
  });
  await store.close();
});

test('the test store breaks for good after failAfterOps operations, with an EIO as cause', async () => {
  const store = new TestPageStore({ kind: 'test', failAfterOps: 2 }, { pageSize: PAGE_SIZE, capacity: 8 });
  const data = randomBytes(PAGE_SIZE);
  await store.write(1, data);
  await store.read(1, Buffer.alloc(PAGE_SIZE));
  for (const op of [
    () => store.write(2, data),
    () => store.read(1, Buffer.alloc(PAGE_SIZE)),
    () => store.discard(1),
    () => store.flush(),
  ]) {
    await assert.rejects(op(), (error: unknown) => {
      assert.ok(error instanceof MemfabricError);
      assert.equal(error.code, ErrorCodes.STORE_FAILED);
      assert.equal((error.cause as { code?: string }).code, 'EIO');
      return true;
    });
  }
  assert.equal(store.stats().failedOps, 4);
  assert.throws(
    () => new TestPageStore({ kind: 'test', failAfterOps: -1 }, { pageSize: PAGE_SIZE, capacity: 8 }),
    {
      code: ErrorCodes.INVALID_ARGUMENT,
    },
  );
  await store.close();
});

test('the test store holds delayed operations in flight, and close waits for them', async () => {
  const store = new TestPageStore(
    { kind: 'test', writeDelayMs: 30, readDelayMs: 5 },
    { pageSize: 512, capacity: 8 },
  );
  const pages = Array.from({ length: 4 }, () => randomBytes(512));
  let done = 0;
  const writes = pages.map((page, slot) => store.write(slot, page).then(() => done++));
  // No sleep: close is called while all four are in flight, whatever the machine's load.
  assert.equal(store.stats().inFlightMax, 4, 'all four in flight');
  await store.close();
  assert.equal(done, 4, 'close resolved only after the writes in flight');
  await Promise.all(writes);
  await assert.rejects(store.read(0, Buffer.alloc(512)), { code: ErrorCodes.STORE_CLOSED });
});

test('the memory store takes memory a chunk at a time and gives it back', async () => {
  const store = new MemoryPageStore({ pageSize: PAGE_SIZE, capacity: 1000 });
  const slotsPerChunk = MEMORY_CHUNK_BYTES / PAGE_SIZE;
  assert.equal(store.memoryBytes, 0, 'nothing before the first write');
  const page = randomBytes(PAGE_SIZE);
  await store.write(0, page);
  await store.write(1, page);
  assert.equal(store.memoryBytes, MEMORY_CHUNK_BYTES);
  await store.write(999, page); // the last chunk holds only the slots that remain
  assert.equal(store.memoryBytes, MEMORY_CHUNK_BYTES + (1000 - 3 * slotsPerChunk) * PAGE_SIZE);
  await store.discard(0);
  assert.equal(store.memoryBytes, MEMORY_CHUNK_BYTES + (1000 - 3 * slotsPerChunk) * PAGE_SIZE);
  await store.discard(1);
  await store.discard(1); // twice: counted once
  assert.equal(store.memoryBytes, (1000 - 3 * slotsPerChunk) * PAGE_SIZE);
  await store.write(1, page);
  const back = Buffer.alloc(PAGE_SIZE);
  await store.read(0, back);
  assert.ok(
    back.every((byte) => byte === 0),
    'a slot discarded before its chunk was reallocated reads zeros',
  );
  await store.discard(1);
  await store.discard(999);
  assert.equal(store.memoryBytes, 0);
  const tiny = new MemoryPageStore({ pageSize: PAGE_SIZE, capacity: 1 });
  await tiny.write(0, page);
  assert.equal(tiny.memoryBytes, PAGE_SIZE, 'a one-slot store holds one page');
  await store.close();
  assert.equal(store.memoryBytes, 0);
});
