import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  AddressSpace,
  ErrorCodes,
  EXTENT_HOLE,
  EXTENT_ZERO,
  FramePool,
  MemfabricError,
} from '../../src/index.js';
import { checkPoolInvariants } from './invariants.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 ** 4;

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.ok(error.message.length > 20, 'the message says what to do');
    return error.code;
  }
  return undefined;
}

test('a 256 TiB space with 1 MiB written costs about 1 MiB plus a few tables', () => {
  const pool = new FramePool({ capacity: 8 * MiB });
  const space = new AddressSpace(pool, { size: '256TiB' });
  const data = Buffer.alloc(MiB, 0xab);
  space.write(200 * TiB + 12 * KiB, data);
  assert.equal(pool.used, MiB / 4096);
  const stats = space.stats();
  assert.equal(stats.dataPages, 256);
  assert.ok(stats.tableBytes <= 4 * 4 * KiB, `interior tables ${stats.tableBytes} bytes`);
  assert.ok(stats.leaves <= 2);
  const back = Buffer.alloc(MiB);
  space.read(200 * TiB + 12 * KiB, back);
  assert.ok(back.equals(data));
  assert.equal(space.readU8(255 * TiB), 0, 'unwritten bytes read as zeros');
  space.destroy();
  assert.equal(pool.used, 0);
});

test('reads and writes of any alignment cross page boundaries correctly', () => {
  const pool = new FramePool({ capacity: MiB, pageSize: 512 });
  const space = new AddressSpace(pool, { size: 64 * KiB });
  const data = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7 + 3) & 0xff);
  space.write(511, data);
  const back = new Uint8Array(3002);
  space.read(510, back);
  assert.equal(back[0], 0);
  assert.deepEqual(back.subarray(1, 3001), data);
  assert.equal(back[3001], 0);
});

test('readInto puts exactly the bytes read() returns at the offset asked, and nothing else', () => {
  const pool = new FramePool({ capacity: MiB, pageSize: 512 });
  const space = new AddressSpace(pool, { size: 16 * KiB });
  // Pages 0-9 written, the rest holes (read as zeros), so ranges cross data and holes.
  space.write(
    0,
    Uint8Array.from({ length: 5 * KiB }, (_, i) => (i * 13 + 1) & 0xff),
  );
  space.trim(KiB, 512);
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 16 * KiB - 1 }),
      fc.integer({ min: 0, max: 3 * KiB }),
      fc.integer({ min: 0, max: 600 }),
      fc.integer({ min: 0, max: 600 }),
      (offset, wanted, before, after) => {
        const length = Math.min(wanted, 16 * KiB - offset);
        const expected = new Uint8Array(length);
        space.read(offset, expected);
        const dst = new Uint8Array(before + length + after).fill(0xee);
        space.readInto(offset, length, dst, before);
        assert.deepEqual(dst.subarray(before, before + length), expected);
        assert.ok(
          dst.subarray(0, before).every((b) => b === 0xee),
          'bytes before untouched',
        );
        assert.ok(
          dst.subarray(before + length).every((b) => b === 0xee),
          'bytes after untouched',
        );
      },
    ),
  );
  const dst = new Uint8Array(100);
  assert.equal(
    code(() => space.readInto(0, 64, dst, 40)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => space.readInto(0, 8, dst, -1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => space.readInto(16 * KiB - 4, 8, dst, 0)),
    ErrorCodes.OUT_OF_RANGE,
  );
});

