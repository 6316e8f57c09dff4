/**
 * The merger whatever the layout (issue 13): scattered pages over a huge sparse space merge;
 * the budget counts resident pages and time (never empty slots), and cannot starve; progress
 * is reported; the background share is validated; and, as a property, full scans leave every
 * set of identical pages in one frame while every page reads its own bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, FramePool, SamePageMerger } from '../../src/index.js';
import { ErrorCodes } from '../../src/errors.js';
import { checkPoolInvariants } from './invariants.js';
import { checkSlotReferences, MapPaging } from './paging-backend.js';

const PAGE = 4096;
const LEAF_PAGES = 512;
const TiB = 2 ** 40;

function page(fill: number, salt = 0): Buffer {
  const bytes = Buffer.alloc(PAGE, fill);
  bytes.writeUInt32LE(salt, 100);
  return bytes;
}

/** Page `i` of a scattered layout: one page per leaf, `stride` leaves apart. */
function scattered(i: number, stride: number): number {
  return i * stride * LEAF_PAGES + ((i * 37) % LEAF_PAGES);
}

test('pages scattered one per leaf over 1 TiB merge, and a page budget pays per page, not per leaf slot', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const sparse = new AddressSpace(pool, { size: TiB });
  const dense = new AddressSpace(pool, { size: 1024 * PAGE });
  merger.register(sparse);
  merger.register(dense);
  const count = 600;
  const stride = 500; // leaves apart: 600 pages span 300,000 of the space's 524,288 leaves
  // Every scattered page has a twin among the dense space's pages (content i % 300).
  for (let i = 0; i < count; i++) sparse.write(scattered(i, stride) * PAGE, page(1, i % 300));
  for (let i = 0; i < 300; i++) dense.write(i * PAGE, page(1, i));
  assert.equal(pool.used, 900);
  const budget = 50;
  let calls = 0;
  while (merger.stats().fullScans === 0) {
    const result = merger.scan({ maxPages: budget });
    calls++;
    assert.ok(
      result.pagesScanned <= budget + LEAF_PAGES,
      'a call stops at the leaf boundary past its budget',
    );
    assert.ok(calls <= 100, `a full scan over 900 resident pages took more than 100 calls of ${budget}`);
  }
  // 600 one-page leaves + 1 dense leaf of 300: 900 pages of budget, not 600 × 512 slots.
  assert.ok(calls <= Math.ceil(900 / budget) + 2, `took ${calls} calls`);
  assert.equal(pool.used, 300, 'each scattered page shares its dense twin');
  const back = Buffer.alloc(PAGE);
  for (let i = 0; i < count; i++) {
    sparse.read(scattered(i, stride) * PAGE, back);
    assert.ok(back.equals(page(1, i % 300)), `scattered page ${i}`);
  }
  // A bounded call runs on into the next full scan; end that one, then count a whole one.
  merger.scan();
  const visited = merger.stats().pagesVisited;
  merger.scan();
  assert.equal(merger.stats().pagesVisited - visited, 900, 'a full scan visits each resident page once');
  checkPoolInvariants(pool, [sparse, dense]);
});

test('the budget cannot starve: empty leaves and settled pages still end every call and every full scan', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const space = new AddressSpace(pool, { size: TiB });
  merger.register(space);
  // 200 leaves that hold nothing (written, then trimmed) and 50 of one identical page each.
  for (let i = 0; i < 200; i++) {
    space.write(scattered(i, 97) * PAGE, page(3, i));
    space.trim(scattered(i, 97) * PAGE, PAGE);
  }
  for (let i = 200; i < 250; i++) space.write(scattered(i, 97) * PAGE, page(4));
  assert.equal(space.stats().leaves, 250);
  for (const budget of [{ maxPages: 1 }, { maxPages: 0 }, { maxMs: 0 }, { maxPages: 1, maxMs: 0 }]) {
    const before = merger.stats().fullScans;
    let calls = 0;
    // Each call visits at least one leaf: a full scan of 250 leaves ends within 250 calls.
    while (merger.stats().fullScans === before) {
      merger.scan(budget);
      assert.ok(++calls <= 252, `budget ${JSON.stringify(budget)}: no full scan after ${calls} calls`);
    }
  }
  assert.equal(pool.used, 1, 'the fifty identical pages share one frame');
  // An unbounded call over a settled space ends too, after one full scan.
  const scans = merger.stats().fullScans;
  merger.scan();
  assert.equal(merger.stats().fullScans, scans + 1);
});

