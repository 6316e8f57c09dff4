/**
 * The persistent heap's allocator: a model-based property test (random alloc / free / realloc
 * of 1 B to several pages against a JS model of the live objects and their contents, with a
 * forked twin re-attached from the space that must behave identically), bad frees that must
 * change nothing (no page written), a full heap, garbage metadata, a churn that must not grow
 * the top, corrupted metadata that check() must name, and forks that evolve independently.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, ErrorCodes, FramePool } from '../../src/index.js';
import { DESC_BYTES, HEADER_BYTES, HeapAllocator } from '../../src/heap/allocator.js';
import { typedError } from '../typed-error.js';

const PAGE = 4096;
const BASE = PAGE;

function makeSpace(pageSize = PAGE): AddressSpace {
  const pool = new FramePool({ pageSize, capacity: '64MiB' });
  return new AddressSpace(pool, { size: '1GiB' });
}

/** The byte object `id` holds at offset i: differs between objects and along each object. */
function patternByte(id: number, i: number): number {
  return (id * 131 + i * 7 + (i >>> 8)) & 0xff;
}

function fill(space: AddressSpace, address: number, id: number, length: number): void {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = patternByte(id, i);
  space.write(address, bytes);
}

function verify(space: AddressSpace, address: number, id: number, length: number, what: string): void {
  const bytes = new Uint8Array(length);
  space.read(address, bytes);
  for (let i = 0; i < length; i++) {
    if (bytes[i] !== patternByte(id, i)) {
      assert.fail(
        `${what}: object ${id} at 0x${address.toString(16)} byte ${i} is ${bytes[i]}, wrote ${patternByte(id, i)}`,
      );
    }
  }
}

function assertChecks(allocator: HeapAllocator, when: string): void {
  const result = allocator.check();
  assert.deepEqual(result.problems, [], `check() after ${when}`);
  assert.equal(result.ok, true);
}

/** Pages written since the returned epoch: proves a failed call changed nothing at all. */
function watch(space: AddressSpace): () => number {
  const epoch = space.advanceEpoch();
  return () => space.dirtyPages(epoch).length;
}

// ---------------------------------------------------------------------------------------------
// Model-based property test

type Op =
  | { kind: 'alloc'; size: number }
  | { kind: 'free'; pick: number }
  | { kind: 'realloc'; pick: number; size: number }
  | { kind: 'fork' }
  | { kind: 'reattach' };

const sizeArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 256 }) },
  { weight: 3, arbitrary: fc.integer({ min: 257, max: 2 * PAGE }) },
  { weight: 2, arbitrary: fc.integer({ min: 2 * PAGE + 1, max: 12 * PAGE }) },
  // Runs of more than 32 pages share a free-run bin per power of two: first-fit within the bin.
  { weight: 1, arbitrary: fc.integer({ min: 33 * PAGE, max: 90 * PAGE }) },
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: sizeArb.map((size) => ({ kind: 'alloc' as const, size })) },
  { weight: 5, arbitrary: fc.nat().map((pick) => ({ kind: 'free' as const, pick })) },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.nat(), sizeArb).map(([pick, size]) => ({ kind: 'realloc' as const, pick, size })),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'fork' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reattach' as const }) },
);

interface Live {
  id: number;
  address: number;
  size: number;
  /** The pattern the forked twin holds: the same as `id` until either side rewrites it. */
  twinId?: number;
}

interface Side {
  space: AddressSpace;
  allocator: HeapAllocator;
}

