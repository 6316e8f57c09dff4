import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, FramePool, SamePageMerger } from '../../src/index.js';
import { checkPoolInvariants } from './invariants.js';

const PAGE = 4096;

function page(fill: number, salt = 0): Buffer {
  const bytes = Buffer.alloc(PAGE, fill);
  bytes.writeUInt32LE(salt, 100);
  return bytes;
}

/** A merger (merging anything written before a scan, unless told otherwise) and one space. */
function setup(options: ConstructorParameters<typeof SamePageMerger>[1] = {}) {
  const pool = new FramePool({ capacity: 64 * 1024 * 1024 });
  const merger = new SamePageMerger(pool, { quietEpochs: 0, ...options });
  const parent = new AddressSpace(pool, { size: 4096 * PAGE });
  merger.register(parent);
  return { pool, merger, parent };
}

test('identical pages written in several clones merge after the configured number of passes', () => {
  const { pool, merger, parent } = setup({ quietEpochs: 2 });
  for (let p = 0; p < 64; p++) parent.write(p * PAGE, page(1, p));
  const clones = [parent.fork(), parent.fork(), parent.fork(), parent.fork()];
  // Each clone overwrites pages 0..15 with the same new contents, and 16..19 with its own.
  clones.forEach((clone, c) => {
    for (let p = 0; p < 16; p++) clone.write(p * PAGE, page(2, p));
    for (let p = 16; p < 20; p++) clone.write(p * PAGE, page(3, 1000 * (c + 1) + p));
  });
  const before = pool.used;
  assert.equal(before, 64 + 4 * 20);
  merger.scan();
  merger.scan();
  assert.equal(pool.used, before, 'not yet: two quiet scans are asked for');
  assert.ok(merger.stats().pagesVolatile > 0);
  merger.scan();
  assert.equal(pool.used, 64 + 16 + 4 * 4, 'the 4 copies of pages 0..15 became one');
  const stats = merger.stats();
  assert.equal(stats.pagesMerged, 3 * 16);
  assert.equal(
    stats.pagesShared,
    16 + (64 - 20),
    'merged primaries plus the parent pages the forks still share',
  );
  assert.ok(stats.bytesSaved > 0);
  for (const [c, clone] of clones.entries()) {
    const back = Buffer.alloc(PAGE);
    clone.read(3 * PAGE, back);
    assert.ok(back.equals(page(2, 3)));
    clone.read(17 * PAGE, back);
    assert.ok(back.equals(page(3, 1000 * (c + 1) + 17)));
  }
  checkPoolInvariants(pool, [parent, ...clones]);
});

test('pages written within the quiet interval are not merged', () => {
  const { pool, merger, parent } = setup({ quietEpochs: 1 });
  const other = new AddressSpace(pool, { size: 1024 * PAGE });
  merger.register(other);
  parent.write(0, page(5));
  other.write(0, page(5));
  for (let pass = 0; pass < 3; pass++) {
    merger.scan();
    // Rewritten after each pass: always inside the quiet interval.
    parent.write(PAGE, page(6, pass));
    other.write(PAGE, page(6, pass));
  }
  assert.equal(parent.frameAt(0), other.frameAt(0), 'the quiet pair merged');
  assert.notEqual(parent.frameAt(1), other.frameAt(1), 'the busy pair did not');
  assert.equal(merger.stats().pagesVolatile, 2);
  // Left alone, the busy pair is volatile in the next scan and merges in the one after.
  merger.scan();
  assert.notEqual(parent.frameAt(1), other.frameAt(1));
  merger.scan();
  assert.equal(parent.frameAt(1), other.frameAt(1));
});

test('a millisecond quiet interval holds back recently written pages', () => {
  const { pool, merger, parent } = setup({ quietEpochs: 0, quietMs: 60_000 });
  const other = new AddressSpace(pool, { size: 1024 * PAGE });
  merger.register(other);
  parent.write(0, page(5));
  other.write(0, page(5));
  merger.scan();
  merger.scan();
  assert.notEqual(parent.frameAt(0), other.frameAt(0), 'written less than 60 s ago');
  const eager = setup({ quietEpochs: 0, quietMs: 0 });
  const b = new AddressSpace(eager.pool, { size: 1024 * PAGE });
  eager.merger.register(b);
  eager.parent.write(0, page(5));
  b.write(0, page(5));
  eager.merger.scan();
  assert.equal(eager.parent.frameAt(0), b.frameAt(0));
});

test('a write after merging changes only the writer, and counts a COW break', () => {
  const { pool, merger, parent } = setup();
  const b = new AddressSpace(pool, { size: 1024 * PAGE });
  merger.register(b);
  parent.write(0, page(7));
  b.write(0, page(7));
  merger.scan();
  assert.equal(pool.used, 1);
  b.writeU8(10, 99);
  assert.equal(b.readU8(10), 99);
  assert.equal(parent.readU8(10), 7);
  assert.equal(merger.stats().cowBreaks, 1);
  assert.equal(pool.used, 2);
  // The primary's only user may now write it in place; it leaves the index first.
  parent.writeU8(10, 98);
  assert.equal(parent.readU8(10), 98);
  const c = new AddressSpace(pool, { size: 1024 * PAGE });
  merger.register(c);
  c.write(0, page(7));
  merger.scan();
  assert.notEqual(c.frameAt(0), parent.frameAt(0), 'the changed primary no longer matches old contents');
  checkPoolInvariants(pool, [parent, b, c]);
});

