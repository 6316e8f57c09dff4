/**
 * Swapped entries in the memory core, with an in-process paging backend (./paging-backend.ts)
 * instead of the pager's store worker: faults, copy-on-write of swapped and zero entries when
 * forks share a leaf, and the slot references every entry and frame holds. The pager's own
 * tests (test/tier/pager.test.ts) cover the real store; these choose exactly which pages leave
 * memory, and when.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, FramePool } from '../../src/index.js';
import { checkPoolInvariants } from './invariants.js';
import { checkSlotReferences, MapPaging } from './paging-backend.js';

const PAGE = 512;
/** Two leaves' worth of pages and some: pages 0-15 share a leaf, 512-519 lie in the next. */
const SPACE_PAGES = 1100;
const pageArb = fc.oneof(fc.nat(15), fc.integer({ min: 512, max: 519 }));

/** A page's worth of bytes drawn from `seed` (xorshift), so a shrunk run replays the same bytes. */
function bytesOf(seed: number, length = PAGE): Buffer {
  const out = Buffer.alloc(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

type Op =
  | { kind: 'write'; space: number; page: number; pages: 1 | 2; seed: number; whole: boolean }
  | { kind: 'u32'; space: number; page: number; value: number }
  | { kind: 'read'; space: number; page: number }
  | { kind: 'fork'; space: number }
  | { kind: 'trim'; space: number; page: number }
  | { kind: 'zero'; space: number; page: number }
  | { kind: 'evict'; space: number; page: number }
  | { kind: 'evictAll' }
  | { kind: 'destroy'; space: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      space: fc.nat(5),
      page: pageArb,
      pages: fc.constantFrom(1 as const, 2 as const),
      seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      whole: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('u32' as const),
      space: fc.nat(5),
      page: pageArb,
      value: fc.integer({ min: 1, max: 2 ** 32 - 1 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('read' as const), space: fc.nat(5), page: pageArb }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fork' as const), space: fc.nat(5) }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('trim' as const), space: fc.nat(5), page: pageArb }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('zero' as const), space: fc.nat(5), page: pageArb }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('evict' as const), space: fc.nat(5), page: pageArb }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'evictAll' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('destroy' as const), space: fc.nat(5) }) },
);

interface ModelSpace {
  real: AddressSpace;
  /** Page -> bytes; absent pages read as zeros. */
  pages: Map<number, Buffer>;
}

function expectPage(s: ModelSpace, page: number, scratch: Buffer, when: string): void {
  s.real.read(page * PAGE, scratch);
  const expected = s.pages.get(page);
  if (expected === undefined) {
    assert.ok(scratch.equals(Buffer.alloc(PAGE)), `page ${page} reads as zeros ${when}`);
  } else {
    assert.ok(scratch.equals(expected), `page ${page} reads back what was written ${when}`);
  }
}

function run(ops: Op[], capacity: number, policy: 'all' | 'needed'): void {
  const pool = new FramePool({ pageSize: PAGE, capacity: capacity * PAGE, shared: true });
  const paging = new MapPaging(pool);
  paging.policy = policy;
  const spaces: ModelSpace[] = [
    { real: new AddressSpace(pool, { size: SPACE_PAGES * PAGE }), pages: new Map() },
  ];
  const scratch = Buffer.alloc(PAGE);
  const all = (): AddressSpace[] => spaces.map((s) => s.real);
  for (const op of ops) {
    const live = spaces.filter((s) => !s.real.isDestroyed);
    if (op.kind === 'evictAll') {
      paging.evictAll();
    } else if (live.length > 0) {
      const s = live[op.space % live.length]!;
      switch (op.kind) {
        case 'write': {
          const pages = Math.min(op.pages, SPACE_PAGES - op.page);
          const data = bytesOf(op.seed, pages * PAGE);
          // Not whole: the write skips the first 100 bytes, so the old bytes must be fetched.
          const skip = op.whole ? 0 : 100;
          s.real.write(op.page * PAGE + skip, data.subarray(skip));
          for (let i = 0; i < pages; i++) {
            const page = Buffer.from(s.pages.get(op.page + i) ?? Buffer.alloc(PAGE));
            const from = i === 0 ? skip : 0;
            data.copy(page, from, i * PAGE + from, (i + 1) * PAGE);
            s.pages.set(op.page + i, page);
          }
          break;
        }
        case 'u32': {
          // The scalar path translates for writing without reserving first.
          s.real.writeU32(op.page * PAGE + 8, op.value);
          const page = Buffer.from(s.pages.get(op.page) ?? Buffer.alloc(PAGE));
          page.writeUInt32LE(op.value, 8);
          s.pages.set(op.page, page);
          break;
        }
        case 'read':
          expectPage(s, op.page, scratch, 'when read');
          break;
        case 'fork':
          spaces.push({ real: s.real.fork(), pages: new Map(s.pages) });
          break;
        case 'trim':
          s.real.trim(op.page * PAGE, PAGE);
          s.pages.delete(op.page);
          break;
        case 'zero':
          s.real.writeZeroes(op.page * PAGE, PAGE);
          s.pages.delete(op.page);
          break;
        case 'evict':
          paging.evictPage(s.real, op.page);
          break;
        case 'destroy':
          s.real.destroy();
          break;
      }
    }
    checkPoolInvariants(pool, all());
    checkSlotReferences(paging, all());
  }
  for (const s of spaces) {
    if (s.real.isDestroyed) continue;
    for (const page of s.pages.keys()) expectPage(s, page, scratch, 'at the end');
  }
  checkPoolInvariants(pool, all());
  checkSlotReferences(paging, all());
  for (const s of spaces) s.real.destroy();
  assert.equal(paging.slots.size, 0, 'destroying every space releases every slot');
  assert.equal(pool.used, 0, 'and every frame');
  assert.equal(pool.zeroEntries, 0, 'and every zero entry');
  assert.equal(pool.leaves.live, 0, 'and every leaf');
}

// Under `npm run test:mutation` every mutant runs this file; fewer runs still reach every
// branch (the deterministic tests below pin the subtle ones).
const RUNS = process.env.MUTATION === '1' ? 60 : 200;

test('swapped pages read back and hold exact slot references through forks, COW, trims and faults', () => {
  fc.assert(
    fc.property(
      fc.array(opArb, { maxLength: 50 }),
      fc.integer({ min: 4, max: 24 }),
      fc.constantFrom('all' as const, 'needed' as const),
      run,
    ),
    { numRuns: RUNS },
  );
});

test('a scalar write to a page shared with a fork, in a full pool, faults in the page that making room evicted', () => {
  for (const policy of ['all', 'needed'] as const) {
    const pool = new FramePool({ pageSize: PAGE, capacity: 4 * PAGE, shared: true });
    const paging = new MapPaging(pool);
    paging.policy = policy;
    const a = new AddressSpace(pool, { size: 64 * PAGE });
    for (let page = 0; page < 4; page++) a.write(page * PAGE, bytesOf(page + 1));
    const b = a.fork();
    assert.equal(pool.free, 0, 'the pool is full');
    // Making room may evict page 0, which both spaces map: the write must then fault it in
    // rather than copy a frame that eviction already took.
    a.writeU32(8, 0xdeadbeef);
    checkPoolInvariants(pool, [a, b]);
    checkSlotReferences(paging, [a, b]);
    const expectedA = bytesOf(1);
    expectedA.writeUInt32LE(0xdeadbeef, 8);
    const scratch = Buffer.alloc(PAGE);
    a.read(0, scratch);
    assert.ok(scratch.equals(expectedA), `${policy}: the writer sees its write`);
    b.read(0, scratch);
    assert.ok(scratch.equals(bytesOf(1)), `${policy}: the fork keeps the old bytes`);
    for (let page = 1; page < 4; page++) {
      a.read(page * PAGE, scratch);
      assert.ok(scratch.equals(bytesOf(page + 1)), `${policy}: page ${page} unchanged`);
    }
    a.destroy();
    b.destroy();
    assert.equal(paging.slots.size, 0);
    assert.equal(pool.used, 0);
  }
});

test('a fork copying a leaf takes a reference on its swapped and zero entries; the last holder releases them', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 16 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  const a = new AddressSpace(pool, { size: 64 * PAGE });
  a.write(0, bytesOf(1));
  a.write(PAGE, bytesOf(2));
  a.writeZeroes(2 * PAGE, PAGE); // a zero entry
  paging.evictAll();
  const slot0 = -1 - a.frameAt(0);
  const slot1 = -1 - a.frameAt(1);
  assert.ok(slot0 >= 0 && slot1 >= 0, 'pages 0 and 1 are swapped out');
  assert.equal(pool.zeroEntries, 1);
  const b = a.fork();
  // The leaf is shared (one reference per slot); a write to page 3 makes `b` copy it.
  assert.deepEqual(
    paging.references(),
    new Map([
      [slot0, 1],
      [slot1, 1],
    ]),
  );
  b.write(3 * PAGE, bytesOf(3));
  assert.deepEqual(
    paging.references(),
    new Map([
      [slot0, 2],
      [slot1, 2],
    ]),
    'the copied leaf retains each slot',
  );
  assert.equal(pool.zeroEntries, 2, 'and the zero entry');
  checkPoolInvariants(pool, [a, b]);
  a.destroy();
  assert.deepEqual(
    paging.references(),
    new Map([
      [slot0, 1],
      [slot1, 1],
    ]),
    'destroying one holder releases its slots',
  );
  assert.equal(pool.zeroEntries, 1, 'and its zero entry');
  const scratch = Buffer.alloc(PAGE);
  b.read(PAGE, scratch);
  assert.ok(scratch.equals(bytesOf(2)), 'the fork still faults the page in');
  b.destroy();
  assert.equal(paging.slots.size, 0);
  assert.equal(pool.zeroEntries, 0);
  assert.equal(pool.used, 0);
});

test("a write reads a page's entry only after making room, which may have evicted that page", () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 4 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  paging.policy = 'victims';
  const a = new AddressSpace(pool, { size: 64 * PAGE });
  a.write(0, bytesOf(1));
  a.write(PAGE, bytesOf(2));
  const b = a.fork();
  b.write(2 * PAGE, bytesOf(3)); // b copies the leaf: pages 0 and 1 are frames shared by a and b
  a.write(0, bytesOf(4)); // a's page 0 becomes private
  assert.equal(pool.free, 0, 'the pool is full');
  // Writing a's pages 0-1: the up-front reservation counts page 1 only (page 0 is private) and
  // makes room by evicting page 0. Page 1 then needs a frame with none free: making room
  // evicts page 1 itself (and b's page 2), so the write must read page 1's entry after that,
  // finding it swapped, not before (a frame it would copy and release twice).
  paging.victims.push([a, 0], [a, 1], [b, 2]);
  const data = Buffer.concat([bytesOf(5), bytesOf(6)]);
  a.write(100, data.subarray(100));
  checkPoolInvariants(pool, [a, b]);
  checkSlotReferences(paging, [a, b]);
  const expected = Buffer.concat([bytesOf(4).subarray(0, 100), data.subarray(100)]);
  const scratch = Buffer.alloc(2 * PAGE);
  a.read(0, scratch);
  assert.ok(scratch.equals(expected), 'a reads its write, and the bytes of page 0 before it');
  b.read(0, scratch);
  assert.ok(scratch.equals(Buffer.concat([bytesOf(1), bytesOf(2)])), 'b keeps its pages');
  a.destroy();
  b.destroy();
  assert.equal(paging.slots.size, 0);
  assert.equal(pool.used, 0);
});

test('with a pager, translations count resident hits and set the accessed bit CLOCK reads', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 16 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  const space = new AddressSpace(pool, { size: 64 * PAGE });
  const accessed = (page: number): number => pool.leaves.accessed[space.entryIndexAt(page)]!;
  space.write(0, bytesOf(1)); // a new frame: not a hit
  space.write(PAGE, bytesOf(2));
  assert.equal(accessed(0), 1, 'a write marks its page accessed');
  pool.leaves.accessed.fill(0);
  space.flushTranslations();
  const before = pool.translations;
  const scratch = Buffer.alloc(PAGE);
  space.read(0, scratch); // resident: a hit
  assert.equal(pool.translations - before, 1, 'one resident page translated');
  assert.equal(accessed(0), 1, 'a read marks its page accessed');
  space.flushTranslations();
  space.writeU8(PAGE + 3, 7); // a private resident page written in place: a hit
  assert.equal(pool.translations - before, 2);
  assert.equal(accessed(1), 1);
  paging.evictPage(space, 0);
  pool.leaves.accessed.fill(0);
  space.read(0, scratch); // a fault: not a hit, but the page is now in use
  assert.equal(pool.translations - before, 2, 'a fault is not a hit');
  assert.equal(accessed(0), 1, 'a faulted-in page is marked accessed');
  space.destroy();
});

