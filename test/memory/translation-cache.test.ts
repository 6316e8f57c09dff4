/**
 * Property test of the translation caches (the page TLB, its growth, and span translations):
 * scalar reads and writes at random addresses, interleaved with everything that changes a
 * translation (bulk writes, trim, write-zeroes, fork and copy-on-write, merge passes, epoch
 * advances, sharePage, destroy, and with a pager eviction), must always agree with a plain
 * byte array per space. A stale cached translation shows up as a read that differs.
 *
 * The spaces span several leaves (or, in one test, less than one) and are first written in order, so their leaves map runs of
 * consecutive frames (span translations form); bursts of reads over many pages make the page
 * TLB grow.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, FramePool, SamePageMerger } from '../../src/index.js';
import { FIRST_FRAME } from '../../src/memory/frame-pool.js';
import { LEAF_ENTRIES } from '../../src/memory/leaf-arena.js';
import { MapPaging } from './paging-backend.js';

const PAGE = 512;
const LEAF_BYTES = LEAF_ENTRIES * PAGE;
/** Three whole leaves and a partial page after them: spans, a leaf that is not whole, a ragged end. */
const LARGE_SIZE = 3 * LEAF_BYTES + 2 * PAGE + 300;
/** A space smaller than one leaf, with a ragged end: one span over its whole pages. */
const SMALL_SIZE = 40 * PAGE + 300;

type Width = 1 | 2 | 4 | 8;
type Op =
  | { kind: 'sread'; space: number; at: number; width: Width }
  | { kind: 'swrite'; space: number; at: number; width: Width; value: number }
  | { kind: 'burst'; space: number; seed: number; count: number }
  | { kind: 'write'; space: number; at: number; length: number; fill: number }
  | { kind: 'trim'; space: number; at: number; length: number; zero: boolean }
  | { kind: 'fork'; space: number }
  | { kind: 'merge' }
  | { kind: 'epoch'; space: number }
  | { kind: 'share'; space: number; from: number; page: number; sourcePage: number }
  | { kind: 'destroy'; space: number }
  | { kind: 'evict'; space: number; page: number }
  | { kind: 'evictAll' };

const unit = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
const width = fc.constantFrom<Width>(1, 2, 4, 8);
const pageArb = fc.nat(Math.ceil(LARGE_SIZE / PAGE) - 1);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ kind: fc.constant('sread' as const), space: fc.nat(5), at: unit, width }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('swrite' as const),
      space: fc.nat(5),
      at: unit,
      width,
      value: fc.nat(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('burst' as const),
      space: fc.nat(5),
      seed: fc.nat(),
      count: fc.integer({ min: 1, max: 3000 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      space: fc.nat(5),
      at: unit,
      length: fc.integer({ min: 1, max: 3 * PAGE }),
      fill: fc.nat(255),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('trim' as const),
      space: fc.nat(5),
      at: unit,
      length: fc.integer({ min: 1, max: 4 * PAGE }),
      zero: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fork' as const), space: fc.nat(5) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'merge' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('epoch' as const), space: fc.nat(5) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('share' as const),
      space: fc.nat(5),
      from: fc.nat(5),
      page: pageArb,
      sourcePage: pageArb,
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('destroy' as const), space: fc.nat(5) }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('evict' as const), space: fc.nat(5), page: pageArb }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'evictAll' as const }) },
);

interface ModelSpace {
  real: AddressSpace;
  bytes: Uint8Array;
  view: DataView;
}

