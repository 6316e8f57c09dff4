import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { Pager, type PagerOptions } from '../../src/tier/pager.js';
import type { AddressSpace } from '../../src/memory/address-space.js';
import { LEAF_ENTRIES } from '../../src/memory/leaf-arena.js';
import { checkPoolInvariants } from '../memory/invariants.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PAGE = 4096;

/** A page's bytes for (page, version): a header that makes it unique, then a filler byte. */
function pattern(page: number, version: number, into = Buffer.alloc(PAGE)): Buffer {
  into.fill((page * 31 + version * 7 + 1) & 0xff);
  into.writeUInt32LE(page >>> 0, 0);
  into.writeUInt32LE(Math.floor(page / 2 ** 32), 4);
  into.writeUInt32LE(version, 8);
  return into;
}

let dir: string;
const pagers: Pager[] = [];

async function openPager(
  options: Partial<PagerOptions> & { budget: PagerOptions['budget'] },
): Promise<Pager> {
  const pager = await Pager.open({
    store: { kind: 'file', path: join(dir, `p${pagers.length}.swap`) },
    ...options,
  });
  pagers.push(pager);
  return pager;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'memfabric-pager-'));
});

after(async () => {
  for (const pager of pagers) await pager.close();
  await rm(dir, { recursive: true, force: true });
});

function expectPage(space: AddressSpace, page: number, expected: Buffer, scratch: Buffer): void {
  space.read(page * PAGE, scratch);
  if (!scratch.equals(expected)) {
    assert.fail(
      `page ${page}: got header ${scratch.readUInt32LE(0)}/${scratch.readUInt32LE(8)}, ` +
        `expected ${expected.readUInt32LE(0)}/${expected.readUInt32LE(8)}`,
    );
  }
}

/** Every slot's reference count equals the swapped entries plus the frames naming it. */
function checkSlotInvariants(pager: Pager, spaces: AddressSpace[]): void {
  const pool = pager.pool;
  const held = new Map<number, number>();
  const seen = new Set<number>();
  for (const space of spaces) {
    space.forEachLeaf((leaf) => {
      if (seen.has(leaf)) return;
      seen.add(leaf);
      for (let i = 0; i < LEAF_ENTRIES; i++) {
        const entry = pool.leaves.entries[leaf * LEAF_ENTRIES + i]!;
        if (entry < 0) held.set(-1 - entry, (held.get(-1 - entry) ?? 0) + 1);
      }
    });
  }
  for (let frame = 0; frame < pool.frameSlot.length; frame++) {
    const slot = pool.frameSlot[frame]! - 1;
    if (slot < 0) continue;
    assert.ok(pool.refcount[frame]! > 0, `free frame ${frame} still names slot ${slot}`);
    held.set(slot, (held.get(slot) ?? 0) + 1);
  }
  for (const [slot, count] of held) assert.equal(pager.slotReferences(slot), count, `slot ${slot}`);
  assert.equal(pager.stats().slotsInUse, held.size, 'slots in use are exactly the slots referenced');
}