test('a call with no budget left still visits a leaf, so repeated tiny budgets progress', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const space = new AddressSpace(pool, { size: 64 * LEAF_PAGES * PAGE });
  merger.register(space);
  for (let leaf = 0; leaf < 64; leaf++) space.write(leaf * LEAF_PAGES * PAGE, page(5, leaf));
  const positions: number[] = [];
  for (let call = 0; call < 10; call++) {
    merger.scan({ maxMs: 0 });
    positions.push(merger.stats().scanPage);
  }
  for (let i = 1; i < positions.length; i++) {
    assert.ok(positions[i]! > positions[i - 1]!, `the cursor moves on every call: ${positions.join(', ')}`);
  }
});

test('progress: the position, fraction, visits and scan time advance through a full scan', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 1 });
  const a = new AddressSpace(pool, { size: TiB });
  const b = new AddressSpace(pool, { size: 16 * LEAF_PAGES * PAGE });
  merger.register(a);
  merger.register(b);
  for (let i = 0; i < 40; i++) a.write(scattered(i, 1000) * PAGE, page(6, i));
  for (let i = 0; i < 16; i++) b.write(i * LEAF_PAGES * PAGE, page(7, i));
  const idle = merger.stats();
  assert.deepEqual(
    [idle.scanSpaces, idle.scanFraction, idle.pagesVisited, idle.fullScans, idle.lastFullScanMs],
    [0, 0, 0, 0, 0],
  );
  let fraction = 0;
  let visited = 0;
  let scanMs = 0;
  const spacesSeen = new Set<number>();
  while (merger.stats().fullScans === 0) {
    merger.scan({ maxPages: 4 });
    const stats = merger.stats();
    if (stats.fullScans > 0) break;
    assert.equal(stats.scanSpaces, 2);
    assert.ok(stats.scanFraction > fraction && stats.scanFraction <= 1, `fraction ${stats.scanFraction}`);
    assert.ok(stats.pagesVisited > visited);
    assert.ok(stats.scanMs >= scanMs);
    fraction = stats.scanFraction;
    visited = stats.pagesVisited;
    scanMs = stats.scanMs;
    spacesSeen.add(stats.scanSpace);
  }
  assert.deepEqual([...spacesSeen].sort(), [0, 1], 'the position went through both spaces');
  merger.scan(); // ends the full scan the last bounded call may have begun
  const done = merger.stats();
  assert.equal(done.scanSpaces, 0, 'between full scans');
  merger.scan();
  assert.equal(
    merger.stats().pagesVisited - done.pagesVisited,
    56,
    'a full scan visits each resident page once',
  );
  assert.ok(done.lastFullScanMs > 0);
  assert.ok(done.pagesVisitedPerSecond > 0 && Number.isFinite(done.pagesVisitedPerSecond));
  assert.ok(done.cpuShare > 0 && Number.isFinite(done.cpuShare));
  assert.equal(done.cpuShareTarget, 0, 'not running in the background');
});

test('saving is reported gross and net of the tables; the net may be negative', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const space = new AddressSpace(pool, { size: 64 * PAGE });
  merger.register(space);
  space.write(0, page(8, 1));
  merger.scan();
  const alone = merger.stats();
  assert.equal(alone.bytesSaved, 0, 'nothing shared: no gross saving');
  assert.ok(alone.metadataBytes > 0);
  assert.equal(alone.bytesSavedNet, -alone.metadataBytes, 'the tables alone: a negative net');
  for (let p = 1; p < 9; p++) space.write(p * PAGE, page(8, 1));
  merger.scan();
  const shared = merger.stats();
  assert.equal(shared.bytesSaved, 8 * PAGE);
  assert.equal(shared.bytesSavedNet, 8 * PAGE - shared.metadataBytes);
});

