/**
 * Blocking reads of a local file store taken on the calling thread (direct-read.ts): they answer
 * exactly what the store would (queued writes from the queue, unwritten and discarded slots as
 * zeros, written slots from the file), for a named and a temporary swap file; the descriptor is
 * the channel's own and closes with it. Then the pager end to end, as a property: whatever mix
 * of writes, evictions, single and batched (read-ahead) faults and async loads, every page reads
 * back its own bytes at its own address.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import type { StoreSpec } from '../../src/tier/page-store.js';
import { StoreChannel } from '../../src/tier/store-channel.js';
import { Pager } from '../../src/tier/pager.js';

const PAGE = 4096;
const FRAMES = 16;
const ZEROS = Buffer.alloc(PAGE);

function page(seed: number): Buffer {
  const out = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += 4) out.writeUInt32LE((Math.imul(seed + 1, 0x9e3779b1) ^ i) >>> 0, i);
  return out;
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-direct-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Descriptors of this process open on a path containing `part`. */
function descriptorsOn(part: string): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).includes(part)) count++;
    } catch {
      // closed while listing
    }
  }
  return count;
}

const linux = process.platform === 'linux';

for (const [label, spec] of [
  ['named swap file', (dir: string): StoreSpec => ({ kind: 'file', path: join(dir, 'a.swap') })],
  ['temporary swap file', (dir: string): StoreSpec => ({ kind: 'file', directory: dir })],
] as const) {
  test(
    `${label}: blocking reads on the calling thread answer what the store holds`,
    { skip: !linux },
    async (t) => {
      const dir = tempDir(t);
      const segment = new SharedArrayBuffer(PAGE * FRAMES);
      const frames = new Uint8Array(segment);
      const frame = (f: number): Buffer => Buffer.from(segment, f * PAGE, PAGE);
      const channel = await StoreChannel.open({
        spec: spec(dir),
        pageSize: PAGE,
        capacity: 256,
        segments: [segment],
      });
      t.after(() => channel.close().catch(() => undefined));

      frames.fill(0xa5);
      channel.readSync(3, 0, 0);
      assert.ok(frame(0).equals(ZEROS), 'a slot never written reads as zeros');

      for (let s = 0; s < 8; s++) channel.enqueueWrite(s, page(s));
      channel.flushSync();
      frames.fill(0xa5);
      for (let s = 0; s < 8; s++) channel.readSync(s, 0, s * PAGE);
      for (let s = 0; s < 8; s++) assert.ok(frame(s).equals(page(s)), `slot ${s} from the file`);
      const direct = channel.stats().readsDirect;
      assert.ok(direct >= 8, `the written slots were read on this thread (${direct})`);

      // A batch mixing file slots, a rewritten slot still queued, and a discarded slot.
      channel.enqueueWrite(2, page(102));
      channel.enqueueDiscard(5);
      channel.flushSync();
      channel.enqueueWrite(6, page(106)); // not flushed: may still be queued
      frames.fill(0xa5);
      const slots = Int32Array.from([1, 2, 5, 6, 7]);
      const offsets = Float64Array.from([0, 1, 2, 3, 4], (f) => f * PAGE);
      channel.readBatchSync(slots, new Int32Array(5), offsets, 5);
      assert.ok(frame(0).equals(page(1)));
      assert.ok(frame(1).equals(page(102)), 'a rewritten slot reads its newest bytes');
      assert.ok(frame(2).equals(ZEROS), 'a discarded slot reads as zeros');
      assert.ok(frame(3).equals(page(106)), 'a write not yet destaged reads back');
      assert.ok(frame(4).equals(page(7)));
      const stats = channel.stats();
      assert.ok(stats.reads >= stats.readsDirect, 'direct reads are counted among reads');

      const name = channel.storeName.split('/').pop()!;
      assert.ok(descriptorsOn(name) >= 2, 'the worker and this thread each hold a descriptor');
      await channel.close();
      assert.equal(descriptorsOn(name), 0, 'close released both descriptors');
    },
  );
}

test('a store that is not one local file reads through the worker', async (t) => {
  const segment = new SharedArrayBuffer(PAGE * FRAMES);
  const channel = await StoreChannel.open({
    spec: { kind: 'memory' },
    pageSize: PAGE,
    capacity: 64,
    segments: [segment],
  });
  t.after(() => channel.close().catch(() => undefined));
  channel.enqueueWrite(4, page(4));
  channel.flushSync();
  channel.readSync(4, 0, 0);
  assert.ok(Buffer.from(segment, 0, PAGE).equals(page(4)));
  assert.equal(channel.stats().readsDirect, 0);
  assert.ok(channel.stats().reads >= 1);
});