function runModel(ops: Op[]): void {
  const main: Side = { space: makeSpace(), allocator: undefined as unknown as HeapAllocator };
  main.allocator = HeapAllocator.format(main.space, { base: BASE });
  let twin: Side | undefined;
  const live: Live[] = [];
  let nextId = 1;
  const sides = (): Side[] => (twin ? [main, twin] : [main]);
  // Each side writes its own pattern after the fork, so a write leaking across would show.
  const idOn = (side: Side, object: Live): number => (side === main ? object.id : object.twinId!);

  const checkAll = (when: string): void => {
    for (const side of sides()) {
      assertChecks(side.allocator, when);
      const stats = side.allocator.stats();
      assert.equal(stats.liveObjects, live.length, `live objects after ${when}`);
      const seen: Array<[number, number]> = [];
      side.allocator.forEachObject((address, size) => seen.push([address, size]));
      const expected = live.map((o) => o.address).sort((a, b) => a - b);
      assert.deepEqual(
        seen.map(([a]) => a),
        expected,
        `forEachObject lists exactly the live objects after ${when}`,
      );
      let usable = 0;
      for (let i = 0; i < seen.length; i++) {
        const [address, size] = seen[i]!;
        assert.equal(address % 16, 0);
        assert.ok(address > 0);
        if (i > 0)
          assert.ok(
            seen[i - 1]![0] + seen[i - 1]![1] <= address,
            `objects overlap at 0x${address.toString(16)}`,
          );
        usable += size;
      }
      assert.equal(stats.liveBytes, usable, 'liveBytes is the sum of usable sizes');
    }
    if (twin) assert.deepEqual(twin.allocator.stats(), main.allocator.stats(), `twin stats after ${when}`);
  };

  ops.forEach((op, step) => {
    const when = `step ${step} (${op.kind})`;
    switch (op.kind) {
      case 'alloc': {
        const addresses = sides().map((side) => side.allocator.alloc(op.size));
        if (twin) assert.equal(addresses[1], addresses[0], `twin allocates the same address at ${when}`);
        const object: Live = { id: nextId++, address: addresses[0]!, size: op.size, twinId: nextId++ };
        for (const side of sides()) {
          assert.ok(side.allocator.usableSize(object.address) >= op.size);
          fill(side.space, object.address, idOn(side, object), object.size);
        }
        live.push(object);
        break;
      }
      case 'free': {
        if (live.length === 0) return;
        const [object] = live.splice(op.pick % live.length, 1);
        for (const side of sides()) {
          verify(side.space, object!.address, idOn(side, object!), object!.size, when);
          side.allocator.free(object!.address);
        }
        break;
      }
      case 'realloc': {
        if (live.length === 0) return;
        const object = live[op.pick % live.length]!;
        const addresses = sides().map((side) => side.allocator.realloc(object.address, op.size));
        if (twin) assert.equal(addresses[1], addresses[0], `twin reallocates to the same address at ${when}`);
        const kept = Math.min(object.size, op.size);
        for (const side of sides()) {
          verify(side.space, addresses[0]!, idOn(side, object), kept, `${when}: realloc keeps the prefix`);
          assert.ok(side.allocator.usableSize(addresses[0]!) >= op.size);
        }
        // Rewrite the whole object with a fresh pattern so later checks cover the new tail too.
        object.id = nextId++;
        object.twinId = nextId++;
        object.address = addresses[0]!;
        object.size = op.size;
        for (const side of sides()) fill(side.space, object.address, idOn(side, object), object.size);
        break;
      }
      case 'fork': {
        if (twin) return;
        const space = main.space.fork();
        twin = { space, allocator: HeapAllocator.attach(space, BASE) };
        for (const object of live) object.twinId = object.id; // the fork holds the parent's bytes
        break;
      }
      case 'reattach': {
        for (const side of sides()) side.allocator = HeapAllocator.attach(side.space, BASE);
        break;
      }
    }
    if (step % 4 === 3) checkAll(when);
  });
  checkAll('the last step');
  for (const side of sides()) {
    for (const object of live) verify(side.space, object.address, idOn(side, object), object.size, 'the end');
    for (const object of live) side.allocator.free(object.address);
    assertChecks(side.allocator, 'freeing everything');
    assert.equal(side.allocator.stats().liveBytes, 0);
    assert.equal(side.allocator.stats().liveObjects, 0);
  }
}

test('model: random alloc/free/realloc keep contents, never overlap, pass check(), and a re-attached fork behaves identically', () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 80 }), (ops) => runModel(ops)),
    { numRuns: 60 },
  );
});

