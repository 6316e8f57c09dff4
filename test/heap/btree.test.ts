import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes } from '../../src/errors.js';
import { HeapBTree, type RangeOptions } from '../../src/heap/btree.js';
import type { KeyKind } from '../../src/heap/key-codec.js';
import { Pager } from '../../src/tier/pager.js';
import { TestAllocator } from './colls-test-allocator.js';
import { errorCode, freshMemory, keyArbitrary, msgpackValue } from './colls-fixtures.js';

type Key = string | number | Uint8Array;

/**
 * The order the tree promises, written independently of its codec: strings by UTF-8 bytes (code
 * point order), numbers numerically with -0 = 0 and NaN after +Infinity, bytes by memcmp.
 */
function compareKeys(a: Key, b: Key): number {
  if (typeof a === 'number' && typeof b === 'number') {
    if (Number.isNaN(a) || Number.isNaN(b)) return Number(Number.isNaN(a)) - Number(Number.isNaN(b));
    return a < b ? -1 : a > b ? 1 : 0;
  }
  if (typeof a === 'string' && typeof b === 'string') return Buffer.compare(Buffer.from(a), Buffer.from(b));
  return Buffer.compare(a as Uint8Array, b as Uint8Array);
}

/** A sorted-array model of the tree. */
class Model {
  entries: [Key, unknown][] = [];
  find(key: Key): number {
    return this.entries.findIndex(([k]) => compareKeys(k, key) === 0);
  }
  set(key: Key, value: unknown): void {
    const i = this.find(key);
    if (i >= 0) this.entries[i] = [this.entries[i]![0], value];
    else {
      this.entries.push([typeof key === 'number' && key === 0 ? 0 : key, value]);
      this.entries.sort((x, y) => compareKeys(x[0], y[0]));
    }
  }
  delete(key: Key): boolean {
    const i = this.find(key);
    if (i >= 0) this.entries.splice(i, 1);
    return i >= 0;
  }
  range(options: RangeOptions<Key>): [Key, unknown][] {
    let rows = this.entries.filter(
      ([k]) =>
        (options.gt === undefined || compareKeys(k, options.gt) > 0) &&
        (options.gte === undefined || compareKeys(k, options.gte) >= 0) &&
        (options.lt === undefined || compareKeys(k, options.lt) < 0) &&
        (options.lte === undefined || compareKeys(k, options.lte) <= 0),
    );
    if (options.reverse) rows = rows.reverse();
    return rows.slice(0, options.limit ?? Infinity);
  }
}

type Op =
  | { op: 'set'; key: Key; value: unknown }
  | { op: 'delete'; key: Key }
  | { op: 'get'; key: Key }
  | { op: 'range'; range: RangeOptions<Key> }
  | { op: 'reopen' }
  | { op: 'clear' };

function rangeArbitrary(key: fc.Arbitrary<Key>): fc.Arbitrary<RangeOptions<Key>> {
  return fc
    .record(
      {
        low: fc.option(fc.tuple(fc.boolean(), key), { nil: undefined }),
        high: fc.option(fc.tuple(fc.boolean(), key), { nil: undefined }),
        reverse: fc.boolean(),
        limit: fc.option(fc.nat(30), { nil: undefined }),
      },
      { requiredKeys: [] },
    )
    .map(({ low, high, reverse, limit }) => {
      const range: RangeOptions<Key> = {};
      if (low) range[low[0] ? 'gt' : 'gte'] = low[1];
      if (high) range[high[0] ? 'lt' : 'lte'] = high[1];
      if (reverse) range.reverse = true;
      if (limit !== undefined) range.limit = limit;
      return range;
    });
}

function opArbitrary(kind: KeyKind, keyMax: number): fc.Arbitrary<Op> {
  const key = keyArbitrary(kind, keyMax);
  return fc.oneof(
    { weight: 12, arbitrary: fc.record({ op: fc.constant('set' as const), key, value: msgpackValue }) },
    { weight: 6, arbitrary: fc.record({ op: fc.constant('delete' as const), key }) },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('get' as const), key }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('range' as const), range: rangeArbitrary(key) }) },
    { weight: 1, arbitrary: fc.constant({ op: 'reopen' as const }) },
    { weight: 1, arbitrary: fc.constant({ op: 'clear' as const }) },
  );
}