test('scalar accessors are little-endian and work across page boundaries', () => {
  const pool = new FramePool({ capacity: MiB, pageSize: 512 });
  const space = new AddressSpace(pool, { size: 4 * KiB });
  for (const addr of [0, 100, 509, 510, 511, 1021]) {
    space.writeU16(addr, 0xbeef);
    assert.equal(space.readU16(addr), 0xbeef);
    space.writeI16(addr, -2);
    assert.equal(space.readI16(addr), -2);
    space.writeU32(addr, 0xdeadbeef);
    assert.equal(space.readU32(addr), 0xdeadbeef);
    assert.equal(space.readU8(addr), 0xef, 'little-endian');
    space.writeI32(addr, -123456);
    assert.equal(space.readI32(addr), -123456);
    space.writeF32(addr, 1.5);
    assert.equal(space.readF32(addr), 1.5);
    space.writeF64(addr, Math.E);
    assert.equal(space.readF64(addr), Math.E);
    space.writeU64(addr, 0x0123456789abcdefn);
    assert.equal(space.readU64(addr), 0x0123456789abcdefn);
    space.writeI64(addr, -5n);
    assert.equal(space.readI64(addr), -5n);
    space.writeI8(addr, -1);
    assert.equal(space.readI8(addr), -1);
    assert.equal(space.readU8(addr), 255);
  }
});

test('fork shares every frame; a write copies only the written page, for the writer only', () => {
  const pool = new FramePool({ capacity: 64 * MiB });
  const parent = new AddressSpace(pool, { size: 16 * MiB });
  for (let page = 0; page < 1024; page++) parent.writeU32(page * 4096, page);
  assert.equal(pool.used, 1024);
  const child = parent.fork();
  const grandchild = child.fork();
  assert.equal(pool.used, 1024, 'fork copies no page');
  child.writeU32(5 * 4096, 999);
  assert.equal(pool.used, 1025, 'one page copied');
  assert.equal(child.readU32(5 * 4096), 999);
  assert.equal(parent.readU32(5 * 4096), 5);
  assert.equal(grandchild.readU32(5 * 4096), 5);
  assert.equal(child.readU32(6 * 4096), 6);
  parent.writeU32(7 * 4096, 70);
  assert.equal(child.readU32(7 * 4096), 7);
  assert.equal(grandchild.readU32(7 * 4096), 7);
  assert.ok(pool.cowCopies >= 2);
  checkPoolInvariants(pool, [parent, child, grandchild]);
  parent.destroy();
  assert.equal(grandchild.readU32(7 * 4096), 7, 'children outlive the parent');
  child.destroy();
  grandchild.destroy();
  assert.equal(pool.used, 0);
});

test('trim frees frames and reads back zeros; block status reports holes, zeros and data', () => {
  const pool = new FramePool({ capacity: 4 * MiB });
  const space = new AddressSpace(pool, { size: 4 * MiB });
  space.write(0, Buffer.alloc(64 * KiB, 1));
  assert.equal(pool.used, 16);
  space.trim(8 * KiB, 16 * KiB);
  assert.equal(pool.used, 12);
  space.writeZeroes(32 * KiB, 8 * KiB);
  assert.equal(pool.used, 10);
  const out = Buffer.alloc(64 * KiB);
  space.read(0, out);
  assert.ok(out.subarray(0, 8 * KiB).every((b) => b === 1));
  assert.ok(out.subarray(8 * KiB, 24 * KiB).every((b) => b === 0));
  assert.ok(out.subarray(32 * KiB, 40 * KiB).every((b) => b === 0));
  const extents: Array<[number, number]> = [];
  space.extents(0, 4 * MiB, (length, flags) => extents.push([length, flags]));
  assert.deepEqual(extents, [
    [8 * KiB, 0],
    [16 * KiB, EXTENT_HOLE | EXTENT_ZERO],
    [8 * KiB, 0],
    [8 * KiB, EXTENT_ZERO],
    [24 * KiB, 0],
    [4 * MiB - 64 * KiB, EXTENT_HOLE | EXTENT_ZERO],
  ]);
  // A partial trim zeroes the bytes but keeps the page.
  space.trim(100, 10);
  assert.equal(space.readU8(99), 1);
  assert.equal(space.readU8(100), 0);
  assert.equal(space.readU8(110), 1);
  // Unaligned start and end, clipped to the range; at most maxExtents.
  const few: Array<[number, number]> = [];
  assert.equal(
    space.extents(4097, 10 * KiB, (length, flags) => few.push([length, flags]), 2),
    2,
  );
  assert.deepEqual(few, [
    [8 * KiB - 4097, 0],
    [4097 + 10 * KiB - 8 * KiB, EXTENT_HOLE | EXTENT_ZERO],
  ]);
  const one: Array<[number, number]> = [];
  assert.equal(
    space.extents(0, 4 * MiB, (length, flags) => one.push([length, flags]), 1),
    1,
  );
  assert.deepEqual(one, [[8 * KiB, 0]]);
});