test('every page size from 512 B to 64 KiB: objects of 1 B to many pages keep their bytes and check() passes', () => {
  for (const pageSize of [512, 16384, 65536]) {
    const space = makeSpace(pageSize);
    const allocator = HeapAllocator.format(space, { base: pageSize });
    const live: Live[] = [];
    const steps = fc.sample(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 5 * pageSize })), {
      numRuns: 1500,
      seed: pageSize,
    });
    steps.forEach(([pick, size], step) => {
      const bytes = pick % 3 === 0 ? size : size % 200;
      if (live.length > 0 && pick % 5 < 2) {
        const [object] = live.splice(pick % live.length, 1);
        verify(space, object!.address, object!.id, object!.size, `page size ${pageSize} step ${step}`);
        allocator.free(object!.address);
      } else {
        const address = allocator.alloc(bytes);
        assert.equal(address % 16, 0);
        assert.ok(allocator.usableSize(address) >= bytes);
        fill(space, address, step, bytes);
        live.push({ id: step, address, size: bytes });
      }
    });
    for (const object of live)
      verify(space, object.address, object.id, object.size, `page size ${pageSize} at the end`);
    assertChecks(allocator, `page size ${pageSize}`);
    assert.equal(allocator.stats().liveObjects, live.length);
  }
});

// ---------------------------------------------------------------------------------------------
// Bad frees

test('double free, interior pointers and addresses it never returned are MF_HEAP_BAD_FREE and write nothing', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const small = allocator.alloc(64);
  const other = allocator.alloc(64);
  const large = allocator.alloc(5 * PAGE);
  const freedLarge = allocator.alloc(4 * PAGE);
  const keep = allocator.alloc(100); // keeps freedLarge's run below top once it is freed
  allocator.free(freedLarge);
  allocator.free(other);
  fill(space, small, 1, 64);
  fill(space, large, 2, 5 * PAGE);
  const statsBefore = allocator.stats();

  const bad: Array<[string, unknown]> = [
    ['double free of a small block', other],
    ['interior pointer into a small block', small + 16],
    ['unaligned pointer into a small block', small + 3],
    ['a block never carved', small + 64 * 10],
    ['the span bitmap', Math.floor(small / PAGE) * PAGE],
    ['interior pointer into a large object (page start)', large + PAGE],
    ['interior pointer into a large object (mid page)', large + 48],
    ['a freed large run', freedLarge],
    ['inside a freed large run', freedLarge + 2 * PAGE],
    ['address 0', 0],
    ['the allocator header', BASE],
    ['the descriptor table', BASE + HEADER_BYTES + 64],
    ['above top', BASE + 64 * 1024 * 1024],
    ['past the space', 2 ** 40],
    ['negative', -16],
    ['fractional', small + 0.5],
    ['NaN', Number.NaN],
    ['a string', String(small)],
  ];
  for (const [what, address] of bad) {
    for (const call of ['free', 'realloc', 'usableSize'] as const) {
      const written = watch(space);
      assert.throws(
        () => {
          if (call === 'free') allocator.free(address as number);
          else if (call === 'realloc') allocator.realloc(address as number, 32);
          else allocator.usableSize(address as number);
        },
        typedError(ErrorCodes.HEAP_BAD_FREE, 'nothing was changed'),
        `${call} of ${what}`,
      );
      assert.equal(written(), 0, `${call} of ${what} wrote no page`);
    }
  }
  assert.deepEqual(allocator.stats(), statsBefore);
  assertChecks(allocator, 'the bad frees');
  verify(space, small, 1, 64, 'small object after bad frees');
  verify(space, large, 2, 5 * PAGE, 'large object after bad frees');
  allocator.free(small);
  allocator.free(large);
  allocator.free(keep);
  assert.throws(() => allocator.free(small), typedError(ErrorCodes.HEAP_BAD_FREE, 'double free'));
  assertChecks(allocator, 'freeing the rest');
});

test('a non-integer, negative or larger-than-the-heap size is MF_INVALID_ARGUMENT and writes nothing', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const object = allocator.alloc(10);
  for (const size of [-1, 1.5, Number.NaN, Infinity, 2 ** 31, 2 ** 60, '16' as unknown as number]) {
    const written = watch(space);
    assert.throws(() => allocator.alloc(size), typedError(ErrorCodes.INVALID_ARGUMENT), `alloc(${size})`);
    assert.throws(
      () => allocator.realloc(object, size),
      typedError(ErrorCodes.INVALID_ARGUMENT),
      `realloc(${size})`,
    );
    assert.equal(written(), 0);
  }
  assertChecks(allocator, 'bad sizes');
});