test('a hash collision never merges different pages', () => {
  const { pool, merger, parent } = setup({ hash: () => 42 });
  for (let p = 0; p < 20; p++) parent.write(p * PAGE, page(1, p % 5));
  merger.scan();
  assert.equal(pool.used, 5, 'twenty pages, five distinct contents, all with one hash');
  for (let p = 0; p < 20; p++) {
    const back = Buffer.alloc(PAGE);
    parent.read(p * PAGE, back);
    assert.ok(back.equals(page(1, p % 5)), `page ${p}`);
  }
  checkPoolInvariants(pool, [parent]);
});

test('all-zero pages map to the zero frame and give their frames back', () => {
  const { pool, merger, parent } = setup();
  parent.write(0, Buffer.alloc(32 * PAGE));
  parent.write(32 * PAGE, page(0, 1)); // zero except four bytes
  assert.equal(pool.used, 33);
  merger.scan();
  assert.equal(pool.used, 1);
  const stats = merger.stats();
  assert.equal(stats.zeroPages, 32);
  assert.equal(stats.zeroPagesMerged, 32);
  assert.equal(parent.readU32(32 * PAGE + 100), 1);
  assert.equal(parent.stats().zeroPages, 32);
});

test('no frame gets more sharers than maxSharing; a second primary takes the rest', () => {
  const { pool, merger, parent } = setup({ maxSharing: 4 });
  for (let p = 0; p < 10; p++) parent.write(p * PAGE, page(9));
  merger.scan();
  assert.equal(pool.used, 3);
  for (let p = 0; p < 10; p++) assert.ok(pool.refcount[parent.frameAt(p)]! <= 4);
  checkPoolInvariants(pool, [parent]);
});

test('trust domains: no sharing across domains unless asked', () => {
  for (const crossDomain of [false, true]) {
    const pool = new FramePool({ capacity: 16 * 1024 * 1024 });
    const merger = new SamePageMerger(pool, { crossDomain, quietEpochs: 0 });
    const tenantA = new AddressSpace(pool, { size: 64 * PAGE, domain: 'a' });
    const tenantB = new AddressSpace(pool, { size: 64 * PAGE, domain: 'b' });
    const tenantA2 = new AddressSpace(pool, { size: 64 * PAGE, domain: 'a' });
    for (const space of [tenantA, tenantB, tenantA2]) {
      merger.register(space);
      space.write(0, page(4));
    }
    merger.scan();
    assert.equal(tenantA.frameAt(0), tenantA2.frameAt(0), 'same domain merges');
    assert.equal(tenantA.frameAt(0) === tenantB.frameAt(0), crossDomain);
    assert.equal(pool.used, crossDomain ? 1 : 2);
  }
});

test('the background merger makes progress in bounded batches', async () => {
  const { pool, merger, parent } = setup();
  const b = parent.fork();
  for (let p = 0; p < 512; p++) {
    parent.write(p * PAGE, page(8, p));
    b.write(p * PAGE, page(8, p));
  }
  assert.equal(pool.used, 1024);
  merger.start({ cpuShare: 0.5, sliceMs: 1 });
  const deadline = Date.now() + 10_000;
  while (merger.stats().fullScans < 3 && Date.now() < deadline)
    await new Promise((resolve) => setImmediate(resolve));
  merger.stop();
  assert.ok(merger.stats().fullScans >= 3, 'three full scans within 10 s');
  assert.equal(pool.used, 512);
  assert.equal(merger.running, false);
});

test('a bounded scan stops at its page budget and resumes where it stopped', () => {
  const { merger, parent } = setup();
  for (let p = 0; p < 2048; p++) parent.write(p * PAGE, page(1, p));
  const results = [];
  for (let call = 0; call < 10 && merger.stats().fullScans === 0; call++) {
    results.push(merger.scan({ maxPages: 100 }));
  }
  assert.equal(merger.stats().fullScans, 1, 'the full scan completed');
  assert.ok(results.length >= 4, `took ${results.length} calls`);
  for (const result of results)
    assert.ok(result.pagesScanned <= 512, 'a call stops at the leaf boundary past its budget');
  assert.equal(
    results.reduce((sum, result) => sum + result.pagesScanned, 0),
    2048,
    'every page examined exactly once in the full scan',
  );
});

test('destroying every space frees every frame, merged or not', () => {
  const { pool, merger, parent } = setup();
  const forks = [parent.fork(), parent.fork()];
  for (const space of [parent, ...forks]) for (let p = 0; p < 8; p++) space.write(p * PAGE, page(3, p));
  merger.scan();
  assert.equal(pool.used, 8);
  for (const space of [parent, ...forks]) space.destroy();
  assert.equal(pool.used, 0);
  assert.equal(merger.registeredSpaces, 0);
  merger.destroy();
});