type Op =
  | { kind: 'write'; page: number; seed: number }
  | { kind: 'fill'; first: number; count: number; seed: number }
  | { kind: 'read'; page: number }
  | { kind: 'scan'; first: number; count: number }
  | { kind: 'shrink' }
  | { kind: 'load'; first: number; count: number };

const SPACE_PAGES = 96;

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      page: fc.nat(SPACE_PAGES - 1),
      seed: fc.nat(1e6),
    }),
  },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('read' as const), page: fc.nat(SPACE_PAGES - 1) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('scan' as const),
      first: fc.nat(SPACE_PAGES - 1),
      count: fc.integer({ min: 1, max: 40 }),
    }),
  },
  {
    // Consecutive pages written, then evicted together: neighbouring slots, read back in runs.
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('fill' as const),
      first: fc.nat(SPACE_PAGES - 1),
      count: fc.integer({ min: 2, max: 40 }),
      seed: fc.nat(1e6),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('shrink' as const) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('load' as const),
      first: fc.nat(SPACE_PAGES - 1),
      count: fc.integer({ min: 1, max: 16 }),
    }),
  },
);

test('pager on a swap file: single, batched and async faults put every page at its own address', async (t) => {
  const dir = tempDir(t);
  // One pager per (prefetch, dedup), opened once: each run takes a fresh space over it.
  const pagers = new Map<string, Pager>();
  t.after(async () => {
    for (const pager of pagers.values()) await pager.close();
  });
  const pagerFor = async (prefetch: number, dedup: boolean): Promise<Pager> => {
    const key = `${prefetch}-${dedup}`;
    let pager = pagers.get(key);
    if (pager === undefined) {
      // A budget of 16 pages for a space of 96: most reads fault, scans read ahead.
      pager = await Pager.open({
        budget: 16 * PAGE,
        prefetch,
        dedup,
        evictBatch: 4,
        store: { kind: 'file', path: join(dir, `p${key}.swap`) },
      });
      pagers.set(key, pager);
    }
    return pager;
  };
  await fc.assert(
    fc.asyncProperty(
      fc.array(opArb, { minLength: 1, maxLength: 120 }),
      fc.constantFrom(0, 3, 16),
      fc.boolean(),
      async (ops, prefetch, dedup) => {
        const pager = await pagerFor(prefetch, dedup);
        const space = pager.createSpace({ size: SPACE_PAGES * PAGE });
        try {
          const model = new Map<number, Buffer>();
          const got = Buffer.alloc(PAGE);
          const check = (p: number): void => {
            space.read(p * PAGE, got);
            const want = model.get(p) ?? ZEROS;
            assert.ok(got.equals(want), `page ${p} reads back its own bytes`);
          };
          for (const op of ops) {
            if (op.kind === 'write') {
              // Some pages repeat another's bytes, so dedup shares slots.
              const bytes = page(op.seed % 24);
              space.write(op.page * PAGE, bytes);
              model.set(op.page, bytes);
            } else if (op.kind === 'fill') {
              for (let p = op.first; p < Math.min(SPACE_PAGES, op.first + op.count); p++) {
                const bytes = page(op.seed + p);
                space.write(p * PAGE, bytes);
                model.set(p, bytes);
              }
            } else if (op.kind === 'read') {
              check(op.page);
            } else if (op.kind === 'scan') {
              for (let p = op.first; p < Math.min(SPACE_PAGES, op.first + op.count); p++) check(p);
            } else if (op.kind === 'shrink') {
              pager.shrink(0);
            } else {
              const count = Math.min(op.count, SPACE_PAGES - op.first);
              await space.load(op.first * PAGE, count * PAGE);
            }
          }
          pager.shrink(0);
          await pager.flush();
          for (let p = 0; p < SPACE_PAGES; p++) check(p);
        } finally {
          space.destroy();
        }
      },
    ),
    { numRuns: 60 },
  );
  let direct = 0;
  let prefetched = 0;
  for (const pager of pagers.values()) {
    direct += pager.stats().store.readsDirect;
    prefetched += pager.stats().prefetched;
  }
  assert.ok(direct > 0, 'faults read the swap file on the calling thread');
  assert.ok(prefetched > 0, 'faults read ahead in batches');
});