test('dirty tracking lists exactly the pages written since an epoch', () => {
  const pool = new FramePool({ capacity: 16 * MiB });
  const space = new AddressSpace(pool, { size: '1TiB' });
  space.writeU8(0, 1);
  space.writeU8(5 * 4096, 1);
  const since = space.advanceEpoch();
  assert.deepEqual([...space.dirtyPages(since)], []);
  space.writeU8(5 * 4096 + 1, 2);
  space.write(2 ** 39, Buffer.alloc(8192, 3));
  space.trim(0, 4096);
  assert.deepEqual([...space.dirtyPages(since)], [0, 5, 2 ** 39 / 4096, 2 ** 39 / 4096 + 1]);
  assert.deepEqual([...space.dirtyPages(1)], [0, 5, 2 ** 39 / 4096, 2 ** 39 / 4096 + 1]);
  assert.deepEqual(
    [...space.dirtyPages(0)],
    [0, 5, 2 ** 39 / 4096, 2 ** 39 / 4096 + 1],
    'never-written slots are not dirty',
  );
  const small = new AddressSpace(pool, { size: 3 * 4096 + 10 });
  small.writeU8(3 * 4096 + 9, 1);
  assert.deepEqual([...small.dirtyPages(0)], [3], 'no page past the end of the space');
  assert.equal(space.pageEpoch(5), since);
  const child = space.fork();
  const childEpoch = child.advanceEpoch();
  child.writeU8(9 * 4096, 1);
  assert.deepEqual([...child.dirtyPages(childEpoch)], [9]);
  assert.deepEqual([...space.dirtyPages(childEpoch)], [], "the child's writes are not the parent's");
});

test('exhaustion raises POOL_EXHAUSTED and changes nothing', () => {
  const pool = new FramePool({ capacity: 4 * 4096 });
  const space = new AddressSpace(pool, { size: MiB });
  space.write(0, Buffer.alloc(3 * 4096, 9));
  const child = space.fork();
  assert.equal(
    code(() => child.write(0, Buffer.alloc(3 * 4096, 1))),
    ErrorCodes.POOL_EXHAUSTED,
  );
  const back = Buffer.alloc(3 * 4096);
  child.read(0, back);
  assert.ok(
    back.every((b) => b === 9),
    'the failed write left no trace',
  );
  assert.equal(
    code(() => child.writeU8(0, 1)),
    undefined,
    'one frame is still free',
  );
  assert.equal(
    code(() => child.writeU8(4096, 1)),
    ErrorCodes.POOL_EXHAUSTED,
  );
  assert.equal(child.readU8(4096), 9);
  checkPoolInvariants(pool, [space, child]);
});