// ---------------------------------------------------------------------------------------------
// Full heap

test('a heap with a small limit fills up with MF_HEAP_FULL, changes nothing, and recovers after a free', () => {
  const space = makeSpace();
  const limit = BASE + 65 * PAGE; // one metadata page, 64 heap pages
  const allocator = HeapAllocator.format(space, { base: BASE, limit });
  const objects: number[] = [];
  for (;;) {
    const written = watch(space);
    const before = allocator.stats();
    try {
      objects.push(allocator.alloc(3 * PAGE));
    } catch (error) {
      typedError(ErrorCodes.HEAP_FULL, 'Free objects')(error);
      assert.equal(written(), 0, 'a failed alloc writes nothing');
      assert.deepEqual(allocator.stats(), before);
      break;
    }
    assert.ok(objects.length < 64, 'the limit stops allocation');
  }
  for (const address of objects) assert.ok(address + 3 * PAGE <= limit, 'objects stay below the limit');
  // Small objects still fit in what is left, until they do not.
  let smalls = 0;
  assert.throws(() => {
    for (;;) {
      allocator.alloc(100);
      smalls++;
    }
  }, typedError(ErrorCodes.HEAP_FULL));
  assertChecks(allocator, 'filling the heap');
  allocator.free(objects[1]!);
  const again = allocator.alloc(3 * PAGE);
  assert.equal(again, objects[1], 'the freed run is reused');
  assert.throws(() => allocator.alloc(3 * PAGE), typedError(ErrorCodes.HEAP_FULL));
  assert.ok(smalls > 10, `${smalls} small objects fit in the last page`);
  assertChecks(allocator, 'reuse in a full heap');
});

test('a frame pool that runs out fails alloc, free and realloc with MF_POOL_EXHAUSTED having written nothing', () => {
  // 100 frames of 4 KiB and no pager: the heap's own metadata and objects exhaust it. A fork
  // shares every frame, so the parent's writes need copies too.
  const pool = new FramePool({ pageSize: PAGE, capacity: 100 * PAGE });
  const space = new AddressSpace(pool, { size: '1GiB' });
  const allocator = HeapAllocator.format(space, { base: BASE });
  const random = fc.sample(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 5 * PAGE })), {
    numRuns: 3000,
    seed: 7,
  });
  const live: number[] = [];
  let exhausted = 0;
  let fork: AddressSpace | undefined;
  random.forEach(([pick, size], step) => {
    if (step === 1500) fork = space.fork();
    const op = pick % 5;
    const written = watch(space);
    const before = allocator.stats();
    try {
      if (op <= 2 || live.length === 0) live.push(allocator.alloc(pick % 2 === 0 ? size % 300 : size));
      else if (op === 3) {
        const at = pick % live.length;
        allocator.free(live[at]!);
        live.splice(at, 1);
      } else {
        const at = pick % live.length;
        live[at] = allocator.realloc(live[at]!, size);
      }
    } catch (error) {
      typedError(ErrorCodes.POOL_EXHAUSTED)(error);
      exhausted++;
      assert.equal(written(), 0, `step ${step}: the failed call wrote no page`);
      assert.deepEqual(allocator.stats(), before);
      if (exhausted % 20 === 0) assertChecks(allocator, `exhaustion at step ${step}`);
      // Give frames back now and then so the run keeps going.
      if (exhausted % 5 === 0) allocator.trimFree();
    }
  });
  assert.ok(exhausted > 10, `the pool ran out ${exhausted} times`);
  assertChecks(allocator, 'the exhaustion run');
  assert.ok(fork);
});

test('format refuses a base that is not page-aligned and a range with no room', () => {
  const space = makeSpace();
  assert.throws(
    () => HeapAllocator.format(space, { base: 100 }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'page-aligned'),
  );
  assert.throws(
    () => HeapAllocator.format(space, { base: BASE, limit: BASE + PAGE }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'no page after its metadata'),
  );
  assert.throws(
    () => HeapAllocator.format(space, { base: BASE, limit: 2 ** 40 }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'no larger than the space'),
  );
});

// ---------------------------------------------------------------------------------------------
// Attach