describe('pager', () => {
  it('keeps a 4 GiB space under a 64 MiB budget, matching a model through random writes and reads', async () => {
    const pager = await openPager({ budget: 64 * MiB });
    const space = pager.createSpace({ size: 4 * GiB });
    const pages = space.pages;
    const model = new Map<number, number>(); // page -> version
    const scratch = Buffer.alloc(PAGE);
    const bytes = Buffer.alloc(PAGE);
    let seed = 12345;
    const random = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    // 40,000 distinct pages (156 MiB) in a 64 MiB budget: most of them must leave memory.
    const touched: number[] = [];
    for (let i = 0; i < 40_000; i++) {
      const page = random(pages);
      const version = (model.get(page) ?? 0) + 1;
      model.set(page, version);
      if (version === 1) touched.push(page);
      space.write(page * PAGE, pattern(page, version, bytes));
      if (i % 4 === 3) {
        const check = touched[random(touched.length)]!;
        expectPage(space, check, pattern(check, model.get(check)!, bytes), scratch);
      }
    }
    // Writes that straddle a page boundary mix a resident page and a swapped one.
    for (let i = 0; i < 200; i++) {
      const page = touched[random(touched.length)]!;
      if (page + 1 >= pages) continue;
      const version = (model.get(page) ?? 0) + 1;
      const next = (model.get(page + 1) ?? 0) + 1;
      const both = Buffer.concat([pattern(page, version), pattern(page + 1, next)]);
      model.set(page, version);
      model.set(page + 1, next);
      space.write(page * PAGE + 100, both.subarray(100, PAGE + 100));
      // Then make both pages whole patterns again, so the model stays one version per page.
      pattern(page, version, bytes);
      space.write(page * PAGE, bytes.subarray(0, 100));
      space.write((page + 1) * PAGE + 100, pattern(page + 1, next).subarray(100));
      touched.push(page + 1);
    }
    for (const [page, version] of model) expectPage(space, page, pattern(page, version, bytes), scratch);
    const stats = pager.stats();
    assert.ok(stats.residentBytes <= 64 * MiB, `resident ${stats.residentBytes} within the budget`);
    assert.ok(stats.evictions > 20_000, `evictions ${stats.evictions}`);
    assert.ok(stats.faults > 1000, `faults ${stats.faults}`);
    assert.ok(stats.writeBacks > 0 && stats.store.writes > 0);
    assert.equal(stats.swappedPages + space.stats().dataPages, new Set(touched).size);
    checkPoolInvariants(pager.pool, [space]);
    checkSlotInvariants(pager, [space]);
    space.destroy();
    assert.equal(pager.stats().slotsInUse, 0, 'destroying the space frees every slot');
    assert.equal(pager.pool.used, 0);
  });

  it('reports a page written since epoch N as dirty after it was evicted and faulted back', async () => {
    const pager = await openPager({ budget: 1 * MiB, prefetch: 0 });
    const space = pager.createSpace({ size: 64 * MiB });
    const bytes = Buffer.alloc(PAGE);
    for (let page = 0; page < 64; page++) space.write(page * PAGE, pattern(page, 1, bytes));
    const since = space.advanceEpoch();
    const dirty = [3, 17, 40];
    for (const page of dirty) space.write(page * PAGE, pattern(page, 2, bytes));
    pager.shrink(0);
    for (const page of [3, 17, 40, 5]) assert.ok(space.frameAt(page) < 0, `page ${page} swapped out`);
    assert.deepEqual(Array.from(space.dirtyPages(since)), dirty);
    // Fault them back (reads) and evict again: still dirty since `since`, and not since later.
    const scratch = Buffer.alloc(PAGE);
    for (let page = 0; page < 64; page++) {
      expectPage(space, page, pattern(page, dirty.includes(page) ? 2 : 1, bytes), scratch);
    }
    const later = space.advanceEpoch();
    pager.shrink(0);
    assert.deepEqual(Array.from(space.dirtyPages(since)), dirty);
    assert.equal(space.dirtyPages(later).length, 0);
    assert.equal(space.pageEpoch(17), since);
    assert.equal(space.pageEpoch(5), since - 1);
  });

  it('keeps the epoch of a page written as zeros when eviction drops it as a zero page', async () => {
    const pager = await openPager({ budget: 1 * MiB, prefetch: 0 });
    const space = pager.createSpace({ size: 64 * MiB });
    const bytes = Buffer.alloc(PAGE);
    const zeros = Buffer.alloc(PAGE);
    // Even pages hold data, odd pages zeros written as data (real frames until evicted).
    for (let page = 0; page < 64; page++) {
      space.write(page * PAGE, page % 2 === 0 ? pattern(page, 1, bytes) : zeros);
    }
    const since = space.advanceEpoch();
    const dirty = [3, 17, 40, 41];
    for (const page of dirty) space.write(page * PAGE, page % 2 === 0 ? pattern(page, 2, bytes) : zeros);
    const zeroDropsBefore = pager.stats().zeroDrops;
    pager.shrink(0);
    assert.ok(pager.stats().zeroDrops - zeroDropsBefore >= 32, 'the zero pages were dropped as zero pages');
    assert.deepEqual(Array.from(space.dirtyPages(since)), dirty);
    assert.equal(space.pageEpoch(17), since, 'a zero page written since `since` keeps its epoch');
    assert.equal(space.pageEpoch(41), since);
    assert.equal(space.pageEpoch(5), since - 1, 'a zero page written before keeps the older epoch');
    const scratch = Buffer.alloc(PAGE);
    for (let page = 0; page < 64; page++) {
      expectPage(
        space,
        page,
        page % 2 === 0 ? pattern(page, dirty.includes(page) ? 2 : 1, bytes) : zeros,
        scratch,
      );
    }
  });

  it('drops a clean page without I/O, never stores a zero page, and a full overwrite of a swapped page reads nothing', async () => {
    const pager = await openPager({ budget: 1 * MiB, prefetch: 0 });
    const space = pager.createSpace({ size: 16 * MiB });
    const bytes = Buffer.alloc(PAGE);
    space.write(0, pattern(0, 1, bytes));
    space.write(PAGE, Buffer.alloc(PAGE)); // written, but zeros
    pager.shrink(0);
    let stats = pager.stats();
    assert.equal(stats.writeBacks, 1);
    assert.equal(stats.zeroDrops, 1);
    assert.equal(stats.slotsInUse, 1);
    assert.equal(space.stats().zeroPages, 1);
    await pager.flush();
    const writes = pager.stats().store.writes;
    space.read(0, bytes); // fault in, clean
    pager.shrink(0);
    stats = pager.stats();
    assert.equal(stats.cleanDrops, 1);
    assert.equal(stats.store.writes, writes, 'a clean page is not written again');
    const reads = stats.store.reads;
    const faults = stats.faults;
    space.write(0, pattern(0, 2, bytes)); // whole page: no fetch
    assert.equal(pager.stats().faults, faults);
    assert.equal(pager.stats().store.reads, reads);
    assert.equal(pager.stats().slotsInUse, 0, 'the overwritten page gave its slot back');
  });

  for (const dedup of [true, false]) {
    it(`a frame shared by a fork and its parent is written once, then dropped clean (dedup ${dedup})`, async () => {
      const pager = await openPager({ budget: 1 * MiB, prefetch: 0, dedup });
      const parent = pager.createSpace({ size: 16 * MiB });
      const bytes = Buffer.alloc(PAGE);
      const pages = 8;
      for (let page = 0; page < pages; page++) parent.write(page * PAGE, pattern(page, 1, bytes));
      const child = parent.fork();
      // The child's first write copies the shared leaf: every frame in it now has two references.
      child.write(0, pattern(0, 2, bytes));
      const zeroEntries = pager.pool.zeroEntries;
      pager.shrink(0);
      const stats = pager.stats();
      // Each shared frame: written once where the first entry goes, dropped clean at the second.
      assert.equal(stats.writeBacks, pages + 1, 'pages 1..7 once, page 0 in both versions');
      assert.equal(stats.cleanDrops, pages - 1);
      assert.equal(stats.dedupHits, 0, 'nothing was looked up: the frame knew its slot');
      assert.equal(stats.evictions, 2 * pages, 'one eviction per entry');
      assert.equal(stats.slotsInUse, pages + 1);
      assert.equal(pager.pool.zeroEntries, zeroEntries, 'no zero pages');
      assert.equal(pager.pool.used, 0);
      checkSlotInvariants(pager, [parent, child]);
      const scratch = Buffer.alloc(PAGE);
      for (let page = 0; page < pages; page++) {
        expectPage(parent, page, pattern(page, 1, bytes), scratch);
        expectPage(child, page, pattern(page, page === 0 ? 2 : 1, bytes), scratch);
      }
      parent.destroy();
      child.destroy();
      assert.equal(pager.stats().slotsInUse, 0);
    });
  }

  it('counts zero pages dropped by eviction in the pool, and each eviction once', async () => {
    const pager = await openPager({ budget: 1 * MiB, prefetch: 0 });
    const space = pager.createSpace({ size: 16 * MiB });
    const zeros = Buffer.alloc(PAGE);
    const bytes = Buffer.alloc(PAGE);
    for (let page = 0; page < 6; page++) space.write(page * PAGE, page < 4 ? zeros : pattern(page, 1, bytes));
    const before = pager.pool.zeroEntries;
    const evictions = pager.stats().evictions;
    pager.shrink(0);
    assert.equal(pager.pool.zeroEntries - before, 4, 'four zero entries');
    assert.equal(pager.stats().evictions - evictions, 6);
    assert.equal(space.stats().zeroPages, 4);
    space.destroy();
    assert.equal(pager.pool.zeroEntries, before, 'destroying the space gives them back');
  });

  it('shares store slots across a clone chain: 8 forks evicted use one slot per distinct page', async () => {
    const pager = await openPager({ budget: 8 * MiB, prefetch: 0 });
    const parent = pager.createSpace({ size: 64 * MiB });
    const bytes = Buffer.alloc(PAGE);
    const parentPages = 200;
    for (let page = 0; page < parentPages; page++) parent.write(page * PAGE, pattern(page, 1, bytes));
    const forks = Array.from({ length: 8 }, () => parent.fork());
    const commonPages = 50; // every fork writes the same new bytes here (identical, not shared frames)
    const uniquePages = 30; // and bytes of its own here
    forks.forEach((fork, i) => {
      for (let page = 0; page < commonPages; page++)
        fork.write((1000 + page) * PAGE, pattern(1000 + page, 9, bytes));
      for (let page = 0; page < uniquePages; page++)
        fork.write((2000 + page) * PAGE, pattern(2000 + page, 10 + i, bytes));
      // A fork that rewrites a parent page with the parent's own bytes still dedups against it.
      fork.write(7 * PAGE, pattern(7, 1, bytes));
    });
    pager.shrink(0);
    const stats = pager.stats();
    const distinct = parentPages + commonPages + 8 * uniquePages;
    assert.equal(stats.slotsInUse, distinct);
    assert.ok(stats.dedupHits >= 7 * commonPages + 8, `dedup hits ${stats.dedupHits}`);
    assert.ok(stats.dedupSavedBytes >= 7 * commonPages * PAGE, `saved ${stats.dedupSavedBytes}`);
    const scratch = Buffer.alloc(PAGE);
    forks.forEach((fork, i) => {
      expectPage(fork, 7, pattern(7, 1, bytes), scratch);
      expectPage(fork, 1010, pattern(1010, 9, bytes), scratch);
      expectPage(fork, 2005, pattern(2005, 10 + i, bytes), scratch);
      expectPage(fork, 150, pattern(150, 1, bytes), scratch);
    });
    // A different chain never shares a slot with this one, even for identical bytes.
    const stranger = pager.createSpace({ size: 1 * MiB });
    stranger.write(0, pattern(1010, 9, bytes));
    pager.shrink(0);
    assert.equal(pager.stats().slotsInUse, distinct + 1);
    for (const space of [parent, ...forks, stranger]) space.destroy();
    assert.equal(pager.stats().slotsInUse, 0);
  });

  it('verifies bytes before sharing a slot: colliding hashes of different pages stay apart', async () => {
    const pager = await openPager({ budget: 1 * MiB, prefetch: 0, hash: () => 42 });
    const space = pager.createSpace({ size: 16 * MiB });
    const bytes = Buffer.alloc(PAGE);
    for (let page = 0; page < 20; page++) space.write(page * PAGE, pattern(page % 10, 1, bytes));
    pager.shrink(0);
    assert.equal(pager.stats().slotsInUse, 10);
    const scratch = Buffer.alloc(PAGE);
    for (let page = 0; page < 20; page++) expectPage(space, page, pattern(page % 10, 1, bytes), scratch);
  });

  it('loads asynchronously (load, readAsync, writeAsync) and reads ahead on sequential faults', async () => {
    const pager = await openPager({ budget: 2 * MiB, prefetch: 16 });
    const space = pager.createSpace({ size: 64 * MiB });
    const bytes = Buffer.alloc(PAGE);
    const count = 256;
    for (let page = 0; page < count; page++) space.write(page * PAGE, pattern(page, 1, bytes));
    pager.shrink(0);
    const before = pager.stats();
    await space.load(0, 64 * PAGE);
    const loaded = pager.stats();
    assert.equal(loaded.asyncLoads - before.asyncLoads, 64);
    assert.equal(loaded.faults, before.faults, 'load faults nothing synchronously');
    const scratch = Buffer.alloc(PAGE);
    for (let page = 0; page < 64; page++) expectPage(space, page, pattern(page, 1, bytes), scratch);
    assert.equal(pager.stats().faults, before.faults, 'loaded pages are resident');

    const big = Buffer.alloc(count * PAGE);
    pager.shrink(0);
    await space.readAsync(0, big); // 1 MiB chunks through a 2 MiB budget
    for (let page = 0; page < count; page++) {
      assert.ok(big.subarray(page * PAGE, (page + 1) * PAGE).equals(pattern(page, 1, bytes)), `page ${page}`);
    }
    await space.writeAsync(10 * PAGE + 5, Buffer.from('straddles'));
    space.read(10 * PAGE, scratch);
    assert.equal(scratch.subarray(5, 14).toString(), 'straddles');

    pager.shrink(0);
    const seq = pager.stats();
    for (let page = 100; page < 200; page++) expectPage(space, page, pattern(page, 1, bytes), scratch);
    const after = pager.stats();
    assert.ok(after.prefetched - seq.prefetched >= 80, `prefetched ${after.prefetched - seq.prefetched}`);
    assert.ok(
      after.faults - seq.faults <= 20,
      `faults ${after.faults - seq.faults} for 100 sequential pages`,
    );
  });

  it('a store that fails a write fails the call that needed the frame, changes nothing, and close reports it', async () => {
    const pager = await Pager.open({
      budget: 256 * KiB,
      prefetch: 0,
      evictBatch: 1,
      store: { kind: 'test', failWriteSlots: [3] },
    });
    const space = pager.createSpace({ size: 16 * MiB });
    const bytes = Buffer.alloc(PAGE);
    let failedPage = -1;
    let failure: unknown;
    for (let page = 0; page < 400 && failure === undefined; page++) {
      try {
        space.write(page * PAGE, pattern(page, 1, bytes));
      } catch (error) {
        failure = error;
        failedPage = page;
      }
    }
    assert.ok(failure instanceof MemfabricError, String(failure));
    assert.equal(failure.code, ErrorCodes.STORE_FAILED);
    assert.match(failure.message, /slot 3/);
    // The write that failed changed nothing: its page was never written.
    assert.equal(space.pageEpoch(failedPage), 0);
    assert.equal(space.readU32(failedPage * PAGE), 0);
    // Resident pages read back (no eviction needed); the failed page's bytes are still queued.
    const scratch = Buffer.alloc(PAGE);
    let resident = 0;
    for (let page = 0; page < failedPage; page++) {
      if (space.frameAt(page) < 2) continue;
      resident++;
      space.read(page * PAGE, scratch);
      assert.ok(scratch.equals(pattern(page, 1, bytes)), `page ${page}`);
    }
    assert.ok(resident > 32, `resident pages ${resident}`);
    await assert.rejects(pager.flush(), { code: ErrorCodes.STORE_FAILED });
    await assert.rejects(pager.close(), { code: ErrorCodes.STORE_FAILED });
    assert.throws(() => pager.shrink(0), { code: ErrorCodes.STORE_CLOSED });
  });

  it('keeps forks, trims and evictions consistent with a model (property)', async () => {
    const pager = await openPager({ budget: 64 * KiB, prefetch: 2, evictBatch: 4 });
    const pagesPerSpace = 48;
    type Op =
      | { kind: 'write'; space: number; page: number; value: number }
      | { kind: 'read'; space: number; page: number }
      | { kind: 'fork'; space: number }
      | { kind: 'trim'; space: number; page: number }
      | { kind: 'shrink' }
      | { kind: 'destroy'; space: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      {
        weight: 6,
        arbitrary: fc.record({
          kind: fc.constant('write' as const),
          space: fc.nat(5),
          page: fc.nat(pagesPerSpace - 1),
          value: fc.integer({ min: 0, max: 3 }),
        }),
      },
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant('read' as const),
          space: fc.nat(5),
          page: fc.nat(pagesPerSpace - 1),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('fork' as const), space: fc.nat(5) }) },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant('trim' as const),
          space: fc.nat(5),
          page: fc.nat(pagesPerSpace - 1),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('shrink' as const) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('destroy' as const), space: fc.nat(5) }) },
    );
    const page = Buffer.alloc(PAGE);
    const scratch = Buffer.alloc(PAGE);
    fc.assert(
      fc.property(fc.array(op, { minLength: 20, maxLength: 120 }), (ops) => {
        const spaces: AddressSpace[] = [pager.createSpace({ size: pagesPerSpace * PAGE })];
        const models: number[][] = [new Array<number>(pagesPerSpace).fill(-1)];
        // value -1 = zeros; 0..3 = four distinct page contents (so dedup has work)
        const fill = (value: number): Buffer => (value < 0 ? page.fill(0) : pattern(value, 77, page));
        for (const step of ops) {
          const i = step.kind === 'shrink' ? 0 : step.space % spaces.length;
          const space = spaces[i]!;
          if (step.kind === 'write') {
            space.write(step.page * PAGE, fill(step.value));
            models[i]![step.page] = step.value;
          } else if (step.kind === 'read') {
            space.read(step.page * PAGE, scratch);
            assert.ok(scratch.equals(fill(models[i]![step.page]!)), `space ${i} page ${step.page}`);
          } else if (step.kind === 'fork' && spaces.length < 6) {
            spaces.push(space.fork());
            models.push(models[i]!.slice());
          } else if (step.kind === 'trim') {
            space.trim(step.page * PAGE, PAGE);
            models[i]![step.page] = -1;
          } else if (step.kind === 'shrink') {
            pager.shrink(0);
          } else if (step.kind === 'destroy' && spaces.length > 1) {
            space.destroy();
            spaces.splice(i, 1);
            models.splice(i, 1);
          }
        }
        spaces.forEach((space, i) => {
          for (let p = 0; p < pagesPerSpace; p++) {
            space.read(p * PAGE, scratch);
            assert.ok(scratch.equals(fill(models[i]![p]!)), `final: space ${i} page ${p}`);
          }
        });
        checkPoolInvariants(pager.pool, spaces);
        checkSlotInvariants(pager, spaces);
        for (const space of spaces) space.destroy();
        assert.equal(pager.stats().slotsInUse, 0, 'every slot is freed with its last reference');
        assert.equal(pager.pool.used, 0);
      }),
      { numRuns: 60 },
    );
  });

  it('rejects bad options with clear errors and refuses use after close', async () => {
    await assert.rejects(Pager.open({ budget: 8 * KiB }), { code: ErrorCodes.INVALID_ARGUMENT });
    await assert.rejects(Pager.open({ budget: '1MiB', prefetch: -1 }), { code: ErrorCodes.INVALID_ARGUMENT });
    await assert.rejects(Pager.open({ budget: 'lots' }), { code: ErrorCodes.INVALID_SIZE });
    const pager = await Pager.open({ budget: '1MiB', store: { kind: 'memory' } });
    const space = pager.createSpace({ size: 4 * MiB });
    for (let page = 0; page < 300; page++) space.writeU32(page * PAGE, page + 1);
    await pager.close();
    assert.throws(() => space.readU32(0), { code: ErrorCodes.STORE_CLOSED });
    assert.throws(() => pager.createSpace({ size: 1 * MiB }), { code: ErrorCodes.STORE_CLOSED });
    space.destroy(); // still possible: references are just dropped
  });
});
