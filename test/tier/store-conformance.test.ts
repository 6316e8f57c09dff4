/**
 * The PageStore contract (src/tier/page-store.ts), one suite run against every store: memory,
 * file, the test double, fabric stores on real appliance processes (mirrored and coded), and
 * an nbd store on a plain region of one of them.
 * A new store joins by adding one line at the bottom.
 */
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { openPageStore } from '../../src/tier/open-store.js';
import type { PageStore, StoreSpec } from '../../src/tier/page-store.js';
import { ApplianceProcess } from '../interop/appliance-process.js';

const PAGE_SIZE = 4096;
/** Not a power of two, and more than one memory-store chunk (256 slots of 4 KiB). */
const CAPACITY = 300;
/** Slots the random operations use: both ends, and both sides of the memory store's first chunk boundary. */
const MODEL_SLOTS = [0, 1, 255, 256, CAPACITY - 2, CAPACITY - 1];

type Open = () => Promise<PageStore>;

/** A page that tells which seed made it (first 4 bytes) and differs from every other seed's. */
function page(seed: number): Buffer {
  const out = Buffer.alloc(PAGE_SIZE);
  let x = seed ^ 0x9e3779b9 || 1;
  for (let i = 0; i < PAGE_SIZE; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  out.writeUInt32LE(seed >>> 0, 0);
  return out;
}

const ZEROS = Buffer.alloc(PAGE_SIZE);

async function readSlot(store: PageStore, slot: number): Promise<Buffer> {
  // Garbage first, so a store that leaves dst alone fails.
  const dst = Buffer.alloc(PAGE_SIZE, 0xa5);
  await store.read(slot, dst);
  return dst;
}

async function opened(open: Open, t: TestContext): Promise<PageStore> {
  const store = await open();
  t.after(() => store.close());
  return store;
}

function isCode(code: string) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

function pageStoreConformance(label: string, open: Open): void {
  describe(`page store conformance: ${label}`, () => {
    test('reports its geometry and a name', async (t) => {
      const store = await opened(open, t);
      assert.equal(store.pageSize, PAGE_SIZE);
      assert.equal(store.capacity, CAPACITY);
      assert.ok(store.name.length > 0);
    });

    test('fresh slots read as zeros', async (t) => {
      const store = await opened(open, t);
      for (const slot of [0, 1, 150, CAPACITY - 1]) {
        assert.ok((await readSlot(store, slot)).equals(ZEROS), `slot ${slot}`);
      }
    });

    test('random writes, discards and reads agree with a model', async (t) => {
      const store = await opened(open, t);
      // Each run starts from empty slots and its own model, so a shrunk counterexample replays
      // alone; the bytes come from the generated seeds.
      let model = new Map<number, Buffer>();
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({
              op: fc.constantFrom('write', 'discard', 'read'),
              slot: fc.constantFrom(...MODEL_SLOTS),
              seed: fc.integer({ min: 0, max: 0xffff_ffff }),
            }),
            { maxLength: 16 },
          ),
          async (ops) => {
            model = new Map<number, Buffer>();
            for (const slot of MODEL_SLOTS) await store.discard(slot);
            for (const { op, slot, seed } of ops) {
              if (op === 'write') {
                const data = page(seed);
                await store.write(slot, data);
                model.set(slot, data);
              } else if (op === 'discard') {
                await store.discard(slot);
                model.delete(slot);
              } else {
                const back = await readSlot(store, slot);
                assert.ok(back.equals(model.get(slot) ?? ZEROS), `slot ${slot} after ${JSON.stringify(ops)}`);
              }
            }
          },
        ),
        { numRuns: 20 },
      );
      for (const slot of MODEL_SLOTS) {
        assert.ok((await readSlot(store, slot)).equals(model.get(slot) ?? ZEROS), `slot ${slot} at the end`);
      }
    });

    test('discard makes a slot read zeros and leaves its neighbours alone', async (t) => {
      const store = await opened(open, t);
      const pages = [page(1), page(2), page(3)];
      for (const [i, data] of pages.entries()) await store.write(10 + i, data);
      await store.discard(11);
      assert.ok((await readSlot(store, 11)).equals(ZEROS));
      assert.ok((await readSlot(store, 10)).equals(pages[0]!));
      assert.ok((await readSlot(store, 12)).equals(pages[2]!));
      await store.discard(11);
      await store.discard(200); // never written
      assert.ok((await readSlot(store, 200)).equals(ZEROS));
      const again = page(4);
      await store.write(11, again);
      assert.ok((await readSlot(store, 11)).equals(again), 'a discarded slot can be written again');
    });

    test('an overwrite replaces the whole page', async (t) => {
      const store = await opened(open, t);
      await store.write(7, randomBytes(PAGE_SIZE));
      const second = randomBytes(PAGE_SIZE);
      await store.write(7, second);
      assert.ok((await readSlot(store, 7)).equals(second));
      await store.write(7, ZEROS);
      assert.ok((await readSlot(store, 7)).equals(ZEROS), 'a page of zeros is stored like any other');
    });

    test('the first and the last slot hold their own bytes', async (t) => {
      const store = await opened(open, t);
      const first = randomBytes(PAGE_SIZE);
      const last = randomBytes(PAGE_SIZE);
      await store.write(0, first);
      await store.write(CAPACITY - 1, last);
      assert.ok((await readSlot(store, 0)).equals(first));
      assert.ok((await readSlot(store, CAPACITY - 1)).equals(last));
      assert.ok((await readSlot(store, 1)).equals(ZEROS));
      assert.ok((await readSlot(store, CAPACITY - 2)).equals(ZEROS));
    });

    test('a slot outside [0, capacity) is OUT_OF_RANGE and changes nothing', async (t) => {
      const store = await opened(open, t);
      const kept = page(9);
      await store.write(0, kept);
      for (const slot of [-1, CAPACITY, 1.5, Number.NaN, 2 ** 40]) {
        const buffer = Buffer.alloc(PAGE_SIZE);
        await assert.rejects(() => store.read(slot, buffer), isCode(ErrorCodes.OUT_OF_RANGE), `read ${slot}`);
        await assert.rejects(() => store.write(slot, kept), isCode(ErrorCodes.OUT_OF_RANGE), `write ${slot}`);
        await assert.rejects(() => store.discard(slot), isCode(ErrorCodes.OUT_OF_RANGE), `discard ${slot}`);
      }
      await assert.rejects(
        () => store.read(CAPACITY, Buffer.alloc(PAGE_SIZE)),
        (error: MemfabricError) => error.message.includes(String(CAPACITY)),
        'the message names the slot',
      );
      assert.ok((await readSlot(store, 0)).equals(kept));
    });

    test('a buffer that is not one page is INVALID_ARGUMENT and changes nothing', async (t) => {
      const store = await opened(open, t);
      const kept = page(5);
      await store.write(3, kept);
      for (const length of [0, 1, PAGE_SIZE - 1, PAGE_SIZE + 1, 2 * PAGE_SIZE]) {
        const wrong = Buffer.alloc(length, 0xee);
        await assert.rejects(
          () => store.write(3, wrong),
          isCode(ErrorCodes.INVALID_ARGUMENT),
          `write ${length}`,
        );
        await assert.rejects(
          () => store.read(3, wrong),
          isCode(ErrorCodes.INVALID_ARGUMENT),
          `read ${length}`,
        );
        assert.ok(
          wrong.every((byte) => byte === 0xee),
          'a refused read leaves the buffer alone',
        );
      }
      assert.ok((await readSlot(store, 3)).equals(kept));
      // A view of one page inside a larger buffer is a page like any other.
      const big = Buffer.alloc(3 * PAGE_SIZE);
      await store.read(3, big.subarray(PAGE_SIZE, 2 * PAGE_SIZE));
      assert.ok(big.subarray(PAGE_SIZE, 2 * PAGE_SIZE).equals(kept));
      assert.ok(big.subarray(0, PAGE_SIZE).equals(ZEROS) && big.subarray(2 * PAGE_SIZE).equals(ZEROS));
    });

    test('concurrent operations on different slots all land', async (t) => {
      const store = await opened(open, t);
      const slots = Array.from({ length: 40 }, (_, i) => (i * 7) % CAPACITY);
      await Promise.all(slots.map((slot) => store.write(slot, page(slot + 1000))));
      // Reads, discards and overwrites interleaved, each on its own slot.
      await Promise.all(
        slots.map((slot, i) =>
          i % 3 === 0
            ? store.discard(slot)
            : i % 3 === 1
              ? store.write(slot, page(slot + 2000))
              : readSlot(store, slot).then((back) =>
                  assert.ok(back.equals(page(slot + 1000)), `slot ${slot}`),
                ),
        ),
      );
      const backs = await Promise.all(slots.map((slot) => readSlot(store, slot)));
      for (const [i, slot] of slots.entries()) {
        const expected = i % 3 === 0 ? ZEROS : page(slot + (i % 3 === 1 ? 2000 : 1000));
        assert.ok(backs[i]!.equals(expected), `slot ${slot}`);
      }
    });

    test('flush is a barrier over writes and discards in flight, and changes no slot', async (t) => {
      const store = await opened(open, t);
      await store.flush(); // nothing written yet
      const data = page(77);
      await store.write(42, data);
      await store.write(43, page(78));
      // A write and a discard still in flight when flush is called: all three settle, and the
      // slots hold what the operations left, before and after a second flush.
      const other = page(79);
      const settled = await Promise.allSettled([store.write(44, other), store.discard(43), store.flush()]);
      assert.deepEqual(
        settled.map((s) => s.status),
        ['fulfilled', 'fulfilled', 'fulfilled'],
      );
      for (let round = 0; round < 2; round++) {
        assert.ok((await readSlot(store, 42)).equals(data), 'slot 42');
        assert.ok((await readSlot(store, 43)).equals(ZEROS), 'slot 43 was discarded');
        assert.ok((await readSlot(store, 44)).equals(other), 'slot 44');
        assert.ok((await readSlot(store, 41)).equals(ZEROS), 'slot 41 was never written');
        await store.flush();
      }
    });

    test('close waits for operations in flight; then every call is STORE_CLOSED', async () => {
      const store = await open();
      const data = page(8);
      const write = store.write(5, data);
      const closed = store.close();
      await write; // started before close: it completes
      await closed;
      const buffer = Buffer.alloc(PAGE_SIZE);
      await assert.rejects(() => store.read(5, buffer), isCode(ErrorCodes.STORE_CLOSED));
      await assert.rejects(() => store.write(5, data), isCode(ErrorCodes.STORE_CLOSED));
      await assert.rejects(() => store.discard(5), isCode(ErrorCodes.STORE_CLOSED));
      await assert.rejects(() => store.flush(), isCode(ErrorCodes.STORE_CLOSED));
      // Closed wins over a bad argument: the store is gone whatever is asked of it.
      await assert.rejects(() => store.read(-1, Buffer.alloc(1)), isCode(ErrorCodes.STORE_CLOSED));
      await store.close(); // idempotent
    });
  });
}