test('a page written into a settled leaf is merged in a later scan, whatever the epoch it lands in', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const space = new AddressSpace(pool, { size: 4 * LEAF_PAGES * PAGE });
  merger.register(space);
  space.write(0, page(9, 1));
  space.write(LEAF_PAGES * PAGE, page(9, 1));
  merger.scan();
  merger.scan(); // both leaves settled (every page indexed, nothing written since)
  assert.equal(pool.used, 1);
  // Trim and write in the leaf within one epoch, then again after a scan.
  space.trim(0, PAGE);
  space.write(5 * PAGE, page(9, 2));
  space.write(LEAF_PAGES * PAGE + 7 * PAGE, page(9, 2));
  merger.scan();
  merger.scan();
  assert.equal(space.frameAt(5), space.frameAt(LEAF_PAGES + 7), 'the new twins merged');
  space.write(9 * PAGE, page(9, 1));
  merger.scan();
  merger.scan();
  assert.equal(space.frameAt(9), space.frameAt(LEAF_PAGES), 'and a page written after that too');
  checkPoolInvariants(pool, [space]);
});

test('a leaf trimmed and then written within one epoch, around the visit that found it settled, still merges', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const space = new AddressSpace(pool, { size: 2 * LEAF_PAGES * PAGE });
  merger.register(space);
  space.write(0, page(11, 1)); // leaf 1
  space.write(LEAF_PAGES * PAGE, page(11, 2)); // leaf 2
  space.write((LEAF_PAGES + 1) * PAGE, page(11, 3));
  merger.scan();
  merger.scan();
  merger.scan({ maxPages: 1 }); // a new full scan (a new epoch): leaf 1 only
  space.trim((LEAF_PAGES + 1) * PAGE, PAGE); // leaf 2, in this epoch, before its visit
  merger.scan({ maxPages: 1 }); // leaf 2: every resident page indexed
  space.write((LEAF_PAGES + 2) * PAGE, page(11, 1)); // same epoch again: a twin of leaf 1's page
  for (let i = 0; i < 3; i++) merger.scan();
  assert.equal(space.frameAt(LEAF_PAGES + 2), space.frameAt(0), 'the late twin merged');
  checkPoolInvariants(pool, [space]);
});

test('a merger made after another one on the same pool was destroyed scans every leaf', () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const space = new AddressSpace(pool, { size: TiB });
  for (let i = 0; i < 20; i++) space.write(scattered(i, 1000) * PAGE, page(12, i % 10));
  const first = new SamePageMerger(pool, { quietEpochs: 0 });
  first.register(space);
  first.scan({ maxPages: 5 }); // part of its first full scan
  first.destroy();
  const second = new SamePageMerger(pool, { quietEpochs: 0 });
  second.register(space);
  const result = second.scan();
  assert.equal(result.pagesScanned, 20, 'every page examined in its first full scan');
  assert.equal(pool.used, 10);
  checkPoolInvariants(pool, [space]);
});

test('the background share and slice are validated with a typed error', () => {
  const pool = new FramePool({ capacity: 1024 * 1024 });
  const merger = new SamePageMerger(pool);
  for (const cpuShare of [
    0,
    -0.1,
    1.5,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    0.0001,
    '0.1' as unknown as number,
  ]) {
    assert.throws(
      () => merger.start({ cpuShare }),
      (error: Error & { code?: string }) =>
        error.code === ErrorCodes.INVALID_ARGUMENT && /share of one core/.test(error.message),
      `cpuShare ${String(cpuShare)}`,
    );
  }
  for (const sliceMs of [0, -1, 5000, Number.NaN]) {
    assert.throws(
      () => merger.start({ sliceMs }),
      { code: ErrorCodes.INVALID_ARGUMENT },
      `sliceMs ${sliceMs}`,
    );
  }
  assert.equal(merger.running, false, 'a refused start starts nothing');
  for (const cpuShare of [0.001, 0.25, 1]) {
    merger.start({ cpuShare });
    assert.equal(merger.stats().cpuShareTarget, cpuShare);
    merger.stop();
    assert.equal(merger.stats().cpuShareTarget, 0);
  }
  merger.destroy();
});