function runModel(kind: KeyKind, nodeSize: number, misalign: boolean, ops: Op[]): void {
  const memory = freshMemory({ misalign, poison: true });
  let tree = HeapBTree.create(memory, { keys: kind, values: 'msgpack', nodeSize }) as HeapBTree<Key, unknown>;
  const model = new Model();
  for (const step of ops) {
    switch (step.op) {
      case 'set':
        tree.set(step.key, step.value);
        model.set(step.key, step.value);
        break;
      case 'delete':
        assert.equal(tree.delete(step.key), model.delete(step.key));
        break;
      case 'get': {
        const i = model.find(step.key);
        assert.deepEqual(tree.get(step.key), i >= 0 ? model.entries[i]![1] : undefined);
        assert.equal(tree.has(step.key), i >= 0);
        break;
      }
      case 'range':
        assert.deepEqual([...tree.range(step.range)], model.range(step.range));
        break;
      case 'reopen':
        tree = HeapBTree.open<Key, unknown>(memory, tree.address, { keys: kind, values: 'msgpack' });
        break;
      case 'clear':
        tree.clear();
        model.entries = [];
        break;
    }
    assert.equal(tree.size, model.entries.length);
  }
  assert.deepEqual(tree.check().problems, []);
  assert.deepEqual([...tree.entries()], model.entries);
  assert.deepEqual([...tree.keys({ reverse: true })], model.entries.map(([k]) => k).reverse());
  assert.deepEqual(tree.first(), model.entries[0]);
  assert.deepEqual(tree.last(), model.entries.at(-1));
  tree.destroy();
  assert.equal(memory.allocator.liveObjects, 0, 'destroy returns every object');
}

for (const kind of ['string', 'number', 'bytes'] as const) {
  test(`B+tree with ${kind} keys behaves as a sorted array over random op sequences (ranges, reopen)`, () => {
    fc.assert(
      fc.property(
        fc.constantFrom(512, 4096),
        fc.boolean(),
        fc.array(opArbitrary(kind, 112), { minLength: 1, maxLength: 400 }),
        (nodeSize, misalign, ops) => runModel(kind, nodeSize, misalign, ops),
      ),
      { numRuns: 60 },
    );
  });
}

test('deep trees: random inserts and deletes keep every invariant; emptying the tree leaves one leaf', () => {
  const memory = freshMemory({ poison: true });
  const tree = HeapBTree.create(memory, { keys: 'string', values: 'number', nodeSize: 512 });
  const model = new Map<string, number>();
  let state = 7;
  const random = (n: number) => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % n;
  };
  const key = (i: number) => `${'k'.repeat(i % 50)}:${i}`;
  for (let step = 0; step < 40_000; step++) {
    const i = random(8000);
    if (random(10) < 6) {
      tree.set(key(i), i);
      model.set(key(i), i);
    } else {
      assert.equal(tree.delete(key(i)), model.delete(key(i)));
    }
    if (step % 5000 === 4999) assert.deepEqual(tree.check().problems, []);
  }
  assert.ok(memory.space.readU8(tree.address + 7) >= 3, 'a tree three levels deep or more');
  const sorted = [...model.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  assert.deepEqual([...tree.keys()], sorted);
  for (const k of sorted) assert.equal(tree.get(k), model.get(k));
  for (const k of sorted) assert.ok(tree.delete(k));
  assert.deepEqual(tree.check().problems, []);
  assert.equal(tree.size, 0);
  assert.equal(memory.space.readU8(tree.address + 7), 1, 'depth back to one');
  assert.equal(memory.allocator.liveObjects, 2, 'the header and one leaf');
});

test('numbers sort numerically with -0 = 0 and NaN last; ranges respect exclusive bounds', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'number', values: 'number' });
  const keys = [NaN, Infinity, -Infinity, 0, -0, 1e-300, -1e-300, 5, -5, 2 ** 60, -(2 ** 60), 0.5];
  for (const key of keys) tree.set(key, 1);
  assert.deepEqual(
    [...tree.keys()],
    [-Infinity, -(2 ** 60), -5, -1e-300, 0, 1e-300, 0.5, 5, 2 ** 60, Infinity, NaN],
  );
  assert.deepEqual([...tree.keys({ gt: 0, lt: 5 })], [1e-300, 0.5]);
  assert.deepEqual([...tree.keys({ gte: -0, lte: 5, reverse: true, limit: 2 })], [5, 0.5]);
  assert.deepEqual([...tree.keys({ gt: Infinity })], [NaN]);
});

