import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes } from '../../src/errors.js';
import { HeapHashMap } from '../../src/heap/hash-map.js';
import { HeapBTree } from '../../src/heap/btree.js';
import { readOrderedF64 } from '../../src/heap/key-codec.js';
import type { KeyKind } from '../../src/heap/key-codec.js';
import { Pager } from '../../src/tier/pager.js';
import { TestAllocator } from './colls-test-allocator.js';
import { errorCode, freshMemory, keyArbitrary, modelKey, msgpackValue } from './colls-fixtures.js';

type Key = string | number | Uint8Array;

type Op =
  | { op: 'set'; key: Key; value: unknown }
  | { op: 'delete'; key: Key }
  | { op: 'get'; key: Key }
  | { op: 'reopen' }
  | { op: 'clear' };

function opArbitrary(kind: KeyKind, keyMax: number): fc.Arbitrary<Op> {
  const key = keyArbitrary(kind, keyMax);
  return fc.oneof(
    { weight: 10, arbitrary: fc.record({ op: fc.constant('set' as const), key, value: msgpackValue }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('delete' as const), key }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('get' as const), key }) },
    { weight: 1, arbitrary: fc.constant({ op: 'reopen' as const }) },
    { weight: 1, arbitrary: fc.constant({ op: 'clear' as const }) },
  );
}

/** Applies ops to a map and to a JS Map, comparing every answer; then the whole contents. */
function runModel(kind: KeyKind, nodeSize: number, misalign: boolean, ops: Op[]): void {
  const memory = freshMemory({ misalign, poison: true });
  let map = HeapHashMap.create(memory, { keys: kind, values: 'msgpack', nodeSize }) as HeapHashMap<
    Key,
    unknown
  >;
  const model = new Map<string | number, [Key, unknown]>();
  for (const step of ops) {
    switch (step.op) {
      case 'set':
        map.set(step.key, step.value);
        model.set(modelKey(step.key), [step.key, step.value]);
        break;
      case 'delete':
        assert.equal(map.delete(step.key), model.delete(modelKey(step.key)));
        break;
      case 'get':
        assert.deepEqual(map.get(step.key), model.get(modelKey(step.key))?.[1]);
        assert.equal(map.has(step.key), model.has(modelKey(step.key)));
        break;
      case 'reopen':
        map = HeapHashMap.open<Key, unknown>(memory, map.address, { keys: kind, values: 'msgpack' });
        break;
      case 'clear':
        map.clear();
        model.clear();
        break;
    }
    assert.equal(map.size, model.size);
  }
  const check = map.check();
  assert.deepEqual(check.problems, []);
  const seen = new Map<string | number, unknown>();
  for (const [key, value] of map.entries()) {
    const id = modelKey(key);
    assert.ok(!seen.has(id), `key ${String(id)} iterated twice`);
    seen.set(id, value);
  }
  assert.equal(seen.size, model.size);
  for (const [id, [, value]] of model) assert.deepEqual(seen.get(id), value);
  const live = memory.allocator.liveObjects;
  assert.ok(live > 0);
  map.destroy();
  assert.equal(memory.allocator.liveObjects, 0, 'destroy returns every object');
}