function model(real: AddressSpace, bytes: Uint8Array): ModelSpace {
  return { real, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
}

/** Reads `width` bytes at `addr` with the scalar accessors and checks them against the model. */
function checkScalar(s: ModelSpace, addr: number, w: Width, what: string): void {
  const real = s.real;
  const view = s.view;
  const where = `${what}: ${w} bytes at ${addr}`;
  switch (w) {
    case 1:
      assert.equal(real.readU8(addr), view.getUint8(addr), where);
      assert.equal(real.readI8(addr), view.getInt8(addr), where);
      break;
    case 2:
      assert.equal(real.readU16(addr), view.getUint16(addr, true), where);
      assert.equal(real.readI16(addr), view.getInt16(addr, true), where);
      break;
    case 4:
      assert.equal(real.readU32(addr), view.getUint32(addr, true), where);
      assert.equal(real.readI32(addr), view.getInt32(addr, true), where);
      assert.ok(Object.is(real.readF32(addr), view.getFloat32(addr, true)), where);
      break;
    case 8:
      assert.equal(real.readU64(addr), view.getBigUint64(addr, true), where);
      assert.equal(real.readI64(addr), view.getBigInt64(addr, true), where);
      assert.ok(Object.is(real.readF64(addr), view.getFloat64(addr, true)), where);
      break;
  }
}

function scalarWrite(s: ModelSpace, addr: number, w: Width, value: number): void {
  switch (w) {
    case 1:
      s.real.writeU8(addr, value & 0xff);
      s.view.setUint8(addr, value & 0xff);
      break;
    case 2:
      s.real.writeI16(addr, (value << 16) >> 16);
      s.view.setInt16(addr, (value << 16) >> 16, true);
      break;
    case 4:
      s.real.writeU32(addr, value >>> 0);
      s.view.setUint32(addr, value >>> 0, true);
      break;
    case 8:
      s.real.writeF64(addr, value / 7);
      s.view.setFloat64(addr, value / 7, true);
      break;
  }
}

/** A small deterministic generator for read bursts (so a failing case replays exactly). */
function nextRandom(state: number): number {
  return (Math.imul(state, 1664525) + 1013904223) >>> 0;
}

/**
 * How the pool lays out its frames:
 *   'segments': segments of 4096 frames; the first write fits the first one, so every whole
 *     leaf of the first space maps a run of consecutive frames, and copies made later come
 *     from further segments (which the scalar fast path does not read);
 *   'grown': the default layout of a growable pool, one segment for its whole maxCapacity;
 *     the pool starts at 16 frames, so the first write grows it and the space's frames (spans,
 *     copies) lie past the initial capacity, all in segment 0.
 */
type Layout = 'segments' | 'grown';

function run(ops: Op[], withPager: boolean, size = LARGE_SIZE, layout: Layout = 'segments'): void {
  const pages = Math.ceil(size / PAGE);
  const pool =
    layout === 'segments'
      ? new FramePool({
          pageSize: PAGE,
          capacity: 2100 * PAGE,
          maxCapacity: 16 * 1024 * 1024,
          segmentFrames: 4096,
        })
      : new FramePool({ pageSize: PAGE, capacity: 16 * PAGE, maxCapacity: 16 * 1024 * 1024 });
  const paging = withPager ? new MapPaging(pool) : undefined;
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const first = new AddressSpace(pool, { size: size });
  merger.register(first);
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 131 + (i >>> 9)) & 0xff;
  // Written in order, so consecutive pages get consecutive frames.
  first.write(0, bytes);
  if (layout === 'grown') {
    assert.ok(pool.capacity > 16 && pool.segments.length === 1, 'the pool grew within segment 0');
  }
  const spaces: ModelSpace[] = [model(first, bytes)];
  const live = (): ModelSpace[] => spaces.filter((s) => !s.real.isDestroyed);
  const addrFor = (fraction: number, length: number): number => Math.floor(fraction * (size - length + 1));

  for (const op of ops) {
    const alive = live();
    if (op.kind === 'merge') {
      merger.scan();
      continue;
    }
    if (op.kind === 'evictAll') {
      if (paging) paging.evictAll();
      continue;
    }
    const s = alive[op.space % alive.length]!;
    switch (op.kind) {
      case 'sread':
        checkScalar(s, addrFor(op.at, op.width), op.width, 'read');
        break;
      case 'swrite': {
        const addr = addrFor(op.at, op.width);
        scalarWrite(s, addr, op.width, op.value);
        checkScalar(s, addr, op.width, 'read after write');
        break;
      }
      case 'burst': {
        let state = op.seed;
        for (let i = 0; i < op.count; i++) {
          state = nextRandom(state);
          const w = (1 << (state & 3)) as Width;
          state = nextRandom(state);
          checkScalar(s, Math.floor((state / 2 ** 32) * (size - w + 1)), w, 'burst read');
        }
        break;
      }
      case 'write': {
        const addr = addrFor(op.at, op.length);
        const data = new Uint8Array(op.length).fill(op.fill);
        s.real.write(addr, data);
        s.bytes.set(data, addr);
        break;
      }
      case 'trim': {
        const addr = addrFor(op.at, op.length);
        if (op.zero) s.real.writeZeroes(addr, op.length);
        else s.real.trim(addr, op.length);
        s.bytes.fill(0, addr, addr + op.length);
        break;
      }
      case 'fork':
        if (alive.length < 6) spaces.push(model(s.real.fork(), s.bytes.slice()));
        break;
      case 'epoch':
        s.real.advanceEpoch();
        break;
      case 'share': {
        const source = alive[op.from % alive.length]!;
        const page = op.page % pages;
        const sourcePage = op.sourcePage % pages;
        if (source.real.frameAt(sourcePage) < FIRST_FRAME) break;
        s.real.sharePage(page, source.real, sourcePage);
        // The page takes the whole source page; bytes past the end of either space read as nothing.
        const length = Math.min(PAGE, size - page * PAGE, size - sourcePage * PAGE);
        const copy = source.bytes.slice(sourcePage * PAGE, sourcePage * PAGE + length);
        s.bytes.fill(0, page * PAGE, Math.min(size, (page + 1) * PAGE));
        s.bytes.set(copy, page * PAGE);
        break;
      }
      case 'destroy':
        if (s.real !== first) s.real.destroy();
        break;
      case 'evict':
        if (paging) paging.evictPage(s.real, op.page % pages);
        break;
    }
  }
  for (const s of live()) {
    const actual = new Uint8Array(size);
    s.real.read(0, actual);
    assert.ok(Buffer.compare(actual, s.bytes) === 0, 'final contents differ from the model');
    for (let addr = 0; addr + 8 <= size; addr += 509) checkScalar(s, addr, 8, 'final scalar read');
  }
  for (const s of live()) s.real.destroy();
  merger.destroy();
}