test('strings sort by code point (UTF-8 bytes), not by UTF-16 units', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'string', values: 'number' });
  for (const key of ['\uFFFF', '\u{1F600}', '', 'a', 'a\0', 'ab']) tree.set(key, 0);
  assert.deepEqual([...tree.keys()], ['', 'a', 'a\0', 'ab', '\uFFFF', '\u{1F600}']);
});

test('cursors re-seek after changes: every key that stays is seen once, in order, never a deleted one', () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.integer({ min: 0, max: 2000 }), { minLength: 1, maxLength: 300 }),
      fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 2000 })), { maxLength: 300 }),
      fc.boolean(),
      (initial, changes, reverse) => {
        const memory = freshMemory();
        const tree = HeapBTree.create(memory, { keys: 'number', values: 'number', nodeSize: 512 });
        for (const key of initial) tree.set(key, key);
        const present = new Set(initial);
        const removed = new Set<number>();
        const yielded: number[] = [];
        let step = 0;
        for (const [key, value] of tree.range({ reverse })) {
          assert.equal(value, key);
          assert.ok(present.has(key), `yielded ${key}, which is not in the tree`);
          yielded.push(key);
          const change = changes[step++];
          if (change) {
            const [insert, k] = change;
            if (insert) {
              tree.set(k, k);
              present.add(k);
            } else if (tree.delete(k)) {
              present.delete(k);
              removed.add(k);
            }
          }
        }
        for (let i = 1; i < yielded.length; i++) {
          assert.ok(
            reverse ? yielded[i]! < yielded[i - 1]! : yielded[i]! > yielded[i - 1]!,
            'in order, once',
          );
        }
        const seen = new Set(yielded);
        for (const key of initial) if (!removed.has(key)) assert.ok(seen.has(key), `missed ${key}`);
        assert.deepEqual(tree.check().problems, []);
      },
    ),
    { numRuns: 100 },
  );
});

test('delete while iterating visits every key once and empties the tree', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'string', values: 'msgpack' });
  for (let i = 0; i < 5000; i++) tree.set(`k${i}`, { i });
  let n = 0;
  for (const [key] of tree.entries()) {
    assert.ok(tree.delete(key));
    n++;
  }
  assert.equal(n, 5000);
  assert.equal(tree.size, 0);
  assert.deepEqual(tree.check().problems, []);
});

test('typed errors: wrong kinds, wrong key types, over-long keys, bad bounds, use after destroy', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'bytes', values: 'number' });
  assert.equal(
    errorCode(() => HeapBTree.open(memory, tree.address, { keys: 'string' })),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => HeapBTree.open(memory, tree.address, { values: 'ref' })),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => tree.set('a' as unknown as Uint8Array, 1)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => tree.set(new Uint8Array(1), 'x' as unknown as number)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => tree.set(new Uint8Array(tree.keyMax + 1), 1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  tree.set(new Uint8Array(tree.keyMax), 1);
  assert.equal(tree.get(new Uint8Array(tree.keyMax)), 1);
  assert.equal(
    errorCode(() => tree.range({ gt: new Uint8Array(1), gte: new Uint8Array(1) })),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    errorCode(() => tree.range({ limit: -1 })),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(tree.size, 1);
  tree.destroy();
  assert.equal(
    errorCode(() => tree.get(new Uint8Array(1))),
    ErrorCodes.DESTROYED,
  );
  assert.equal(
    errorCode(() => HeapBTree.open(memory, tree.address)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(memory.allocator.liveObjects, 0);
});

test('the structural checker reports a damaged tree', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'number', values: 'number' });
  for (let i = 0; i < 2000; i++) tree.set(i, i);
  assert.deepEqual(tree.check().problems, []);
  // Swap two keys' bytes in the first leaf: order breaks.
  let leaf = memory.space.readF64(tree.address + 16);
  for (let level = 1; level < memory.space.readU8(tree.address + 7); level++)
    leaf = memory.space.readF64(leaf + 8);
  const slot0 = memory.space.readU16(leaf + 32);
  const slot1 = memory.space.readU16(leaf + 34);
  memory.space.writeU16(leaf + 32, slot1);
  memory.space.writeU16(leaf + 34, slot0);
  const result = tree.check();
  assert.equal(result.ok, false);
  assert.match(result.problems.join('\n'), /is not above/);
});