test('a scan reports exactly the pages it examined, merged and zeroed', () => {
  const { pool, merger, parent } = setup();
  for (let p = 0; p < 6; p++) parent.write(p * PAGE, page(5)); // six identical pages
  for (let p = 6; p < 9; p++) parent.write(p * PAGE, Buffer.alloc(PAGE)); // three written zero pages
  parent.write(9 * PAGE, page(6)); // one of its own
  const result = merger.scan();
  assert.equal(result.pagesScanned, 10);
  assert.equal(result.pagesMerged, 5, 'five pages joined the first');
  assert.equal(result.zeroPagesMerged, 3);
  const stats = merger.stats();
  assert.equal(stats.pagesScanned, 10);
  assert.equal(stats.pagesMerged, 5);
  assert.equal(stats.zeroPagesMerged, 3);
  assert.equal(pool.used, 2);
  // Merged and zero pages read back as they were written, through fresh translations.
  const back = Buffer.alloc(PAGE);
  for (let p = 0; p < 10; p++) {
    parent.read(p * PAGE, back);
    assert.ok(back.equals(p < 6 ? page(5) : p < 9 ? Buffer.alloc(PAGE) : page(6)), `page ${p}`);
  }
  // A second scan finds them merged already: nothing examined twice, nothing counted again.
  const again = merger.scan();
  assert.equal(again.pagesMerged + again.zeroPagesMerged, 0);
  assert.equal(merger.stats().pagesScanned, 10 + again.pagesScanned);
  checkPoolInvariants(pool, [parent]);
});

test('a leaf that forks share is scanned once a round, not once per space', () => {
  const { merger, parent } = setup({ quietEpochs: 4 }); // every page stays volatile: examined, never merged
  for (let p = 0; p < 8; p++) parent.write(p * PAGE, page(7, p));
  const forks = [parent.fork(), parent.fork()]; // three spaces, one leaf
  const result = merger.scan();
  assert.equal(result.pagesScanned, 8, 'the shared leaf is examined once');
  assert.equal(merger.stats().pagesVolatile, 8);
  for (const fork of forks) fork.destroy();
});

test('a merge drops cached translations: a page merged away is never read through its freed frame', () => {
  // Once a page that merges into another, once a written zero page: each scan frees one frame.
  for (const merged of [page(5), Buffer.alloc(PAGE)]) {
    const { pool, merger, parent } = setup();
    parent.write(0, page(5));
    parent.write(PAGE, merged);
    const back = Buffer.alloc(PAGE);
    for (let p = 0; p < 2; p++) parent.read(p * PAGE, back); // cache both translations
    merger.scan();
    assert.equal(pool.used, 1, 'one frame freed');
    // The freed frame is the next one handed out: fill it with other bytes.
    parent.write(3 * PAGE, page(9, 1));
    parent.read(PAGE, back);
    assert.ok(back.equals(merged), 'the merged page reads what was written');
    parent.writeU8(PAGE + 1, 0xee); // a write through the merged page copies it
    parent.read(0, back);
    assert.ok(back.equals(page(5)), 'page 0 is unchanged');
    checkPoolInvariants(pool, [parent]);
  }
});

test('with quietMs, a page merges once that long has passed since the scan after its write', async () => {
  const { merger, parent } = setup({ quietEpochs: 0, quietMs: 1 });
  const other = new AddressSpace(parent.pool, { size: 1024 * PAGE });
  merger.register(other);
  parent.write(0, page(5));
  other.write(0, page(5));
  merger.scan(); // begins the epoch after the writes; they may still be too recent
  // Wait on the clock itself (not a margin): until more than quietMs has passed.
  const since = performance.now();
  while (performance.now() - since <= 1) await new Promise((resolve) => setTimeout(resolve, 1));
  merger.scan();
  assert.equal(parent.frameAt(0), other.frameAt(0), 'quiet long enough: merged');
});

test('a copy-on-write break counts as a merged break only for a merged frame', () => {
  const { pool, merger, parent } = setup();
  parent.write(0, page(5, 1));
  const fork = parent.fork();
  fork.write(0, page(6, 1)); // copies a frame the fork shares, which no merge made
  assert.equal(pool.cowCopies, 1);
  assert.equal(merger.stats().cowBreaks, 0);
});

test('a merged frame that is freed leaves the index: the frame, handed out again, merges as usual', () => {
  const { pool, merger, parent } = setup();
  parent.write(0, page(5));
  merger.scan(); // page 0's frame is indexed
  parent.trim(0, PAGE); // and freed
  parent.write(PAGE, page(6)); // takes the freed frame
  parent.write(2 * PAGE, page(6));
  merger.scan();
  assert.equal(parent.frameAt(1), parent.frameAt(2), 'the two identical pages merged');
  assert.equal(pool.used, 1);
  checkPoolInvariants(pool, [parent]);
});
