/**
 * Model-based property test of the memory core: random sequences of write / read / trim /
 * write-zeroes / scalar writes / fork / merge pass / epoch advance / destroy over several
 * spaces of one small pool, checked against a naive model (a byte array per space).
 *
 * After every step: each touched space reads back exactly as the model; every frame's
 * refcount equals the page-table slots holding it; free + used == capacity; dirty pages
 * since any epoch cover what was written and only what was touched. A write that fails with
 * POOL_EXHAUSTED must change nothing. After destroying every space the pool is free.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, ErrorCodes, FramePool, MemfabricError, SamePageMerger } from '../../src/index.js';
import { checkPoolInvariants } from './invariants.js';

const PAGE = 512;

interface ModelSpace {
  real: AddressSpace;
  bytes: Uint8Array;
  epoch: number;
  /** Per page: epoch of the last write op that covered it. */
  written: Uint32Array;
  /** Per page: epoch of the last write, trim or zero op that covered it. */
  touched: Uint32Array;
}

type Op =
  | { kind: 'write'; space: number; offset: number; length: number; fill: number; dup: boolean }
  | { kind: 'read'; space: number; offset: number; length: number }
  | { kind: 'trim'; space: number; offset: number; length: number }
  | { kind: 'zero'; space: number; offset: number; length: number; punch: boolean }
  | { kind: 'u32'; space: number; offset: number; value: number }
  | { kind: 'fork'; space: number }
  | { kind: 'merge' }
  | { kind: 'epoch'; space: number }
  | { kind: 'destroy'; space: number }
  | { kind: 'dirty'; space: number; back: number };