test('a tree larger than the pager budget: 200k entries with a 4 MiB budget, scanned in order', async () => {
  const pager = await Pager.open({ budget: '4MiB', store: { kind: 'memory' } });
  const space = pager.createSpace({ size: '4GiB' });
  try {
    const memory = { space, allocator: new TestAllocator(space) };
    const tree = HeapBTree.create(memory, { keys: 'number', values: 'msgpack' });
    const count = 200_000;
    // Keys in a scrambled order (a multiplicative permutation of 0..count-1).
    const key = (i: number) => (i * 7919) % count;
    for (let i = 0; i < count; i++) tree.set(key(i), `v${key(i)}`);
    for (let k = 0; k < count; k += 5) tree.delete(k);
    assert.ok(pager.stats().evictions > 0, 'the tree did not fit the budget');
    const reopened = HeapBTree.open<number, string>(memory, tree.address);
    assert.equal(reopened.size, count - count / 5);
    let expected = 1;
    for (const [k, v] of reopened.range()) {
      assert.equal(k, expected);
      assert.equal(v, `v${k}`);
      expected++;
      if (expected % 5 === 0) expected++;
    }
    assert.equal(expected, count + 1);
    assert.deepEqual(
      [...reopened.keys({ gte: 100_000, lt: 100_012, reverse: true })],
      [100_011, 100_009, 100_008, 100_007, 100_006, 100_004, 100_003, 100_002, 100_001],
    );
    for (let i = 0; i < 2000; i++) {
      const k = key(i * 97);
      assert.equal(reopened.get(k), k % 5 === 0 ? undefined : `v${k}`);
    }
    assert.deepEqual(reopened.check().problems, []);
  } finally {
    space.destroy();
    await pager.close();
  }
});

test('a forked space holds an independent copy of the tree', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'string', values: 'ref' });
  for (let i = 0; i < 5000; i++) tree.set(`k${String(i).padStart(5, '0')}`, i);
  const childSpace = memory.space.fork();
  const child = { space: childSpace, allocator: memory.allocator.clone(childSpace) };
  const childTree = HeapBTree.open<string, number>(child, tree.address);
  for (let i = 0; i < 5000; i += 2) childTree.delete(`k${String(i).padStart(5, '0')}`);
  for (let i = 0; i < 5000; i += 3) tree.set(`k${String(i).padStart(5, '0')}`, i + 1);
  assert.equal(tree.size, 5000);
  assert.equal(childTree.size, 2500);
  assert.deepEqual(
    [...childTree.range({ lt: 'k00010' })],
    [1, 3, 5, 7, 9].map((i) => [`k0000${i}`, i]),
  );
  assert.deepEqual(
    [...tree.range({ lt: 'k00004' })],
    [
      ['k00000', 1],
      ['k00001', 1],
      ['k00002', 2],
      ['k00003', 4],
    ],
  );
  assert.deepEqual(tree.check().problems, []);
  assert.deepEqual(childTree.check().problems, []);
  childSpace.destroy();
});

test('MF_HEAP_FULL at any allocation of a set leaves the tree as it was', () => {
  const memory = freshMemory();
  const tree = HeapBTree.create(memory, { keys: 'string', values: 'msgpack', nodeSize: 512 });
  const model = new Map<string, unknown>();
  let state = 5;
  const random = (n: number) => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % n;
  };
  let failures = 0;
  for (let step = 0; step < 4000; step++) {
    const key = `${'k'.repeat(random(80))}${random(800)}`;
    const value = random(3) === 0 ? 'b'.repeat(60 + random(200)) : random(1000);
    memory.allocator.failIn = 1 + random(4);
    try {
      tree.set(key, value);
      model.set(key, value);
    } catch (error) {
      assert.equal((error as { code?: string }).code, ErrorCodes.HEAP_FULL);
      failures++;
    }
    memory.allocator.failIn = 0;
    assert.deepEqual(tree.get(key), model.get(key));
  }
  assert.ok(failures > 100, `${failures} injected failures`);
  assert.equal(tree.size, model.size);
  for (const [key, value] of model) assert.deepEqual(tree.get(key), value);
  assert.deepEqual(tree.check().problems, []);
  tree.destroy();
  assert.equal(memory.allocator.liveObjects, 0, 'nothing leaked by the failed calls');
});
