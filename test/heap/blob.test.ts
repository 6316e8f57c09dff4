import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  BlobCodec,
  freeValue,
  getValue,
  putValue,
  replaceValue,
  valueByteLength,
} from '../../src/heap/blob.js';
import { defineStruct, u32 } from '../../src/heap/struct.js';
import { ErrorCodes } from '../../src/errors.js';
import { typedError } from '../typed-error.js';
import { forkMemory, testMemory } from './test-allocator.js';

/** Leaf values msgpack keeps exactly (-0 is normalised to 0, tested apart). */
const leaf = fc.oneof(
  fc.boolean(),
  fc.integer(),
  fc.double().filter((d) => !Object.is(d, -0)),
  fc.maxSafeInteger(),
  fc.bigInt({ min: -(2n ** 64n), max: 2n ** 70n }),
  fc.string({ unit: 'binary' }),
  fc.constant(null),
  fc.constant(undefined),
  fc.date({ noInvalidDate: true }),
);

const anyValue = fc.anything({
  values: [leaf],
  // msgpackr renames an own "__proto__" key (prototype-pollution guard): tested apart.
  key: fc.string().filter((k) => k !== '__proto__'),
  maxDepth: 4,
  withMap: true,
  withSet: true,
  withDate: false, // dates come from the leaves, valid ones: an invalid Date never deep-equals itself
  withTypedArray: true,
  withBigInt: true,
  withSparseArray: false,
  withNullPrototype: false,
  withBoxedValues: false,
});

test('fast-check: any value (objects, arrays, Map, Set, Date, typed arrays, bigints) round-trips', () => {
  const memory = testMemory();
  fc.assert(
    fc.property(anyValue, (value) => {
      const address = putValue(memory, value);
      assert.deepStrictEqual(getValue(memory, address), value);
      freeValue(memory, address);
    }),
    { numRuns: 500 },
  );
  assert.equal(memory.allocator.liveCount, 0, 'every blob was freed');
});

test('structured clone: cycles and shared references, Maps, Sets, Dates, RegExps, Errors, typed arrays come back as such', () => {
  const memory = testMemory();
  const shared = { n: 1 };
  const graph: Record<string, unknown> = { a: shared, b: shared, list: [shared] };
  graph.self = graph;
  const value = {
    graph,
    map: new Map<unknown, unknown>([
      [1, 'one'],
      ['k', new Set([1, 'x', 2n])],
      [new Date(0), [1, 2]],
    ]),
    date: new Date(1_700_000_000_123),
    re: /ab+c/gi,
    error: new RangeError('too far'),
    f32: new Float32Array([1.5, NaN, -Infinity]),
    i64: new BigInt64Array([-(2n ** 63n), 5n]),
    u8: new Uint8Array([0, 255]),
    buffer: Buffer.from('bytes'),
    big: 2n ** 100n,
  };
  const back = getValue<typeof value>(memory, putValue(memory, value));
  assert.equal(back.graph.self, back.graph, 'a cycle stays a cycle');
  assert.equal(back.graph.a, back.graph.b, 'a shared object stays shared');
  assert.equal((back.graph.list as unknown[])[0], back.graph.a);
  assert.ok(back.map instanceof Map && back.map.get('k') instanceof Set);
  assert.deepStrictEqual([...(back.map.get('k') as Set<unknown>)], [1, 'x', 2n]);
  assert.deepStrictEqual(back.date, value.date);
  assert.ok(
    Number.isNaN(getValue<Date>(memory, putValue(memory, new Date(NaN))).getTime()),
    'an invalid Date',
  );
  assert.ok(back.re instanceof RegExp && back.re.source === 'ab+c' && back.re.flags === 'gi');
  assert.ok(back.error instanceof RangeError && back.error.message === 'too far');
  assert.deepStrictEqual(back.f32, value.f32);
  assert.deepStrictEqual(back.i64, value.i64);
  assert.deepStrictEqual(back.u8, value.u8);
  assert.deepStrictEqual(Buffer.from(back.buffer), value.buffer);
  assert.equal(back.big, 2n ** 100n);
});