test('scalar accesses never see a stale translation (no pager: span translations, TLB growth)', () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), (ops) => run(ops, false)),
    { numRuns: 60 },
  );
});

test('scalar accesses never see a stale translation (with a pager evicting pages)', () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), (ops) => run(ops, true)),
    { numRuns: 40 },
  );
});

test('a space smaller than one leaf reads through one span over its whole pages, and never sees a stale one', () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), (ops) => run(ops, false, SMALL_SIZE)),
    { numRuns: 40 },
  );
});

test('a pool grown past its initial capacity keeps one segment, and scalars never see a stale translation', () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 60 }), fc.boolean(), (ops, small) =>
      run(ops, false, small ? SMALL_SIZE : LARGE_SIZE, 'grown'),
    ),
    { numRuns: 40 },
  );
});

test('a space written in order reads through span translations and the TLB grows for a scattered working set', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 8 * 1024 * 1024 });
  const space = new AddressSpace(pool, { size: 8 * LEAF_BYTES });
  const data = new Uint8Array(8 * LEAF_BYTES);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  space.write(0, data);
  const view = new DataView(data.buffer);
  // Reads at every page, scattered: far more pages than the first TLB holds.
  for (let round = 0; round < 3; round++) {
    for (let page = 0; page < 8 * LEAF_ENTRIES; page++) {
      const addr = ((page * 2654435761) % (8 * LEAF_ENTRIES)) * PAGE + 100;
      assert.equal(space.readU32(addr), view.getUint32(addr, true));
    }
  }
  // Values that cross a page boundary inside a span read whole.
  assert.equal(space.readF64(PAGE - 4), view.getFloat64(PAGE - 4, true));
  // A copy-on-write break inside a span: the fork sees its own write, the parent the old bytes.
  const child = space.fork();
  child.writeU32(3 * PAGE, 0xdeadbeef);
  assert.equal(child.readU32(3 * PAGE), 0xdeadbeef);
  assert.equal(space.readU32(3 * PAGE), view.getUint32(3 * PAGE, true));
  space.writeU32(5 * PAGE, 1234);
  assert.equal(space.readU32(5 * PAGE), 1234);
  assert.equal(child.readU32(5 * PAGE), view.getUint32(5 * PAGE, true));
  // A trim inside a span: zeros from then on.
  space.trim(7 * PAGE, PAGE);
  assert.equal(space.readU32(7 * PAGE + 8), 0);
  assert.equal(child.readU32(7 * PAGE + 8), view.getUint32(7 * PAGE + 8, true));
  child.destroy();
  space.destroy();
});