test('attach on garbage, a wrong version or impossible fields is MF_HEAP_CORRUPT', () => {
  const space = makeSpace();
  assert.throws(
    () => HeapAllocator.attach(space, BASE),
    typedError(ErrorCodes.HEAP_CORRUPT, 'magic', 'never formatted'),
  );
  const noise = new Uint8Array(HEADER_BYTES);
  for (let i = 0; i < noise.length; i++) noise[i] = (i * 7919 + 13) & 0xff;
  space.write(BASE, noise);
  assert.throws(() => HeapAllocator.attach(space, BASE), typedError(ErrorCodes.HEAP_CORRUPT, 'magic'));

  const cases: Array<[string, number, (s: AddressSpace) => void]> = [
    ['version', 4, (s) => s.writeU32(BASE + 4, 99)],
    ['pages', 8, (s) => s.writeU32(BASE + 8, 8192)],
    ['base', 16, (s) => s.writeF64(BASE + 16, 0)],
    ['limit', 24, (s) => s.writeF64(BASE + 24, 2 ** 50)],
    ['top page', 40, (s) => s.writeU32(BASE + 40, 0xffffffff)],
    ['data start page', 32, (s) => s.writeU32(BASE + 32, 7)],
    ['class 3 span list', 96 + 12, (s) => s.writeU32(BASE + 96 + 12, 0xfffffff)],
  ];
  for (const [fragment, , corrupt] of cases) {
    const fresh = makeSpace();
    const allocator = HeapAllocator.format(fresh, { base: BASE });
    allocator.alloc(100);
    HeapAllocator.attach(fresh, BASE); // fine before the damage
    corrupt(fresh);
    assert.throws(
      () => HeapAllocator.attach(fresh, BASE),
      typedError(ErrorCodes.HEAP_CORRUPT, fragment),
      fragment,
    );
  }
});

// ---------------------------------------------------------------------------------------------
// Reuse

test('a steady churn of allocations and frees reuses space: the top stops growing', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const random = fc.sample(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 6 * PAGE })), {
    numRuns: 24000,
    seed: 42,
  });
  const live: number[] = [];
  const LIVE = 400;
  let topAfterWarmup = 0;
  let topMax = 0;
  let liveMax = 0;
  random.forEach(([pick, size], step) => {
    // Sizes skewed to small: most allocations are small objects, some span many pages.
    const bytes = pick % 4 === 0 ? size : (size % 512) + 1;
    if (live.length >= LIVE) allocator.free(live.splice(pick % live.length, 1)[0]!);
    live.push(allocator.alloc(bytes));
    const stats = allocator.stats();
    liveMax = Math.max(liveMax, stats.liveBytes);
    if (step === 4000) topAfterWarmup = stats.topBytes;
    if (step > 4000) topMax = Math.max(topMax, stats.topBytes);
  });
  assertChecks(allocator, 'the churn');
  const stats = allocator.stats();
  // 20 000 allocations after warm-up would need ~20x the warm-up heap without reuse.
  assert.ok(topMax <= 2 * topAfterWarmup, `top grew from ${topAfterWarmup} to ${topMax} bytes`);
  assert.ok(
    stats.heapBytes <= 3 * liveMax,
    `heap pages ${stats.heapBytes} for at most ${liveMax} live bytes`,
  );
  for (const address of live) allocator.free(address);
  assertChecks(allocator, 'freeing the churn');
  // Only one empty span per size class may stay; every other page is free or above top.
  assert.ok(allocator.stats().heapBytes - allocator.stats().freeRunBytes <= 32 * 16 * PAGE);
});

test('freeing the objects at the top lowers the top; trimFree gives free pages back to the pool', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const topEmpty = allocator.stats().topBytes;
  const a = allocator.alloc(10 * PAGE);
  const b = allocator.alloc(20 * PAGE);
  const c = allocator.alloc(30 * PAGE);
  fill(space, a, 1, 10 * PAGE);
  fill(space, b, 2, 20 * PAGE);
  fill(space, c, 3, 30 * PAGE);
  assert.equal(allocator.stats().topBytes, topEmpty + 60 * PAGE);
  allocator.free(b);
  assert.equal(allocator.stats().freeRunBytes, 20 * PAGE, 'a hole below top is a free run');
  allocator.free(c);
  assert.equal(allocator.stats().topBytes, topEmpty + 10 * PAGE, 'the top drops past the merged free runs');
  assert.equal(allocator.stats().freeRunBytes, 0);
  assertChecks(allocator, 'lowering top');
  const used = space.pool.used;
  assert.equal(allocator.trimFree(), 50 * PAGE);
  assert.equal(space.pool.used, used - 50, 'the 50 pages above top gave back their frames');
  verify(space, a, 1, 10 * PAGE, 'the object below the trimmed pages');
  assertChecks(allocator, 'trimFree');
  assert.equal(allocator.trimFree(), 0, 'nothing left to trim');
});