test('what msgpack cannot say comes back normalised, as documented', () => {
  const sparse = (): unknown[] => {
    const list: unknown[] = [1];
    list[2] = 3;
    return list;
  };
  const memory = testMemory();
  const back = getValue<Record<string, unknown>>(
    memory,
    putValue(memory, { zero: -0, sparse: sparse(), bare: Object.assign(Object.create(null), { a: 1 }) }),
  );
  assert.ok(Object.is(back.zero, 0), '-0 becomes 0');
  const proto = getValue<Record<string, unknown>>(memory, putValue(memory, JSON.parse('{"__proto__": 1}')));
  assert.deepStrictEqual(
    Object.keys(proto),
    ['__proto_'],
    'an own __proto__ key is renamed, never a prototype',
  );
  assert.deepStrictEqual(back.sparse, [1, undefined, 3]);
  assert.deepStrictEqual(back.bare, { a: 1 });
});

test('decoded buffers are copies: they survive later reads and changing them changes nothing stored', () => {
  const memory = testMemory();
  const a = putValue(memory, { bytes: new Uint8Array([1, 2, 3]), f: new Float64Array([1]) });
  const b = putValue(memory, { bytes: new Uint8Array([9, 9, 9]), f: new Float64Array([9]) });
  const first = getValue<{ bytes: Uint8Array; f: Float64Array }>(memory, a);
  getValue(memory, b);
  assert.deepStrictEqual([...first.bytes], [1, 2, 3]);
  first.bytes[0] = 42;
  first.f[0] = 42;
  assert.deepStrictEqual(getValue(memory, a), { bytes: new Uint8Array([1, 2, 3]), f: new Float64Array([1]) });
});

test('large values span many pages, in and beyond the read scratch size', () => {
  const memory = testMemory();
  for (const length of [5000, 300_000, 3_000_000]) {
    const data = Uint8Array.from({ length }, (_, i) => (i * 31 + 7) & 0xff);
    const text = 'ü'.repeat(length / 10);
    const address = putValue(memory, { data, text });
    assert.ok(valueByteLength(memory, address) > length);
    const back = getValue<{ data: Uint8Array; text: string }>(memory, address);
    assert.ok(Buffer.from(back.data).equals(Buffer.from(data)));
    assert.equal(back.text, text);
  }
});

test('fast-check: replace grows and shrinks; the value is always the last one written and old blocks are freed', () => {
  const memory = testMemory();
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(fc.string({ maxLength: 3000 }), fc.array(fc.integer(), { maxLength: 400 }), anyValue),
        {
          minLength: 1,
          maxLength: 20,
        },
      ),
      (values) => {
        const live = memory.allocator.liveCount;
        const keep = putValue(memory, 'a neighbour');
        let address = putValue(memory, values[0]);
        let moves = 0;
        for (const value of values.slice(1)) {
          const next = replaceValue(memory, address, value);
          if (next !== address) {
            moves++;
            assert.throws(
              () => getValue(memory, address),
              typedError(ErrorCodes.HEAP_TYPE),
              'the old block is freed',
            );
          }
          address = next;
          assert.deepStrictEqual(getValue(memory, address), value);
          assert.ok(memory.allocator.usableSize(address) >= 8 + valueByteLength(memory, address));
        }
        assert.equal(memory.allocator.liveCount, live + 2, `one blob and its neighbour after ${moves} moves`);
        assert.equal(getValue(memory, keep), 'a neighbour');
        freeValue(memory, keep);
        freeValue(memory, address);
      },
    ),
    { numRuns: 60 },
  );
});

test('replace moves a value that shrinks to less than half its block, and keeps one that fits', () => {
  const memory = testMemory();
  const address = putValue(memory, 'x'.repeat(1000));
  assert.equal(replaceValue(memory, address, 'y'.repeat(900)), address, 'still fits: in place');
  const shrunk = replaceValue(memory, address, 'small');
  assert.notEqual(shrunk, address, 'the allocator gave the tail back by moving it');
  assert.equal(getValue(memory, shrunk), 'small');
  const grown = replaceValue(memory, shrunk, 'z'.repeat(5000));
  assert.notEqual(grown, shrunk);
  assert.equal(getValue(memory, grown), 'z'.repeat(5000));
  assert.equal(memory.allocator.liveCount, 1);
});

/** Fills the heap with small blobs of every size until nothing more fits; returns them. */
function fill(memory: ReturnType<typeof testMemory>): number[] {
  const fillers: number[] = [];
  for (const size of [1000, 400, 100, 40, 10, 1]) {
    for (;;) {
      try {
        fillers.push(putValue(memory, 'f'.repeat(size)));
      } catch (error) {
        assert.equal((error as { code?: string }).code, ErrorCodes.HEAP_FULL);
        break;
      }
    }
  }
  return fillers;
}