for (const kind of ['string', 'number', 'bytes'] as const) {
  test(`hash map with ${kind} keys behaves as a JS Map over random op sequences (with reopen)`, () => {
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

test('many string keys with values inline and in blobs: splits, directory doubling, get after reopen', () => {
  const memory = freshMemory({ poison: true });
  const map = HeapHashMap.create(memory, { keys: 'string', values: 'msgpack' });
  const value = (i: number) => ({ i, text: 'x'.repeat(i % 900) });
  for (let i = 0; i < 20_000; i++) map.set(`key-${i}`, value(i));
  for (let i = 0; i < 20_000; i += 3) assert.ok(map.delete(`key-${i}`));
  const again = HeapHashMap.open<string, { i: number; text: string }>(memory, map.address);
  assert.equal(again.size, 20_000 - Math.ceil(20_000 / 3));
  for (let i = 0; i < 20_000; i++)
    assert.deepEqual(again.get(`key-${i}`), i % 3 === 0 ? undefined : value(i));
  assert.deepEqual(again.check().problems, []);
  again.clear();
  assert.equal(again.size, 0);
  assert.deepEqual(again.check().problems, []);
  again.destroy();
  assert.equal(memory.allocator.liveObjects, 0);
});

test('number keys follow Map semantics: -0 is 0, every NaN is one key', () => {
  const memory = freshMemory();
  const map = HeapHashMap.create(memory, { keys: 'number', values: 'number' });
  map.set(-0, 1);
  assert.equal(map.get(0), 1);
  map.set(NaN, 2);
  assert.equal(map.get(Number('x')), 2);
  assert.equal(map.get(-NaN), 2);
  map.set(0, 3);
  assert.equal(map.size, 2);
  assert.deepEqual([...map.keys()].sort(), [0, NaN].sort());
  assert.ok(
    Object.is(
      [...map.keys()].find((k) => k === 0),
      0,
    ),
    '-0 reads back as 0',
  );
});

test('keys with equal 32-bit hashes share an overflow chain that stays correct through deletes', () => {
  const memory = freshMemory({ poison: true });
  const map = HeapHashMap.create(memory, { keys: 'number', values: 'number', nodeSize: 512 });
  // The number hash is mix32(imul(hi ^ seed, 0x9e3779b1) ^ lo) of the key's ordered bytes: for
  // each hi, the lo that gives the same inner value gives the same hash. Build 200 such keys.
  const seed = memory.space.readU32(map.address + 24);
  const target = 0x12345678;
  const keys: number[] = [];
  const bytes = new Uint8Array(8);
  for (let i = 0; i < 200; i++) {
    const hi = (0xbff00000 + i * 0x100) >>> 0; // encoded positive numbers from 1.0 up
    const lo = (Math.imul(hi ^ seed, 0x9e3779b1) ^ target) >>> 0;
    new DataView(bytes.buffer).setUint32(0, hi);
    new DataView(bytes.buffer).setUint32(4, lo);
    keys.push(readOrderedF64(bytes, 0));
  }
  assert.equal(new Set(keys).size, 200);
  keys.forEach((key, i) => map.set(key, i));
  map.set(-1, -1); // a key with another hash
  assert.deepEqual(map.check().problems, []);
  assert.equal(map.size, 201);
  keys.forEach((key, i) => assert.equal(map.get(key), i));
  // The chain spans many buckets: 200 entries of 24 bytes in 496-byte buckets.
  assert.ok(memory.allocator.liveObjects > 10);
  keys.forEach((key, i) => {
    if (i % 2 === 0) assert.ok(map.delete(key));
  });
  assert.deepEqual(map.check().problems, []);
  keys.forEach((key, i) => assert.equal(map.get(key), i % 2 === 0 ? undefined : i));
  for (const key of keys) map.delete(key);
  assert.deepEqual(map.check().problems, []);
  assert.deepEqual([...map.entries()], [[-1, -1]]);
  map.destroy();
  assert.equal(memory.allocator.liveObjects, 0);
});

test('an iterator refuses to go on after the map changed (MF_CONFLICT); an unchanged map iterates fully', () => {
  const memory = freshMemory();
  const map = HeapHashMap.create(memory, { keys: 'number', values: 'number' });
  for (let i = 0; i < 1000; i++) map.set(i, i * 2);
  const iterator = map.entries();
  assert.equal(iterator.next().done, false);
  map.set(5000, 1);
  assert.equal(
    errorCode(() => iterator.next()),
    ErrorCodes.CONFLICT,
  );
  const other = map.keys();
  other.next();
  HeapHashMap.open(memory, map.address).delete(3); // through another handle
  assert.equal(
    errorCode(() => other.next()),
    ErrorCodes.CONFLICT,
  );
  const all = [...map.entries()];
  assert.equal(all.length, 1000);
  assert.ok(all.every(([k, v]) => (k === 5000 ? v === 1 : v === k * 2)));
  assert.deepEqual([...map.values()].length, 1000);
});

test('typed errors: wrong kinds, wrong key types, long keys, lone surrogates, bad refs, use after destroy', () => {
  const memory = freshMemory();
  const map = HeapHashMap.create(memory, { keys: 'string', values: 'ref' });
  assert.equal(
    errorCode(() => HeapHashMap.open(memory, map.address, { keys: 'number' })),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => HeapHashMap.open(memory, map.address, { values: 'msgpack' })),
    ErrorCodes.HEAP_TYPE,
  );
  const tree = HeapBTree.create(memory, { keys: 'string', values: 'ref' });
  assert.equal(
    errorCode(() => HeapHashMap.open(memory, tree.address)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => HeapBTree.open(memory, map.address)),
    ErrorCodes.HEAP_TYPE,
  );
  const loose = map as unknown as HeapHashMap<unknown & string, unknown>;
  assert.equal(
    errorCode(() => loose.set(5 as unknown as string, 1)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => loose.set('a', 'no' as unknown)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(
    errorCode(() => map.set('a', -1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    errorCode(() => map.set('a', 1.5)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    errorCode(() => map.set('x'.repeat(map.keyMax + 1), 1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    errorCode(() => map.set('é'.repeat(map.keyMax / 2 + 1), 1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  map.set('x'.repeat(map.keyMax), 8);
  assert.equal(map.get('x'.repeat(map.keyMax)), 8);
  assert.equal(
    errorCode(() => map.set('a\uD800', 1)),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    errorCode(() => HeapHashMap.create(memory, { keys: 'date' as 'string', values: 'ref' })),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(
    errorCode(() => HeapHashMap.create(memory, { keys: 'string', values: 'ref', nodeSize: 100 })),
    ErrorCodes.INVALID_ARGUMENT,
  );
  assert.equal(map.size, 1, 'refused calls changed nothing');
  map.destroy();
  assert.equal(
    errorCode(() => map.get('a')),
    ErrorCodes.DESTROYED,
  );
  assert.equal(
    errorCode(() => HeapHashMap.open(memory, map.address)),
    ErrorCodes.HEAP_TYPE,
  );
});

test('a map larger than the pager budget: 200k entries with a 4 MiB budget, checked against the model', async () => {
  const pager = await Pager.open({ budget: '4MiB', store: { kind: 'memory' } });
  const space = pager.createSpace({ size: '4GiB' });
  try {
    const memory = { space, allocator: new TestAllocator(space) };
    const map = HeapHashMap.create(memory, { keys: 'string', values: 'number' });
    const count = 200_000;
    const value = (i: number) => i * 3 + 0.5;
    for (let i = 0; i < count; i++) map.set(`user:${i}`, value(i));
    for (let i = 0; i < count; i += 7) map.delete(`user:${i}`);
    assert.ok(pager.stats().evictions > 0, 'the map did not fit the budget');
    const reopened = HeapHashMap.open<string, number>(memory, map.address);
    let present = 0;
    for (let i = 0; i < count; i++) {
      const got = reopened.get(`user:${i}`);
      if (i % 7 === 0) assert.equal(got, undefined);
      else {
        assert.equal(got, value(i));
        present++;
      }
    }
    assert.equal(reopened.size, present);
    let iterated = 0;
    for (const [key, v] of reopened.entries()) {
      assert.equal(v, value(Number(key.slice(5))));
      iterated++;
    }
    assert.equal(iterated, present);
    assert.deepEqual(reopened.check().problems, []);
    assert.ok(pager.stats().faults > 0);
  } finally {
    space.destroy();
    await pager.close();
  }
});

test('a forked space holds an independent copy of the map', () => {
  const memory = freshMemory();
  const map = HeapHashMap.create(memory, { keys: 'bytes', values: 'msgpack' });
  const key = (i: number) => Uint8Array.of(0, i & 0xff, i >> 8, 0);
  for (let i = 0; i < 3000; i++) map.set(key(i), { i });
  const childSpace = memory.space.fork();
  const child = { space: childSpace, allocator: memory.allocator.clone(childSpace) };
  const childMap = HeapHashMap.open<Uint8Array, { i: number }>(child, map.address);
  for (let i = 0; i < 3000; i += 2) childMap.delete(key(i));
  for (let i = 3000; i < 4000; i++) childMap.set(key(i), { i: -i });
  for (let i = 0; i < 3000; i += 3) map.set(key(i), { i: i + 1 });
  assert.equal(map.size, 3000);
  assert.equal(childMap.size, 1500 + 1000);
  for (let i = 0; i < 4000; i++) {
    assert.deepEqual(map.get(key(i)), i >= 3000 ? undefined : { i: i % 3 === 0 ? i + 1 : i });
    assert.deepEqual(childMap.get(key(i)), i >= 3000 ? { i: -i } : i % 2 === 0 ? undefined : { i });
  }
  assert.deepEqual(map.check().problems, []);
  assert.deepEqual(childMap.check().problems, []);
  childSpace.destroy();
});

test('the structural checker reports an entry in the wrong bucket and a wrong size', () => {
  const memory = freshMemory();
  const map = HeapHashMap.create(memory, { keys: 'number', values: 'number' });
  for (let i = 0; i < 2000; i++) map.set(i, i);
  assert.deepEqual(map.check().problems, []);
  const space = memory.space;
  space.writeF64(map.address + 8, 1999); // the recorded size
  assert.match(map.check().problems.join('\n'), /records size 1999 but holds 2000/);
  space.writeF64(map.address + 8, 2000);
  // Flip a bit of the first entry's stored hash in the first bucket.
  const bucket = space.readF64(space.readF64(map.address + 16));
  space.writeU32(bucket + 16, space.readU32(bucket + 16) ^ 1);
  const result = map.check();
  assert.equal(result.ok, false);
  assert.match(result.problems.join('\n'), /records hash/);
});

test('MF_HEAP_FULL at any allocation of a set leaves the map as it was', () => {
  const memory = freshMemory();
  const map = HeapHashMap.create(memory, { keys: 'number', values: 'msgpack', nodeSize: 512 });
  const model = new Map<number, unknown>();
  let state = 11;
  const random = (n: number) => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % n;
  };
  let failures = 0;
  for (let step = 0; step < 4000; step++) {
    const key = random(600);
    const value = random(3) === 0 ? 'b'.repeat(100 + random(200)) : random(1000);
    memory.allocator.failIn = 1 + random(3);
    try {
      map.set(key, value);
      model.set(key, value);
    } catch (error) {
      assert.equal((error as { code?: string }).code, ErrorCodes.HEAP_FULL);
      failures++;
    }
    memory.allocator.failIn = 0;
    if (random(4) === 0) {
      const victim = random(600);
      assert.equal(map.delete(victim), model.delete(victim));
    }
    assert.deepEqual(map.get(key), model.get(key));
  }
  assert.ok(failures > 100, `${failures} injected failures`);
  assert.equal(map.size, model.size);
  for (const [key, value] of model) assert.deepEqual(map.get(key), value);
  assert.deepEqual(map.check().problems, []);
  map.destroy();
  assert.equal(memory.allocator.liveObjects, 0, 'nothing leaked by the failed calls');
});