// ---- the stores ---------------------------------------------------------------------------

const geometry = { pageSize: PAGE_SIZE, capacity: CAPACITY };

pageStoreConformance('memory', () => openPageStore({ kind: 'memory' }, geometry));

const dir = mkdtempSync(join(tmpdir(), 'memfabric-stores-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
pageStoreConformance('file', () =>
  openPageStore({ kind: 'file', path: join(dir, `${++files}.swap`) }, geometry),
);

pageStoreConformance('test double (with delays)', () =>
  openPageStore({ kind: 'test', readDelayMs: 1, writeDelayMs: 1, discardDelayMs: 1 }, geometry),
);

// Three small appliance processes: enough for two copies, or 2 data + 1 parity shards.
let appliances: ApplianceProcess[] = [];
before(async () => {
  appliances = await Promise.all(
    Array.from({ length: 3 }, () =>
      ApplianceProcess.start({ memory: '64MiB', merge: false, args: ['--default-region', ''] }),
    ),
  );
});
after(() => Promise.all(appliances.map((appliance) => appliance.stop())));

function fabricSpec(redundancy: Extract<StoreSpec, { kind: 'fabric' }>['redundancy']): StoreSpec {
  return {
    kind: 'fabric',
    appliances: appliances.map((appliance) => appliance.httpUrl),
    token: appliances[0]!.token,
    redundancy,
    name: 'conformance',
    requestTimeoutMs: 5000,
  };
}

pageStoreConformance('fabric, mirrored (2 copies)', () => openPageStore(fabricSpec({ copies: 2 }), geometry));
pageStoreConformance('fabric, coded (2 data + 1 parity)', () =>
  openPageStore(fabricSpec({ data: 2, parity: 1 }), geometry),
);

// The 'nbd' store keeps what its export holds, so every open gets a fresh (zeroed) region.
let nbdRegions = 0;
pageStoreConformance('nbd (a plain appliance region by URL)', async () => {
  const appliance = appliances[0]!;
  const name = `conformance-nbd-${++nbdRegions}`;
  const created = await fetch(`${appliance.httpUrl.replace(/\/$/, '')}/v1/regions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${appliance.token}` },
    body: JSON.stringify({ name, size: CAPACITY * PAGE_SIZE }),
  });
  assert.equal(created.status, 201, await created.text());
  return openPageStore({ kind: 'nbd', url: appliance.uri(name), requestTimeoutMs: 5000 }, geometry);
});