test('free runs are reused by fit: exact bins for short runs, first fit within a shared bin for long ones', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const fence = (): number => allocator.alloc(PAGE * 3); // keeps the runs apart and below top
  const three = allocator.alloc(3 * PAGE);
  fence();
  const five = allocator.alloc(5 * PAGE);
  fence();
  const forty = allocator.alloc(40 * PAGE);
  fence();
  allocator.free(three);
  allocator.free(five);
  allocator.free(forty);
  const topBytes = allocator.stats().topBytes;
  assert.equal(allocator.alloc(4 * PAGE), five, 'no 4-page run: the 5-page run is split');
  assert.equal(allocator.alloc(3 * PAGE), three, 'the 3-page run fits exactly');
  assert.equal(
    allocator.alloc(PAGE * 3 - 100),
    forty,
    'the leftover 1-page run is too short; the 40-page run is next',
  );
  // 37 pages are left of the 40-page run, in the bin for 33..63 pages: too short for 50.
  const fifty = allocator.alloc(50 * PAGE);
  assert.equal(fifty, topBytes + BASE, 'a 50-page object comes from the top, not from a 37-page run');
  assert.equal(allocator.alloc(36 * PAGE), forty + 3 * PAGE, 'a 36-page object fits the 37-page run');
  assert.equal(
    allocator.stats().freeRunBytes,
    2 * PAGE,
    'a 1-page run after the 5-page split and one after the 36',
  );
  assertChecks(allocator, 'reuse by fit');
});

test('realloc grows and shrinks large objects in place when it can and moves otherwise, keeping the bytes', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const a = allocator.alloc(3 * PAGE);
  fill(space, a, 1, 3 * PAGE);
  assert.equal(allocator.realloc(a, 8 * PAGE), a, 'at the top: grows in place');
  verify(space, a, 1, 3 * PAGE, 'grown at top');
  const b = allocator.alloc(3 * PAGE);
  assert.equal(allocator.realloc(a, 5 * PAGE), a, 'shrinks in place');
  assert.equal(allocator.usableSize(a), 5 * PAGE);
  assert.equal(allocator.realloc(a, 8 * PAGE), a, 'grows back into its own freed tail');
  const moved = allocator.realloc(a, 20 * PAGE);
  assert.notEqual(moved, a, 'no room after it: moves');
  verify(space, moved, 1, 3 * PAGE, 'moved');
  assert.throws(
    () => allocator.usableSize(a),
    typedError(ErrorCodes.HEAP_BAD_FREE),
    'the old address is free',
  );
  const s = allocator.alloc(40);
  fill(space, s, 2, 40);
  assert.equal(allocator.realloc(s, 48), s, 'a small object grows within its block');
  const bigger = allocator.realloc(s, 3000);
  verify(space, bigger, 2, 40, 'small moved to a larger class');
  const toSmall = allocator.realloc(moved, 100);
  verify(space, toSmall, 1, 100, 'a large object shrunk to a small one');
  assert.ok(allocator.usableSize(toSmall) < PAGE);
  allocator.free(b);
  assertChecks(allocator, 'reallocs');
});

// ---------------------------------------------------------------------------------------------
// check() finds damage