test('in the background, timed slices complete full scans of a scattered space and report a share', async () => {
  const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 1 });
  const space = new AddressSpace(pool, { size: TiB });
  merger.register(space);
  for (let i = 0; i < 400; i++) space.write(scattered(i, 1000) * PAGE, page(10, i % 100));
  merger.start({ cpuShare: 0.5, sliceMs: 1 });
  const deadline = Date.now() + 30_000;
  while (merger.stats().fullScans < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  merger.stop();
  const stats = merger.stats();
  assert.ok(stats.fullScans >= 3, 'three full scans within 30 s');
  assert.equal(pool.used, 100, 'four copies of each of 100 pages became one');
  assert.ok(stats.scanMs > 0 && stats.cpuShare > 0);
  merger.destroy();
});

// --- Properties ----------------------------------------------------------------------------

type Op =
  | { kind: 'write'; space: number; slot: number; content: number }
  | { kind: 'trim'; space: number; slot: number }
  | { kind: 'zero'; space: number; slot: number }
  | { kind: 'share'; space: number; slot: number; from: number; fromSlot: number }
  | { kind: 'fork'; space: number }
  | { kind: 'destroy'; space: number }
  | { kind: 'evict'; space: number; slot: number }
  | { kind: 'fault'; space: number; slot: number }
  | { kind: 'scan'; maxPages: number };

/**
 * Pages the properties write: in one leaf, four adjacent pages and four in groups of their own
 * (see LeafArena's occupancy summary), then pages one per leaf far apart.
 */
const SLOTS = 24;
function slotPage(slot: number): number {
  if (slot < 4) return slot;
  return slot < 8 ? slot * 40 : scattered(slot, 3000);
}

/** Content 0 is all zeros; others a fill and a salt, so several slots share each content. */
function contentBytes(content: number): Buffer {
  return content === 0 ? Buffer.alloc(PAGE) : page(content & 0xff, content);
}

const spaceArb = fc.nat(5);
const slotArb = fc.nat(SLOTS - 1);
function opArbitrary(paged: boolean): fc.Arbitrary<Op> {
  const ops: fc.WeightedArbitrary<Op>[] = [
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant('write' as const),
        space: spaceArb,
        slot: slotArb,
        content: fc.nat(5),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('trim' as const), space: spaceArb, slot: slotArb }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('zero' as const), space: spaceArb, slot: slotArb }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('share' as const),
        space: spaceArb,
        slot: slotArb,
        from: spaceArb,
        fromSlot: slotArb,
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('fork' as const), space: spaceArb }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('destroy' as const), space: spaceArb }) },
    {
      weight: 3,
      arbitrary: fc.record({ kind: fc.constant('scan' as const), maxPages: fc.integer({ min: 1, max: 40 }) }),
    },
  ];
  if (paged) {
    ops.push(
      {
        weight: 3,
        arbitrary: fc.record({ kind: fc.constant('evict' as const), space: spaceArb, slot: slotArb }),
      },
      {
        weight: 2,
        arbitrary: fc.record({ kind: fc.constant('fault' as const), space: spaceArb, slot: slotArb }),
      },
    );
  }
  return fc.oneof(...ops);
}

/**
 * Runs `ops` on spaces of one merger (with a pager evicting and faulting pages back in when
 * `paged`), then, once writes stop, enough full scans for every page to pass its quiet interval,
 * and checks that every page reads its own bytes and that identical pages share one frame.
 * Whatever maps pages (writes, copy-on-write breaks of shared leaves and frames, forks, pages
 * shared, faults), the scan must find every page to merge: a leaf group it never looks in
 * would leave a duplicate behind.
 */