test('a write one frame short fails with POOL_EXHAUSTED before writing any page', () => {
  // Four pages to write, three frames free: whether the pages are unwritten, frames a fork
  // shares from its own leaf, or a leaf the fork shares, the write must count all four up front.
  const PAGE = 4096;
  const cases: [string, (pool: FramePool) => AddressSpace[]][] = [
    [
      'unwritten pages',
      (pool) => {
        const space = new AddressSpace(pool, { size: MiB });
        space.write(100 * PAGE, Buffer.alloc(PAGE, 9));
        return [space];
      },
    ],
    [
      'pages no leaf maps yet',
      (pool) => {
        const space = new AddressSpace(pool, { size: 4 * MiB });
        space.write(600 * PAGE, Buffer.alloc(PAGE, 9));
        return [space];
      },
    ],
    [
      'frames shared with a fork',
      (pool) => {
        const space = new AddressSpace(pool, { size: MiB });
        space.write(0, Buffer.alloc(4 * PAGE, 9));
        const fork = space.fork();
        fork.write(100 * PAGE, Buffer.alloc(PAGE, 9)); // the fork copies the leaf
        return [space, fork];
      },
    ],
    [
      'a leaf shared with a fork',
      (pool) => {
        const space = new AddressSpace(pool, { size: 4 * MiB });
        space.write(0, Buffer.alloc(4 * PAGE, 9));
        space.write(600 * PAGE, Buffer.alloc(PAGE, 9)); // another leaf
        return [space, space.fork()];
      },
    ],
  ];
  const spacesOf = (name: string): number => (name.includes('fork') ? 2 : 1);
  for (const [name, build] of cases) {
    const pool = new FramePool({ capacity: (spacesOf(name) === 1 ? 4 : 8) * PAGE });
    const spaces = build(pool);
    const writer = spaces[0]!;
    assert.equal(pool.free, 3, `${name}: three frames free`);
    const before = spaces.map((space) => {
      const bytes = Buffer.alloc(4 * PAGE);
      space.read(0, bytes);
      return bytes;
    });
    const used = pool.used;
    assert.equal(
      code(() => writer.write(0, Buffer.alloc(4 * PAGE, 1))),
      ErrorCodes.POOL_EXHAUSTED,
      name,
    );
    spaces.forEach((space, i) => {
      const bytes = Buffer.alloc(4 * PAGE);
      space.read(0, bytes);
      assert.ok(bytes.equals(before[i]!), `${name}: space ${i} unchanged`);
    });
    assert.equal(pool.used, used, `${name}: no frame taken`);
    checkPoolInvariants(pool, spaces);
  }
});

test('a full pool still lets a space overwrite the pages it owns, in bulk and by scalar', () => {
  const pool = new FramePool({ capacity: 4 * 4096 });
  const space = new AddressSpace(pool, { size: MiB });
  space.write(0, Buffer.alloc(4 * 4096, 1));
  assert.equal(pool.free, 0);
  space.advanceEpoch(); // the next writes re-translate (and must not ask for a frame)
  space.write(0, Buffer.alloc(2 * 4096, 2)); // page 0 holds the pool's first frame
  space.writeU32(3 * 4096 + 8, 0xdeadbeef);
  assert.equal(space.readU8(0), 2);
  assert.equal(space.readU8(4096), 2);
  assert.equal(space.readU32(3 * 4096 + 8), 0xdeadbeef);
  assert.equal(
    code(() => space.writeU8(4 * 4096, 1)),
    ErrorCodes.POOL_EXHAUSTED,
  );
  checkPoolInvariants(pool, [space]);
});

test('a growable pool grows up to its limit, then refuses', () => {
  const pool = new FramePool({ capacity: 8 * 4096, maxCapacity: 64 * 4096 });
  const space = new AddressSpace(pool, { size: MiB });
  space.write(0, Buffer.alloc(60 * 4096, 1));
  assert.ok(pool.capacity >= 60 && pool.capacity <= 64);
  assert.equal(
    code(() => space.write(60 * 4096, Buffer.alloc(8 * 4096, 1))),
    ErrorCodes.POOL_EXHAUSTED,
  );
  assert.equal(space.readU8(60 * 4096), 0);
  assert.equal(pool.free + pool.used, pool.capacity);
});