test('check() names the page and what is wrong when a metadata word is corrupted', () => {
  const descOf = (page: number): number => BASE + HEADER_BYTES + (page - BASE / PAGE) * DESC_BYTES;
  const setup = (): {
    space: AddressSpace;
    allocator: HeapAllocator;
    small: number;
    large: number;
    hole: number;
  } => {
    const space = makeSpace();
    const allocator = HeapAllocator.format(space, { base: BASE });
    const small = allocator.alloc(64);
    allocator.alloc(64);
    const hole = allocator.alloc(6 * PAGE);
    const large = allocator.alloc(4 * PAGE);
    allocator.alloc(10);
    allocator.free(hole);
    assertChecks(allocator, 'setup');
    return { space, allocator, small, large, hole };
  };
  type Damage = (t: ReturnType<typeof setup>) => string[];
  const smallPage = (t: ReturnType<typeof setup>): number => Math.floor(t.small / PAGE);
  const damages: Array<[string, Damage]> = [
    [
      'a span used count',
      (t) => {
        t.space.writeU16(descOf(smallPage(t)) + 2, 5);
        return ['used count is 5', `page ${smallPage(t)} `];
      },
    ],
    [
      'a cleared bitmap bit',
      (t) => {
        t.space.writeU8(smallPage(t) * PAGE, 0b10);
        return [`page ${smallPage(t)} `, 'used count is 2 but 1 blocks are marked allocated'];
      },
    ],
    [
      'a free-run tail length',
      (t) => {
        t.space.writeU32(descOf(t.hole / PAGE + 5) + 4, 3);
        return [`page ${t.hole / PAGE + 5} `, 'tail says 3 pages'];
      },
    ],
    [
      'a large object tail',
      (t) => {
        t.space.writeU32(descOf(t.large / PAGE + 2) + 4, 1);
        return [`page ${t.large / PAGE + 2} `, 'inside the large object'];
      },
    ],
    [
      'a large object length',
      (t) => {
        t.space.writeU32(descOf(t.large / PAGE) + 4, 2);
        return [`page ${t.large / PAGE + 2} `, 'where a run should start'];
      },
    ],
    [
      'the large-object counter',
      (t) => {
        t.space.writeF64(BASE + 48, 7);
        return ['large objects is 7, but the pages add up to 1'];
      },
    ],
    [
      'a free bin head',
      (t) => {
        t.space.writeU32(BASE + 96 + 256 + 5 * 4, 0); // the 6-page hole's bin
        return [`page ${t.hole / PAGE} `, 'in no free bin (leaked)'];
      },
    ],
    [
      'the top',
      (t) => {
        t.space.writeU32(BASE + 40, t.allocator.top + 3);
        return [`page ${t.allocator.top - 3} `, 'where a run should start'];
      },
    ],
  ];
  for (const [what, damage] of damages) {
    const t = setup();
    const fragments = damage(t);
    const result = t.allocator.check();
    assert.equal(result.ok, false, `check() notices ${what}`);
    for (const fragment of fragments) {
      assert.ok(
        result.problems.some((p) => p.includes(fragment)),
        `a problem for ${what} mentions "${fragment}":\n${result.problems.join('\n')}`,
      );
    }
  }

  // A free-list link overwritten past the carved blocks (a write after free): check() names
  // it, and alloc refuses to follow it rather than hand out a block that is not free.
  const t = setup();
  t.allocator.free(t.small);
  t.allocator.free(t.small + 64);
  t.space.writeU32(t.small + 64, 200);
  const result = t.allocator.check();
  assert.equal(result.ok, false);
  assert.ok(
    result.problems.some(
      (p) => p.includes('free list links to block 199') && p.includes(`page ${smallPage(t)} `),
    ),
    result.problems.join('\n'),
  );
  assert.throws(() => t.allocator.alloc(64), typedError(ErrorCodes.HEAP_CORRUPT, 'never carved'));

  // A large object whose length was overwritten: free refuses it as corrupt and writes nothing.
  const u = setup();
  u.space.writeU32(descOf(u.large / PAGE) + 4, 1_000_000);
  const written = watch(u.space);
  assert.throws(
    () => u.allocator.free(u.large),
    typedError(ErrorCodes.HEAP_CORRUPT, `page ${u.large / PAGE} `, '1000000 pages'),
  );
  assert.equal(written(), 0);
});