test('a full heap refuses put and replace with MF_HEAP_FULL and keeps what it had', () => {
  const memory = testMemory('128KiB');
  const address = putValue(memory, { keep: 'me' });
  fill(memory);
  const live = memory.allocator.liveCount;
  assert.throws(() => putValue(memory, 'x'.repeat(5000)), typedError(ErrorCodes.HEAP_FULL));
  assert.throws(() => replaceValue(memory, address, 'x'.repeat(5000)), typedError(ErrorCodes.HEAP_FULL));
  assert.deepStrictEqual(getValue(memory, address), { keep: 'me' });
  assert.equal(memory.allocator.liveCount, live);
});

test('values that cannot be encoded are refused with MF_INVALID_ARGUMENT and allocate nothing', () => {
  const memory = testMemory();
  for (const bad of [Symbol('s'), { s: Symbol('t') }, [1, Symbol('u')]]) {
    assert.throws(() => putValue(memory, bad), typedError(ErrorCodes.INVALID_ARGUMENT, 'cannot be stored'));
  }
  assert.equal(memory.allocator.liveCount, 0);
  // Functions and class instances are not refused: they come back as documented.
  class Account {
    balance = 5;
    deposit(): void {}
  }
  assert.deepStrictEqual(getValue(memory, putValue(memory, { f: () => 1, account: new Account() })), {
    f: undefined,
    account: { balance: 5 },
  });
});

test('an address that holds no blob fails with MF_HEAP_TYPE; a double free with MF_HEAP_BAD_FREE', () => {
  const memory = testMemory();
  const Point = defineStruct('BlobTestPoint', { x: u32 });
  const point = Point.alloc(memory, { x: 1 });
  assert.throws(
    () => getValue(memory, point),
    typedError(ErrorCodes.HEAP_TYPE, 'a BlobTestPoint', 'not a msgpack blob'),
  );
  assert.throws(() => freeValue(memory, point), typedError(ErrorCodes.HEAP_TYPE));
  assert.throws(() => replaceValue(memory, point, 1), typedError(ErrorCodes.HEAP_TYPE));
  assert.throws(() => getValue(memory, 0), typedError(ErrorCodes.HEAP_TYPE, 'null reference'));
  assert.throws(
    () => getValue(memory, String(point) as never),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'a number'),
  );
  const blob = putValue(memory, [1, 2]);
  assert.throws(() => Point.cursor(memory).at(blob), typedError(ErrorCodes.HEAP_TYPE, 'a msgpack blob'));
  freeValue(memory, blob);
  assert.throws(() => getValue(memory, blob), typedError(ErrorCodes.HEAP_TYPE));
  assert.throws(() => freeValue(memory, blob), typedError(ErrorCodes.HEAP_BAD_FREE));
  assert.equal(Point.cursor(memory).at(point).x, 1, 'the struct was not touched');
});

test('a damaged payload fails with MF_HEAP_CORRUPT', () => {
  const memory = testMemory();
  const address = putValue(memory, { a: [1, 2, 3] });
  memory.space.writeU8(address + 8, 0xc1); // a byte msgpack never uses
  assert.throws(() => getValue(memory, address), typedError(ErrorCodes.HEAP_CORRUPT, `${address}`));
});

test('values survive a fork: parent and child replace and free them independently', () => {
  const memory = testMemory();
  const addresses = Array.from({ length: 30 }, (_, i) => putValue(memory, { i, tags: new Set([`t${i}`]) }));
  const child = forkMemory(memory);
  const moved = addresses.map((address, i) => replaceValue(child, address, { i, child: 'x'.repeat(i * 50) }));
  freeValue(child, moved[0]!);
  for (const [i, address] of addresses.entries()) {
    assert.deepStrictEqual(getValue(memory, address), { i, tags: new Set([`t${i}`]) });
    if (i > 0) assert.deepStrictEqual(getValue(child, moved[i]!), { i, child: 'x'.repeat(i * 50) });
  }
});

// -----------------------------------------------------------------------------------------
// BlobCodec