test('bad arguments and use after destroy raise typed errors and change nothing', () => {
  const pool = new FramePool({ capacity: MiB });
  const space = new AddressSpace(pool, { size: 64 * KiB });
  space.writeU8(0, 7);
  assert.equal(
    code(() => space.read(64 * KiB - 1, new Uint8Array(2))),
    ErrorCodes.OUT_OF_RANGE,
  );
  assert.equal(
    code(() => space.write(-1, new Uint8Array(1))),
    ErrorCodes.OUT_OF_RANGE,
  );
  assert.equal(
    code(() => space.readU32(64 * KiB - 3)),
    ErrorCodes.OUT_OF_RANGE,
  );
  assert.equal(
    code(() => space.writeF64(-8, 1)),
    ErrorCodes.OUT_OF_RANGE,
  );
  assert.equal(
    code(() => space.readU8(1.5)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => space.readU8(Number.NaN)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => space.trim(0, -1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => space.borrowPageForRead(16)),
    ErrorCodes.OUT_OF_RANGE,
  );
  assert.equal(
    code(() => new AddressSpace(pool, { size: 0 })),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    code(() => new AddressSpace(pool, { size: '12 parsecs' })),
    ErrorCodes.INVALID_SIZE,
  );
  assert.equal(
    code(() => new FramePool({ capacity: MiB, pageSize: 3000 })),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(space.readU8(0), 7);
  space.destroy();
  assert.equal(
    code(() => space.readU8(0)),
    ErrorCodes.DESTROYED,
  );
  assert.equal(
    code(() => space.write(0, new Uint8Array(1))),
    ErrorCodes.DESTROYED,
  );
  assert.equal(
    code(() => space.fork()),
    ErrorCodes.DESTROYED,
  );
  assert.equal(
    code(() => space.advanceEpoch()),
    ErrorCodes.DESTROYED,
  );
  space.destroy();
  assert.equal(pool.used, 0);
});

test('borrowed pages see the bytes without copying; a borrowed write page is private', () => {
  const pool = new FramePool({ capacity: MiB });
  const space = new AddressSpace(pool, { size: 64 * KiB });
  space.writeU8(4096 + 3, 42);
  const child = space.fork();
  const view = child.borrowPageForWrite(1);
  assert.equal(view[3], 42);
  view[3] = 43;
  assert.equal(child.readU8(4096 + 3), 43);
  assert.equal(space.readU8(4096 + 3), 42);
  assert.equal(space.borrowPageForRead(1)[3], 42);
  assert.ok(space.borrowPageForRead(9).every((b) => b === 0));
});

test('every supported page size works, from 512 B to 64 KiB', () => {
  for (let pageSize = 512; pageSize <= 65536; pageSize *= 2) {
    const pool = new FramePool({ capacity: 4 * MiB, pageSize });
    const space = new AddressSpace(pool, { size: '1TiB' });
    const data = Uint8Array.from({ length: pageSize + 100 }, (_, i) => i & 0xff);
    space.write(2 ** 39 - 50, data);
    const back = new Uint8Array(data.length);
    space.read(2 ** 39 - 50, back);
    assert.deepEqual(back, data, `page size ${pageSize}`);
    space.destroy();
    assert.equal(pool.used, 0);
  }
});

test('a fork that copies a shared leaf keeps every page epoch and retains only that leaf', () => {
  const pool = new FramePool({ capacity: 64 * 4096 });
  const a = new AddressSpace(pool, { size: MiB });
  a.write(0, Buffer.alloc(4 * 4096, 1)); // leaf 1: pages 0-3
  const b = new AddressSpace(pool, { size: MiB });
  b.write(0, Buffer.alloc(4096, 2)); // leaf 2
  const c = new AddressSpace(pool, { size: MiB });
  c.write(0, Buffer.alloc(4096, 3)); // leaf 3: its first entry holds a frame
  b.destroy(); // leaf 2 is free: the next leaf copy takes it, just below c's leaf
  const written = a.epoch;
  a.advanceEpoch();
  const fork = a.fork();
  fork.write(10 * 4096, Buffer.alloc(4096, 4)); // the fork copies leaf 1
  for (let page = 0; page < 4; page++) assert.equal(fork.pageEpoch(page), written, `page ${page} epoch`);
  assert.deepEqual(Array.from(fork.dirtyPages(written)), [0, 1, 2, 3, 10]);
  checkPoolInvariants(pool, [a, fork, c]);
});