const unit = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      space: fc.nat(7),
      offset: unit,
      length: fc.integer({ min: 0, max: 3 * PAGE }),
      fill: fc.integer({ min: 0, max: 4 }),
      dup: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('read' as const),
      space: fc.nat(7),
      offset: unit,
      length: fc.integer({ min: 0, max: 3 * PAGE }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('trim' as const),
      space: fc.nat(7),
      offset: unit,
      length: fc.integer({ min: 0, max: 4 * PAGE }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('zero' as const),
      space: fc.nat(7),
      offset: unit,
      length: fc.integer({ min: 0, max: 4 * PAGE }),
      punch: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('u32' as const),
      space: fc.nat(7),
      offset: unit,
      value: fc.nat(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fork' as const), space: fc.nat(7) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('merge' as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('epoch' as const), space: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('destroy' as const), space: fc.nat(7) }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('dirty' as const), space: fc.nat(7), back: fc.nat(4) }),
  },
);

function pagesOf(offset: number, length: number): [number, number] {
  return [Math.floor(offset / PAGE), Math.floor((offset + length - 1) / PAGE)];
}

function mark(arr: Uint32Array, offset: number, length: number, epoch: number): void {
  if (length === 0) return;
  const [first, last] = pagesOf(offset, length);
  for (let p = first; p <= last; p++) arr[p] = epoch;
}

function fillFor(op: { fill: number; dup: boolean }, offset: number, length: number): Uint8Array {
  // dup: the same bytes everywhere (so the merger finds duplicates); else position-dependent.
  const data = new Uint8Array(length);
  for (let i = 0; i < length; i++) data[i] = op.dup ? op.fill * 37 : (offset + i) * 31 + op.fill;
  return data;
}

function assertSameBytes(space: ModelSpace, what: string): void {
  const actual = new Uint8Array(space.bytes.length);
  space.real.read(0, actual);
  assert.ok(Buffer.compare(actual, space.bytes) === 0, `${what}: contents differ from the model`);
}

function run(
  ops: Op[],
  sizePages: number,
  capacityFrames: number,
  hash?: (page: Uint8Array) => number,
): void {
  const pool = new FramePool({ pageSize: PAGE, capacity: capacityFrames * PAGE });
  const merger = new SamePageMerger(pool, { quietEpochs: 1, maxSharing: 4, ...(hash ? { hash } : {}) });
  const size = sizePages * PAGE - 7; // not page-aligned on purpose
  const first = new AddressSpace(pool, { size });
  merger.register(first);
  const spaces: ModelSpace[] = [
    {
      real: first,
      bytes: new Uint8Array(size),
      epoch: 1,
      written: new Uint32Array(sizePages),
      touched: new Uint32Array(sizePages),
    },
  ];
  const live = (): ModelSpace[] => spaces.filter((s) => !s.real.isDestroyed);

  for (const op of ops) {
    const alive = live();
    if (op.kind === 'merge') {
      const before = alive.map((s) => s.real.stats().dataPages + s.real.stats().zeroPages);
      merger.scan();
      for (const s of alive) s.epoch++;
      alive.forEach((s, i) => {
        assertSameBytes(s, 'after merge');
        const after = s.real.stats();
        assert.equal(after.dataPages + after.zeroPages, before[i], 'merging never unmaps a page');
      });
    } else if (alive.length === 0) {
      break;
    } else {
      const s = alive[op.space % alive.length]!;
      const at = (fraction: number, length: number) => Math.floor(fraction * Math.max(1, size - length + 1));
      switch (op.kind) {
        case 'write': {
          const length = Math.min(op.length, size);
          const offset = at(op.offset, length);
          const data = fillFor(op, offset, length);
          try {
            s.real.write(offset, data);
            s.bytes.set(data, offset);
            mark(s.written, offset, length, s.epoch);
            mark(s.touched, offset, length, s.epoch);
          } catch (error) {
            assert.ok(
              error instanceof MemfabricError && error.code === ErrorCodes.POOL_EXHAUSTED,
              String(error),
            );
            assertSameBytes(s, 'after a failed write');
          }
          break;
        }
        case 'read': {
          const length = Math.min(op.length, size);
          const offset = at(op.offset, length);
          const out = new Uint8Array(length);
          s.real.read(offset, out);
          assert.ok(
            Buffer.compare(out, s.bytes.subarray(offset, offset + length)) === 0,
            'read differs from model',
          );
          break;
        }
        case 'trim':
        case 'zero': {
          const length = Math.min(op.length, size);
          const offset = at(op.offset, length);
          try {
            if (op.kind === 'trim') s.real.trim(offset, length);
            else s.real.writeZeroes(offset, length, op.punch);
            s.bytes.fill(0, offset, offset + length);
            mark(s.touched, offset, length, s.epoch);
          } catch (error) {
            assert.ok(
              error instanceof MemfabricError && error.code === ErrorCodes.POOL_EXHAUSTED,
              String(error),
            );
            assertSameBytes(s, 'after a failed trim');
          }
          break;
        }
        case 'u32': {
          const offset = at(op.offset, 4);
          try {
            s.real.writeU32(offset, op.value);
            new DataView(s.bytes.buffer).setUint32(offset, op.value, true);
            mark(s.written, offset, 4, s.epoch);
            mark(s.touched, offset, 4, s.epoch);
            assert.equal(s.real.readU32(offset), op.value >>> 0);
          } catch (error) {
            assert.ok(
              error instanceof MemfabricError && error.code === ErrorCodes.POOL_EXHAUSTED,
              String(error),
            );
            assertSameBytes(s, 'after a failed scalar write');
          }
          break;
        }
        case 'fork': {
          if (alive.length >= 6) break;
          const child = s.real.fork();
          spaces.push({
            real: child,
            bytes: s.bytes.slice(),
            epoch: s.epoch,
            written: s.written.slice(),
            touched: s.touched.slice(),
          });
          break;
        }
        case 'epoch':
          assert.equal(s.real.advanceEpoch(), ++s.epoch);
          break;
        case 'destroy':
          s.real.destroy();
          break;
        case 'dirty': {
          const since = Math.max(1, s.epoch - op.back);
          const dirty = new Set(s.real.dirtyPages(since));
          for (let p = 0; p < sizePages; p++) {
            if (s.written[p]! >= since)
              assert.ok(dirty.has(p), `page ${p} written at ${s.written[p]} missing from dirty(${since})`);
            if (dirty.has(p))
              assert.ok(s.touched[p]! >= since, `page ${p} reported dirty but untouched since ${since}`);
          }
          break;
        }
      }
    }
    for (const s of live()) assert.equal(s.real.epoch, s.epoch, 'epoch matches the model');
    checkPoolInvariants(
      pool,
      spaces.map((s) => s.real),
    );
  }
  for (const s of live()) assertSameBytes(s, 'at the end');
  for (const s of spaces) s.real.destroy();
  checkPoolInvariants(pool, []);
  assert.equal(pool.used, 0, 'destroying every space frees every frame');
  assert.equal(pool.zeroEntries, 0);
  assert.equal(pool.leaves.live, 0, 'and every leaf');
}

// `npm run test:mutation` runs this file once per mutant: fewer runs there (each still up to 60
// random operations), the full count in the normal suite.
const MUTATION_RUN = process.env.MUTATION === '1';

test('address spaces agree with a naive model under random operations (one leaf, roomy pool)', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 60 }), (ops) => run(ops, 40, 4096)),
    { numRuns: MUTATION_RUN ? 60 : 150 },
  );
});

test('address spaces agree with a naive model across several leaves, a pool that runs out, and a colliding hash', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 60 }), fc.integer({ min: 4, max: 60 }), (ops, capacity) =>
      // A hash with four values: most different pages collide, so only the byte compare keeps them apart.
      run(ops, 1100, capacity, (page) => page[0]! & 3),
    ),
    { numRuns: MUTATION_RUN ? 40 : 80 },
  );
});