test('without a pager, reads are not counted as translations nor marked accessed', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 16 * PAGE });
  const space = new AddressSpace(pool, { size: 64 * PAGE });
  space.write(0, bytesOf(1));
  pool.leaves.accessed.fill(0);
  space.flushTranslations();
  space.read(0, Buffer.alloc(PAGE));
  assert.equal(pool.translations, 0);
  assert.equal(pool.leaves.accessed[space.entryIndexAt(0)], 0);
});

test('a fetch that fails leaves the page swapped and its frame free, for a read and for a partial write', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 16 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  const space = new AddressSpace(pool, { size: 64 * PAGE });
  space.write(0, bytesOf(1));
  paging.evictAll();
  const swapped = space.frameAt(0);
  assert.ok(swapped < 0);
  paging.fetchError = new Error('store read failed');
  const scratch = Buffer.alloc(PAGE);
  assert.throws(() => space.read(0, scratch), /store read failed/);
  assert.throws(() => space.writeU8(3, 1), /store read failed/);
  assert.equal(space.frameAt(0), swapped, 'still swapped');
  assert.equal(pool.used, 0, 'the frame taken for the fetch was given back');
  checkSlotReferences(paging, [space]);
  paging.fetchError = undefined;
  space.read(0, scratch);
  assert.ok(scratch.equals(bytesOf(1)));
  space.destroy();
  assert.equal(paging.slots.size, 0);
});