test("a small space's span covers its whole pages only: the ragged last page keeps its own translation", () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 1024 * 1024 });
  const size = 4 * PAGE + 100;
  const space = new AddressSpace(pool, { size });
  const data = new Uint8Array(size).map((_, i) => (i * 13) & 0xff);
  space.write(0, data);
  const view = new DataView(data.buffer);
  const last = 4 * PAGE + 16;
  assert.equal(space.readU32(8), view.getUint32(8, true));
  // Copy-on-write gives the last page a frame that no longer follows the span's frames.
  const child = space.fork();
  space.writeU32(last, 0x12345678);
  assert.equal(space.readU32(8), view.getUint32(8, true));
  assert.equal(space.readU32(last), 0x12345678);
  assert.equal(child.readU32(last), view.getUint32(last, true));
  assert.equal(space.readF64(3 * PAGE + 8), view.getFloat64(3 * PAGE + 8, true));
  child.destroy();
  space.destroy();
});

test('pages whose frames lie in later segments of a grown pool read and write correctly', () => {
  // Eight frames to start with: segments of 16 frames, so the space's pages spread over several.
  const pool = new FramePool({
    pageSize: PAGE,
    capacity: 8 * PAGE,
    maxCapacity: 1024 * PAGE,
    segmentFrames: 16,
  });
  const pages = 64;
  const space = new AddressSpace(pool, { size: pages * PAGE });
  const data = new Uint8Array(pages * PAGE).map((_, i) => (i * 29 + (i >>> 9)) & 0xff);
  space.write(0, data);
  assert.ok(pool.segments.length > 2);
  const view = new DataView(data.buffer);
  // Each page is read and written several times: the first access translates, the later ones
  // take whatever fast path the page has.
  for (let round = 0; round < 3; round++) {
    for (let page = 0; page < pages; page++) {
      const addr = page * PAGE + 8 * round;
      assert.ok(Object.is(space.readF64(addr), view.getFloat64(addr, true)), `page ${page}`);
      space.writeU32(addr + 100, page * 7 + round);
      view.setUint32(addr + 100, page * 7 + round, true);
      assert.equal(space.readU32(addr + 100), view.getUint32(addr + 100, true), `page ${page}`);
    }
  }
  space.destroy();
});

test("a small space's span is dropped by every remap of its pages: copy-on-write, trim, sharePage, a merge", () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 256 * PAGE });
  const merger = new SamePageMerger(pool, { quietEpochs: 0 });
  const pages = 40;
  const space = new AddressSpace(pool, { size: pages * PAGE });
  merger.register(space);
  const data = new Uint8Array(pages * PAGE).map((_, i) => (i * 13 + (i >>> 9)) & 0xff);
  space.write(0, data);
  const view = new DataView(data.buffer);
  const u32 = (addr: number) => view.getUint32(addr, true);
  // Each step first reads through the span (so it is filled), then remaps a page under it.
  assert.equal(space.readU32(8), u32(8));
  // Copy-on-write: the page gets a new frame; the child keeps the old one.
  const child = space.fork();
  assert.equal(space.readU32(8), u32(8));
  space.writeU32(5 * PAGE + 4, 0xabcdef01);
  assert.equal(space.readU32(5 * PAGE + 4), 0xabcdef01);
  assert.equal(child.readU32(5 * PAGE + 4), u32(5 * PAGE + 4));
  child.destroy();
  // Trim: the frame goes back to the pool, and another space's write takes it.
  assert.equal(space.readU32(7 * PAGE), u32(7 * PAGE));
  space.trim(7 * PAGE, PAGE);
  const other = new AddressSpace(pool, { size: 4 * PAGE });
  other.write(0, new Uint8Array(4 * PAGE).fill(0x5a));
  assert.equal(space.readU32(7 * PAGE), 0);
  // sharePage: the page maps the other space's frame.
  assert.equal(space.readU32(9 * PAGE), u32(9 * PAGE));
  space.sharePage(9, other, 1);
  assert.equal(space.readU32(9 * PAGE), 0x5a5a5a5a);
  // A merge repoints a page to an identical frame and frees its own, which a write then takes.
  space.write(11 * PAGE, new Uint8Array(PAGE).fill(0x5a));
  assert.equal(space.readU32(11 * PAGE), 0x5a5a5a5a);
  merger.scan();
  assert.equal(space.frameAt(11), space.frameAt(9), 'merged');
  other.write(2 * PAGE, new Uint8Array(2 * PAGE).fill(0x11));
  const fresh = new AddressSpace(pool, { size: 64 * PAGE });
  fresh.write(0, new Uint8Array(64 * PAGE).fill(0x22));
  assert.equal(space.readU32(11 * PAGE), 0x5a5a5a5a);
  assert.equal(space.readU32(8), u32(8));
  fresh.destroy();
  other.destroy();
  space.destroy();
  merger.destroy();
});