test('check() never throws on damaged metadata: random flipped bytes are reported or harmless', () => {
  const space = makeSpace();
  const allocator = HeapAllocator.format(space, { base: BASE });
  const objects: number[] = [];
  for (let i = 0; i < 300; i++)
    objects.push(allocator.alloc([24, 64, 500, 3000, 9 * PAGE, 40 * PAGE][i % 6]!));
  for (let i = 0; i < 300; i += 3) allocator.free(objects[i]!);
  assertChecks(allocator, 'setup');
  const top = allocator.top;
  const descEnd = BASE + HEADER_BYTES + (top - BASE / PAGE) * DESC_BYTES;
  const spans: number[] = [];
  allocator.forEachObject((address, size) => {
    if (size < PAGE) spans.push(Math.floor(address / PAGE) * PAGE);
  });
  // Damage lands in the header, the descriptors below top, or a span's bitmap.
  const target = fc.oneof(
    fc.integer({ min: BASE, max: BASE + 1200 }),
    fc.integer({ min: BASE + HEADER_BYTES, max: descEnd - 1 }),
    fc.constantFrom(...spans).chain((span) => fc.integer({ min: span, max: span + 31 })),
  );
  const outcomes = { refused: 0, reported: 0, clean: 0 };
  fc.assert(
    fc.property(
      fc.array(fc.tuple(target, fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
      (flips) => {
        const damaged = space.fork();
        for (const [at, mask] of flips) damaged.writeU8(at, damaged.readU8(at) ^ mask);
        let reopened: HeapAllocator;
        try {
          reopened = HeapAllocator.attach(damaged, BASE);
        } catch (error) {
          typedError(ErrorCodes.HEAP_CORRUPT)(error);
          outcomes.refused++;
          damaged.destroy();
          return;
        }
        const result = reopened.check(); // must not throw
        assert.equal(result.ok, result.problems.length === 0);
        for (const problem of result.problems) assert.ok(problem.length > 10);
        outcomes[result.ok ? 'clean' : 'reported']++;
        damaged.destroy();
      },
    ),
    { numRuns: 300, seed: 0xa110c },
  );
  // Unused bytes (spare header space, list links of runs on no list) may take a flip harmlessly.
  assert.ok(outcomes.reported + outcomes.refused > 200, JSON.stringify(outcomes));
});

// ---------------------------------------------------------------------------------------------
// Forks

test('an allocator attached to a forked space evolves independently of its parent', () => {
  const parent = makeSpace();
  const allocator = HeapAllocator.format(parent, { base: BASE });
  const shared = [allocator.alloc(64), allocator.alloc(3 * PAGE), allocator.alloc(700)];
  shared.forEach((address, i) => fill(parent, address, i + 1, 64));
  const childSpace = parent.fork();
  const child = HeapAllocator.attach(childSpace, BASE);
  assert.deepEqual(child.stats(), allocator.stats(), 'the child starts where the parent is');

  // Each frees a different object and allocates new ones of the same sizes: the same addresses
  // come back on both sides, holding different bytes.
  child.free(shared[0]!);
  allocator.free(shared[1]!);
  const childNew = child.alloc(64);
  const parentNew = allocator.alloc(3 * PAGE);
  assert.equal(childNew, shared[0], 'the child reuses the block it freed');
  assert.equal(parentNew, shared[1], 'the parent reuses the run it freed');
  fill(childSpace, childNew, 100, 64);
  fill(parent, parentNew, 200, 3 * PAGE);
  const childOnly = child.alloc(5 * PAGE);
  fill(childSpace, childOnly, 300, 5 * PAGE);

  verify(parent, shared[0]!, 1, 64, 'the parent still has the object the child freed');
  verify(childSpace, shared[1]!, 2, 64, 'the child still has the object the parent freed');
  verify(childSpace, childNew, 100, 64, 'child bytes');
  verify(parent, parentNew, 200, 3 * PAGE, 'parent bytes');
  verify(parent, shared[2]!, 3, 64, 'untouched object in the parent');
  verify(childSpace, shared[2]!, 3, 64, 'untouched object in the child');
  assert.equal(child.stats().liveObjects, 4);
  assert.equal(allocator.stats().liveObjects, 3);
  assert.throws(
    () => allocator.usableSize(childOnly),
    typedError(ErrorCodes.HEAP_BAD_FREE),
    "the child's object is not the parent's",
  );
  assertChecks(allocator, 'parent after the fork');
  assertChecks(child, 'child after the fork');
  assertChecks(HeapAllocator.attach(parent, BASE), 'parent re-attached');
});