test('a BlobCodec shares record shapes: its blobs are smaller, and a reopened codec reads them', () => {
  const memory = testMemory();
  const codec = BlobCodec.create(memory);
  const record = (i: number): Record<string, unknown> => ({
    customerId: i,
    displayName: `n${i}`,
    createdAt: new Date(i),
    active: true,
  });
  const addresses = Array.from({ length: 100 }, (_, i) => codec.put(record(i)));
  const own = putValue(memory, record(1));
  const sharedBytes = memory.allocator.usableSize(addresses[1]!);
  assert.ok(sharedBytes < memory.allocator.usableSize(own), `${sharedBytes} vs a self-contained blob`);
  assert.equal(codec.sharedStructures, 1);
  const reopened = BlobCodec.open(memory, codec.address);
  for (const [i, address] of addresses.entries()) assert.deepStrictEqual(reopened.get(address), record(i));
  assert.throws(() => getValue(memory, addresses[0]!), typedError(ErrorCodes.HEAP_TYPE, 'BlobCodec'));
  assert.throws(() => reopened.get(own), typedError(ErrorCodes.HEAP_TYPE));
  const other = BlobCodec.create(memory);
  assert.throws(() => other.get(addresses[0]!), typedError(ErrorCodes.HEAP_TYPE, 'the codec that wrote it'));
  assert.throws(() => BlobCodec.open(memory, own), typedError(ErrorCodes.HEAP_TYPE, 'BlobCodec header'));
});

test('fast-check: two codec objects on one header take turns adding shapes; every blob decodes through a fresh one', () => {
  const memory = testMemory();
  const shape = fc.uniqueArray(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'), {
    minLength: 1,
    maxLength: 4,
  });
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.boolean(), shape, fc.integer()), { minLength: 1, maxLength: 60 }),
      (steps) => {
        const first = BlobCodec.create(memory, { maxSharedStructures: 8 });
        const second = BlobCodec.open(memory, first.address);
        const written: Array<[number, unknown]> = [];
        for (const [useFirst, keys, n] of steps) {
          const value = Object.fromEntries(keys.map((k, i) => [k, n + i]));
          const address = (useFirst ? first : second).put(value);
          written.push([address, value]);
          assert.deepStrictEqual((useFirst ? second : first).get(address), value);
        }
        const fresh = BlobCodec.open(memory, first.address);
        for (const [address, value] of written) assert.deepStrictEqual(fresh.get(address), value);
        assert.ok(fresh.sharedStructures <= 8);
      },
    ),
    { numRuns: 60 },
  );
});

test('a codec forked with its heap extends its own table; parent and child each read their blobs', () => {
  const memory = testMemory();
  const codec = BlobCodec.create(memory);
  const before = codec.put({ x: 1, y: 2 });
  const child = forkMemory(memory);
  const childCodec = BlobCodec.open(child, codec.address);
  const inChild = childCodec.put({ onlyChild: true });
  const inParent = codec.put({ onlyParent: 'p' });
  assert.deepStrictEqual(childCodec.get(before), { x: 1, y: 2 });
  assert.deepStrictEqual(childCodec.get(inChild), { onlyChild: true });
  assert.deepStrictEqual(codec.get(inParent), { onlyParent: 'p' });
  assert.deepStrictEqual(BlobCodec.open(memory, codec.address).get(inParent), { onlyParent: 'p' });
  assert.equal(codec.sharedStructures, 2);
  assert.equal(childCodec.sharedStructures, 2);
});

test('a codec whose table cannot grow (heap full) refuses the put and keeps every blob decodable', () => {
  const memory = testMemory('128KiB');
  const codec = BlobCodec.create(memory);
  const written: Array<[number, unknown]> = [[codec.put({ first: 1 }), { first: 1 }]];
  const fillers = fill(memory);
  // A new shape needs a bigger table: its save fails, and so does the put.
  assert.throws(() => codec.put({ second: 2, more: 'x' }), typedError(ErrorCodes.HEAP_FULL));
  assert.equal(codec.sharedStructures, 1, 'the table is as it was');
  for (const address of fillers.splice(0, 40)) freeValue(memory, address);
  written.push([codec.put({ third: 3 }), { third: 3 }]);
  written.push([codec.put({ second: 2, more: 'x' }), { second: 2, more: 'x' }]);
  written.push([codec.put({ first: 4 }), { first: 4 }]);
  const fresh = BlobCodec.open(memory, codec.address);
  for (const [address, value] of written) {
    assert.deepStrictEqual(codec.get(address), value);
    assert.deepStrictEqual(fresh.get(address), value);
  }
  assert.equal(fresh.sharedStructures, 3);
});

test('destroy frees the codec header and its table', () => {
  const memory = testMemory();
  const codec = BlobCodec.create(memory);
  codec.free(codec.put({ a: 1 }));
  codec.destroy();
  assert.equal(memory.allocator.liveCount, 0);
  assert.throws(() => BlobCodec.open(memory, codec.address), typedError(ErrorCodes.HEAP_TYPE));
  assert.throws(
    () => BlobCodec.create(memory, { maxSharedStructures: 9000 }),
    typedError(ErrorCodes.INVALID_ARGUMENT),
  );
});