function checkMergesEverything(ops: Op[], quietEpochs: number, paged: boolean): void {
  const pool = new FramePool({ capacity: 8 * 1024 * 1024, shared: paged });
  const paging = paged ? new MapPaging(pool) : undefined;
  const merger = new SamePageMerger(pool, { quietEpochs });
  const first = new AddressSpace(pool, { size: TiB });
  merger.register(first);
  const spaces = [first];
  // The model: what each page of each space holds (absent: zeros).
  const model: Array<Map<number, number>> = [new Map()];
  const back = Buffer.alloc(PAGE);
  for (const op of ops) {
    if (op.kind === 'scan') {
      merger.scan({ maxPages: op.maxPages });
      continue;
    }
    const live = spaces.map((_, s) => s).filter((s) => !spaces[s]!.isDestroyed);
    if (live.length === 0) break;
    const s = live[op.space % live.length]!;
    const space = spaces[s]!;
    switch (op.kind) {
      case 'fork':
        if (spaces.length >= 5) break;
        spaces.push(space.fork());
        model.push(new Map(model[s]));
        break;
      case 'destroy':
        // Keep one space: the others' pages must still merge once a sharer is gone.
        if (live.length > 1) space.destroy();
        break;
      case 'write':
        space.write(slotPage(op.slot) * PAGE, contentBytes(op.content));
        model[s]!.set(op.slot, op.content);
        break;
      case 'trim':
        space.trim(slotPage(op.slot) * PAGE, PAGE);
        model[s]!.delete(op.slot);
        break;
      case 'zero':
        space.writeZeroes(slotPage(op.slot) * PAGE, PAGE);
        model[s]!.set(op.slot, 0);
        break;
      case 'share': {
        const from = live[op.from % live.length]!;
        if (spaces[from]!.frameAt(slotPage(op.fromSlot)) < 2) break; // no resident frame to share
        space.sharePage(slotPage(op.slot), spaces[from]!, slotPage(op.fromSlot));
        const content = model[from]!.get(op.fromSlot);
        if (content === undefined) model[s]!.delete(op.slot);
        else model[s]!.set(op.slot, content);
        break;
      }
      case 'evict':
        paging!.evictPage(space, slotPage(op.slot));
        break;
      case 'fault':
        space.read(slotPage(op.slot) * PAGE, back); // brings a swapped page back: not a write
        break;
    }
  }
  const spacesLeft = spaces.filter((space) => !space.isDestroyed);
  // Every page back in memory (a swapped page cannot merge), then quiet: full scans merge all.
  for (const space of spacesLeft) {
    for (let slot = 0; slot < SLOTS; slot++) space.read(slotPage(slot) * PAGE, back);
  }
  for (let i = 0; i < quietEpochs + 3; i++) merger.scan();
  const frameOf = new Map<number, number>();
  spaces.forEach((space, s) => {
    if (space.isDestroyed) return;
    for (let slot = 0; slot < SLOTS; slot++) {
      const content = model[s]!.get(slot);
      space.read(slotPage(slot) * PAGE, back);
      assert.ok(back.equals(contentBytes(content ?? 0)), `space ${s} slot ${slot} reads its bytes`);
      if (content === undefined) continue;
      const frame = space.frameAt(slotPage(slot));
      if (content === 0) {
        assert.ok(frame < 2, `a zero page needs no frame (space ${s} slot ${slot})`);
        continue;
      }
      const seen = frameOf.get(content);
      if (seen === undefined) frameOf.set(content, frame);
      else assert.equal(frame, seen, `content ${content}: one frame (space ${s} slot ${slot})`);
    }
  });
  assert.equal(pool.used, frameOf.size, 'one frame per distinct content, nothing else');
  checkPoolInvariants(pool, spacesLeft);
  if (paging) checkSlotReferences(paging, spacesLeft);
  merger.destroy();
  for (const space of spacesLeft) space.destroy();
  assert.equal(pool.used, 0);
}

test('property: after full scans identical pages share a frame and every page reads its own bytes', () => {
  fc.assert(
    fc.property(
      fc.array(opArbitrary(false), { maxLength: 60 }),
      fc.integer({ min: 0, max: 2 }),
      (ops, quietEpochs) => checkMergesEverything(ops, quietEpochs, false),
    ),
    { numRuns: 150 },
  );
});

test('property: with pages evicted and faulted back in between scans, full scans still merge every page', () => {
  fc.assert(
    fc.property(
      fc.array(opArbitrary(true), { maxLength: 60 }),
      fc.integer({ min: 0, max: 1 }),
      (ops, quietEpochs) => checkMergesEverything(ops, quietEpochs, true),
    ),
    { numRuns: 150 },
  );
});