test('a whole-page write to a swapped page fetches nothing; a partial one fetches the old bytes', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 16 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  const space = new AddressSpace(pool, { size: 64 * PAGE });
  space.write(0, Buffer.concat([bytesOf(1), bytesOf(2)]));
  paging.evictAll();
  space.write(0, bytesOf(3));
  assert.deepEqual(paging.fetches, [], 'the old bytes of a page overwritten whole are not read');
  space.write(PAGE + 10, Buffer.from([1, 2, 3]));
  assert.equal(paging.fetches.length, 1);
  const expected = bytesOf(2);
  expected.set([1, 2, 3], 10);
  const scratch = Buffer.alloc(PAGE);
  space.read(PAGE, scratch);
  assert.ok(scratch.equals(expected));
  checkSlotReferences(paging, [space]);
  space.destroy();
});

test('a page faulted in and then written in place is written out again, not dropped onto its old slot', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 16 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  const space = new AddressSpace(pool, { size: 64 * PAGE });
  space.write(0, bytesOf(1));
  paging.evictAll();
  const scratch = Buffer.alloc(PAGE);
  space.read(0, scratch); // faulted in: the frame's bytes are also in the store
  space.writeU32(8, 0xfeedface); // private and resident: written in place
  checkSlotReferences(paging, [space]);
  paging.evictAll();
  space.read(0, scratch);
  const expected = bytesOf(1);
  expected.writeUInt32LE(0xfeedface, 8);
  assert.ok(scratch.equals(expected), 'the write survived eviction');
  space.destroy();
  assert.equal(paging.slots.size, 0);
});
