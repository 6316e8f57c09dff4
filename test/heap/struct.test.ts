import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  array,
  bool,
  bytes,
  defineStruct,
  f32,
  f64,
  i16,
  i32,
  i64,
  i8,
  ref,
  string,
  u16,
  u32,
  u64,
  u8,
  type FieldType,
  type Fields,
  type Struct,
} from '../../src/heap/struct.js';
import { ErrorCodes } from '../../src/errors.js';
import { typedError } from '../typed-error.js';
import { forkMemory, testMemory, type TestMemory } from './test-allocator.js';

// -----------------------------------------------------------------------------------------
// Values for every field type, edge values weighted in

const scalarValues: Record<string, fc.Arbitrary<unknown>> = {
  u8: fc.oneof(fc.constantFrom(0, 255), fc.integer({ min: 0, max: 255 })),
  i8: fc.oneof(fc.constantFrom(-128, 127, 0), fc.integer({ min: -128, max: 127 })),
  u16: fc.oneof(fc.constantFrom(0, 65535), fc.integer({ min: 0, max: 65535 })),
  i16: fc.oneof(fc.constantFrom(-32768, 32767), fc.integer({ min: -32768, max: 32767 })),
  u32: fc.oneof(fc.constantFrom(0, 2 ** 32 - 1), fc.integer({ min: 0, max: 2 ** 32 - 1 })),
  i32: fc.oneof(fc.constantFrom(-(2 ** 31), 2 ** 31 - 1), fc.integer()),
  f32: fc.oneof(fc.constantFrom(NaN, -0, Infinity, -Infinity, 3.4028234663852886e38), fc.float()),
  f64: fc.oneof(fc.constantFrom(NaN, -0, Infinity, Number.MIN_VALUE, Number.MAX_VALUE), fc.double()),
  u64: fc.oneof(
    fc.constantFrom(0n, 2n ** 64n - 1n, 2n ** 53n + 1n),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  ),
  i64: fc.oneof(
    fc.constantFrom(-(2n ** 63n), 2n ** 63n - 1n, -1n),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  ),
  bool: fc.boolean(),
};

/** A string of at most `max` UTF-8 bytes, often exactly at the limit with multi-byte characters. */
function stringOf(max: number): fc.Arbitrary<string> {
  return fc.string({ unit: fc.constantFrom('a', 'é', '€', '😀', '\u0000', 'z'), maxLength: max }).map((s) => {
    while (Buffer.byteLength(s) > max) s = [...s].slice(0, -1).join('');
    return s;
  });
}

/** An arbitrary value for a field type (plain objects for structs, arrays for arrays). */
function valueOf(type: FieldType): fc.Arbitrary<unknown> {
  switch (type.kind) {
    case 'scalar':
      return scalarValues[type.name]!;
    case 'string':
      return stringOf(type.maxBytes);
    case 'bytes':
      return fc.uint8Array({ minLength: type.length, maxLength: type.length });
    case 'ref':
      return fc.oneof(fc.constant(0), fc.maxSafeNat());
    case 'array':
      return fc.array(valueOf(type.element), { minLength: type.length, maxLength: type.length });
    case 'struct': {
      const record: Record<string, fc.Arbitrary<unknown>> = {};
      for (const field of type.fields) record[field.name] = valueOf(field.type);
      return fc.record(record);
    }
  }
}

/** What a value reads back as (an f32 is rounded; a ref or number otherwise as written). */
function stored(type: FieldType, value: unknown): unknown {
  switch (type.kind) {
    case 'scalar':
      return type.name === 'f32' ? Math.fround(value as number) : value;
    case 'array':
      return (value as unknown[]).map((v) => stored(type.element, v));
    case 'struct': {
      const out: Record<string, unknown> = {};
      for (const field of type.fields)
        out[field.name] = stored(field.type, (value as Record<string, unknown>)[field.name]);
      return out;
    }
    default:
      return value;
  }
}

let schemaCounter = 0;
const scalarTypes = [u8, i8, u16, i16, u32, i32, f32, f64, u64, i64, bool];

/** A random field type, nesting structs and arrays up to `depth`. */
function fieldType(depth: number): fc.Arbitrary<FieldType> {
  const leaves: Array<fc.Arbitrary<FieldType>> = [
    fc.constantFrom(...scalarTypes),
    fc.integer({ min: 1, max: 300 }).map(string),
    fc.integer({ min: 1, max: 20 }).map(bytes),
    fc.constant(ref()),
  ];
  if (depth === 0) return fc.oneof(...leaves);
  return fc.oneof(
    { weight: 4, arbitrary: fc.oneof(...leaves) },
    {
      weight: 1,
      arbitrary: fc.tuple(fieldType(depth - 1), fc.integer({ min: 1, max: 4 })).map(([t, n]) => array(t, n)),
    },
    {
      weight: 1,
      arbitrary: fieldList(depth - 1).map((fields) => defineStruct(`Nested${++schemaCounter}`, fields)),
    },
  );
}

function fieldList(depth: number): fc.Arbitrary<Fields> {
  return fc
    .array(fieldType(depth), { minLength: 1, maxLength: 6 })
    .map((types) => Object.fromEntries(types.map((t, i) => [`f${i}`, t])));
}

const schema = fieldList(2).map((fields) => defineStruct(`Random${++schemaCounter}`, fields));

function errorCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

function instanceBytes(memory: TestMemory, struct: Struct, address: number): Buffer {
  const out = Buffer.alloc(struct.size);
  memory.space.read(address, out);
  return out;
}

// -----------------------------------------------------------------------------------------
// Round trips

test('every scalar type round-trips its whole range, edge values included (NaN, -0, 64-bit limits)', () => {
  const memory = testMemory();
  for (const type of scalarTypes) {
    const S = defineStruct(`Scalar_${type.name}`, { pad: u8, value: type, after: u8 });
    const address = S.alloc(memory);
    const cursor = S.cursor(memory).at(address);
    fc.assert(
      fc.property(scalarValues[type.name]!, (value) => {
        (cursor as unknown as { value: unknown }).value = value;
        const back = cursor.value;
        assert.ok(
          Object.is(back, stored(type, value)),
          `${type.name}: wrote ${String(value)}, read ${String(back)}`,
        );
        assert.equal(cursor.pad, 0, 'neighbours untouched');
        assert.equal(cursor.after, 0, 'neighbours untouched');
      }),
      { numRuns: 300 },
    );
  }
});

test('random schemas (nested structs, arrays of anything, strings, bytes, refs) round-trip through alloc and toObject', () => {
  const memory = testMemory();
  fc.assert(
    fc.property(
      schema.chain((s) => fc.tuple(fc.constant(s), valueOf(s), valueOf(s))),
      ([S, first, second]) => {
        const address = S.alloc(memory, first as never);
        const cursor = S.cursor(memory).at(address);
        assert.deepStrictEqual(cursor.toObject(), stored(S, first));
        cursor.set(second as never);
        assert.deepStrictEqual(S.cursor(memory).at(address).toObject(), stored(S, second));
        S.free(memory, address);
      },
    ),
    { numRuns: 200 },
  );
});

test('a new instance reads as zeros even though the allocator hands out dirty memory', () => {
  const memory = testMemory();
  const S = defineStruct('Zeroed', { a: u32, s: string(8), list: array(f64, 3), r: ref() });
  const p = S.cursor(memory).at(S.alloc(memory));
  assert.deepStrictEqual(p.toObject(), { a: 0, s: '', list: [0, 0, 0], r: 0 });
});

test('instances that straddle page boundaries read and write correctly', () => {
  const memory = testMemory();
  // About 1.5 KiB: allocators put objects this size in multi-page spans, so some straddle.
  const S = defineStruct('Straddler', { a: u64, b: f64, c: string(1400), d: array(u32, 9) });
  let crossing = 0;
  for (let i = 0; i < 40; i++) {
    const address = S.alloc(memory, {
      a: BigInt(i) * 3n,
      b: i / 7,
      c: `item ${i} ✓`,
      d: Array.from({ length: 9 }, (_, j) => i * j),
    });
    if (Math.floor(address / 4096) !== Math.floor((address + S.size - 1) / 4096)) crossing++;
    const p = S.cursor(memory).at(address);
    assert.deepStrictEqual(p.toObject(), {
      a: BigInt(i) * 3n,
      b: i / 7,
      c: `item ${i} ✓`,
      d: Array.from({ length: 9 }, (_, j) => i * j),
    });
  }
  assert.ok(crossing > 0, 'some instance crossed a page boundary');
});

// -----------------------------------------------------------------------------------------
// Layout

test('layouts use natural alignment, never overlap, and pad to the struct alignment', () => {
  fc.assert(
    fc.property(schema, (S) => {
      assert.ok(S.bodyOffset >= 4 && S.bodyOffset % S.align === 0, 'the body follows the tag, aligned');
      assert.ok(
        S.typeId >= 0x10000 && S.typeId < 2 ** 32,
        'a tag no small integer (a free-list link) can pass for',
      );
      let end = S.bodyOffset;
      for (const field of S.fields) {
        assert.equal((field.offset - S.bodyOffset) % field.type.align, 0, `${field.name} aligned`);
        assert.ok(field.offset >= end, `${field.name} after the previous field`);
        end = field.offset + field.byteLength;
      }
      assert.ok(S.size >= end);
      assert.equal(S.byteLength % S.align, 0);
      assert.equal(S.size, S.bodyOffset + S.byteLength);
    }),
  );
});

test('a mixed struct has the documented layout', () => {
  // tag 0..4; a: u8 at 4; b: u32 at 8 (4-aligned); c: u64 needs 8 → the body starts at 8.
  const Mixed = defineStruct('Mixed', { a: u8, b: u32, c: u64, d: string(3), e: array(u16, 3), f: bool });
  // body offsets: a 0, b 4, c 8, d 16 (prefix 1 + 3), e 20 (2-aligned, 6 bytes), f 26; body 27 → 32.
  assert.equal(Mixed.bodyOffset, 8);
  assert.deepStrictEqual(
    Mixed.fields.map((f) => [f.name, f.offset]),
    [
      ['a', 8],
      ['b', 12],
      ['c', 16],
      ['d', 24],
      ['e', 28],
      ['f', 34],
    ],
  );
  assert.equal(Mixed.byteLength, 32);
  assert.equal(Mixed.size, 40);
  const Small = defineStruct('Small', { a: u8, b: u16 });
  assert.equal(Small.bodyOffset, 4, 'a body without 8-byte fields starts right after the tag');
  assert.equal(Small.size, 8);
  const Wide = defineStruct('Wide', { s: string(300) });
  assert.equal(Wide.fields[0]!.type.align, 2, 'a string longer than 255 bytes has a 2-byte prefix');
  assert.equal(Wide.offsetOf('s'), 4);
});

test('the bytes of an instance are the documented encoding (little-endian, length-prefixed UTF-8, u64 refs)', () => {
  const memory = testMemory();
  const Enc = defineStruct('Enc', { n: u16, s: string(5), r: ref(), flag: bool });
  const address = Enc.alloc(memory, { n: 0x1234, s: 'é', r: 2 ** 40 + 5, flag: true });
  const raw = instanceBytes(memory, Enc, address);
  assert.equal(raw.readUInt32LE(0), Enc.typeId);
  assert.equal(raw.readUInt16LE(Enc.offsetOf('n')), 0x1234);
  const s = Enc.offsetOf('s');
  assert.deepStrictEqual([...raw.subarray(s, s + 6)], [2, 0xc3, 0xa9, 0, 0, 0]);
  assert.equal(raw.readBigUInt64LE(Enc.offsetOf('r')), 2n ** 40n + 5n);
  assert.equal(raw[Enc.offsetOf('flag')], 1);
});

test('the same declaration gives the same type id; any change to it gives another', () => {
  const a = defineStruct('Versioned', { x: f64, y: f64 });
  const b = defineStruct('Versioned', { x: f64, y: f64 });
  assert.equal(a.typeId, b.typeId);
  const changes = [
    defineStruct('Versioned', { y: f64, x: f64 }),
    defineStruct('Versioned', { x: f64, y: f32 }),
    defineStruct('Versioned', { x: f64, y: f64, z: u8 }),
    defineStruct('Versioned2', { x: f64, y: f64 }),
    defineStruct('Versioned', { x: f64, y: array(f64, 1) }),
  ];
  for (const changed of changes) assert.notEqual(changed.typeId, a.typeId, changed.descriptor);
});

// -----------------------------------------------------------------------------------------
// Type checks

test('reading an address with the wrong schema, a freed instance, or null throws MF_HEAP_TYPE', () => {
  const memory = testMemory();
  const Point = defineStruct('Point', { x: f64, y: f64 });
  const Line = defineStruct('Line', { a: Point, b: Point });
  const line = Line.alloc(memory);
  assert.throws(
    () => Point.cursor(memory).at(line),
    typedError(ErrorCodes.HEAP_TYPE, 'a Line', 'not a Point'),
  );
  assert.throws(() => Point.free(memory, line), typedError(ErrorCodes.HEAP_TYPE, 'not a Point'));
  assert.throws(() => Point.cursor(memory).at(0), typedError(ErrorCodes.HEAP_TYPE, 'null reference'));
  const plain = memory.allocator.alloc(64);
  memory.space.writeU32(plain, 0x12345678);
  assert.throws(() => Point.cursor(memory).at(plain), typedError(ErrorCodes.HEAP_TYPE, 'unknown tag'));
  const point = Point.alloc(memory, { x: 1, y: 2 });
  Point.free(memory, point);
  assert.throws(() => Point.cursor(memory).at(point), typedError(ErrorCodes.HEAP_TYPE));
  assert.throws(() => Point.free(memory, point), typedError(ErrorCodes.HEAP_BAD_FREE));
  for (const notANumber of [String(line), null, undefined, {}]) {
    assert.throws(
      () => Point.cursor(memory).at(notANumber as never),
      typedError(ErrorCodes.INVALID_ARGUMENT, 'a number'),
    );
    assert.throws(() => Line.free(memory, notANumber as never), typedError(ErrorCodes.INVALID_ARGUMENT));
  }
  assert.equal(Line.is(memory, line), true);
  assert.equal(Point.is(memory, line), false);
  // An older declaration of the same name reads nothing written by the new one, and vice versa.
  const PointV2 = defineStruct('Point', { x: f64, y: f64, z: f64 });
  const p2 = PointV2.alloc(memory);
  assert.equal(
    errorCode(() => Point.cursor(memory).at(p2)),
    ErrorCodes.HEAP_TYPE,
  );
  assert.equal(Line.cursor(memory).at(line).a.x, 0);
});

test('a reopened program with the same declaration reads what the last one wrote', () => {
  const memory = testMemory();
  const declare = (): Struct<{ id: typeof u32; name: ReturnType<typeof string> }> =>
    defineStruct('User', { id: u32, name: string(20) });
  const address = declare().alloc(memory, { id: 7, name: 'ada' });
  const User = declare();
  assert.deepStrictEqual(User.cursor(memory).at(address).toObject(), { id: 7, name: 'ada' });
});

test('refs link instances: a list built and walked through ref fields', () => {
  const memory = testMemory();
  const Node = defineStruct('ListNode', { value: i32, next: ref('ListNode') });
  let head = 0;
  for (let i = 0; i < 100; i++) head = Node.alloc(memory, { value: i, next: head });
  const node = Node.cursor(memory);
  const seen: number[] = [];
  for (let at = head; at !== 0; at = node.next) seen.push(node.at(at).value);
  assert.deepStrictEqual(
    seen,
    Array.from({ length: 100 }, (_, i) => 99 - i),
  );
  assert.equal(Node.fields[1]!.type.descriptor, 'ref(ListNode)');
});

// -----------------------------------------------------------------------------------------
// Bad values: a typed error naming the field, and nothing written

test('a string too long for its field is refused with MF_INVALID_ARGUMENT naming the field, nothing written', () => {
  const memory = testMemory();
  const Label = defineStruct('Label', { before: u8, text: string(4), after: u8 });
  const address = Label.alloc(memory, { before: 1, text: 'a€', after: 2 });
  const label = Label.cursor(memory).at(address);
  const before = instanceBytes(memory, Label, address);
  for (const tooLong of ['€€', 'ab€', 'abcde', '😀a']) {
    assert.throws(
      () => {
        label.text = tooLong;
      },
      typedError(ErrorCodes.INVALID_ARGUMENT, 'Label.text', 'at most 4 UTF-8 bytes'),
    );
    assert.throws(
      () => label.set({ before: 9, text: tooLong }),
      typedError(ErrorCodes.INVALID_ARGUMENT, 'Label.text'),
    );
    assert.throws(() => Label.alloc(memory, { text: tooLong }), typedError(ErrorCodes.INVALID_ARGUMENT));
    assert.ok(instanceBytes(memory, Label, address).equals(before), 'nothing was written');
  }
  label.text = '😀';
  assert.equal(label.text, '😀', 'exactly 4 bytes fit');
});

test('fast-check: any string over the limit is refused and leaves the field as it was', () => {
  const memory = testMemory();
  const S = defineStruct('Limited', { s: string(7) });
  const cursor = S.cursor(memory).at(S.alloc(memory, { s: 'keep' }));
  fc.assert(
    fc.property(fc.string({ unit: 'binary', maxLength: 12 }), (s) => {
      const n = Buffer.byteLength(s);
      if (n <= 7) {
        cursor.s = s;
        assert.equal(cursor.s, Buffer.from(s).toString());
        cursor.s = 'keep';
      } else {
        assert.equal(
          errorCode(() => (cursor.s = s)),
          ErrorCodes.INVALID_ARGUMENT,
        );
        assert.equal(cursor.s, 'keep');
      }
    }),
  );
});

test('values of the wrong kind or range are refused naming the field', () => {
  const memory = testMemory();
  const All = defineStruct('AllKinds', {
    a: u8,
    b: i8,
    c: u16,
    d: i16,
    e: u32,
    f: i32,
    g: f64,
    h: u64,
    i: i64,
    j: bool,
    k: ref(),
    l: bytes(2),
    m: array(u8, 2),
  });
  const p = All.cursor(memory).at(All.alloc(memory)) as unknown as Record<string, unknown>;
  const bad: Array<[string, unknown]> = [
    ['a', 256],
    ['a', -1],
    ['a', 1.5],
    ['a', '1'],
    ['a', 1n],
    ['b', 128],
    ['c', 65536],
    ['d', -32769],
    ['e', 2 ** 32],
    ['e', NaN],
    ['f', 2 ** 31],
    ['g', '1'],
    ['h', 1],
    ['h', -1n],
    ['h', 2n ** 64n],
    ['i', 2n ** 63n],
    ['j', 1],
    ['k', -1],
    ['k', 1.5],
    ['k', 2 ** 53],
    ['l', new Uint8Array(3)],
    ['l', [1, 2]],
    ['m', [1]],
    ['m', [1, 300]],
  ];
  for (const [field, value] of bad) {
    assert.throws(
      () => {
        p[field] = value;
      },
      typedError(ErrorCodes.INVALID_ARGUMENT, `AllKinds.${field}`),
      `${field} = ${String(value)}`,
    );
  }
  assert.deepStrictEqual((p as unknown as { toObject(): unknown }).toObject(), {
    a: 0,
    b: 0,
    c: 0,
    d: 0,
    e: 0,
    f: 0,
    g: 0,
    h: 0n,
    i: 0n,
    j: false,
    k: 0,
    l: new Uint8Array(2),
    m: [0, 0],
  });
  assert.throws(
    () => (p as unknown as { set(v: unknown): void }).set({ nope: 1 }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'no field "nope"'),
  );
});

test('array indexes outside the array throw MF_OUT_OF_RANGE', () => {
  const memory = testMemory();
  const S = defineStruct('Indexed', { list: array(u32, 4), names: array(string(3), 2) });
  const p = S.cursor(memory).at(S.alloc(memory));
  for (const index of [-1, 4, 1.5, NaN, 2 ** 32]) {
    assert.throws(() => p.list.get(index), typedError(ErrorCodes.OUT_OF_RANGE, 'Indexed.list'));
    assert.throws(() => p.list.set(index, 1), typedError(ErrorCodes.OUT_OF_RANGE, 'Indexed.list'));
  }
  assert.throws(() => p.names.set(0, 'abcd'), typedError(ErrorCodes.INVALID_ARGUMENT, 'Indexed.names[]'));
  assert.equal(p.list.length, 4);
});

test('declarations are checked: names, reserved fields, field types', () => {
  const bad: Array<() => unknown> = [
    () => defineStruct('', { a: u8 }),
    () => defineStruct('has space', { a: u8 }),
    () => defineStruct('S', { at: u8 }),
    () => defineStruct('S', { _hidden: u8 }),
    () => defineStruct('S', { a: 'u8' as unknown as FieldType }),
    () => string(0),
    () => string(2 ** 25),
    () => bytes(1.5),
    () => array(u8, 0),
    () => ref('not a name'),
  ];
  for (const fn of bad) assert.throws(fn, typedError(ErrorCodes.INVALID_ARGUMENT));
});

// -----------------------------------------------------------------------------------------
// Zero-copy bytes, forks

test('readBytes copies a string or bytes field into the caller buffer; writeBytes writes raw UTF-8', () => {
  const memory = testMemory();
  const S = defineStruct('Raw', { key: string(64), digest: bytes(4), keys: array(string(8), 2) });
  const p = S.cursor(memory).at(S.alloc(memory, { key: 'clé', digest: new Uint8Array([1, 2, 3, 4]) }));
  const dst = new Uint8Array(64);
  const n = p.readBytes('key', dst);
  assert.equal(Buffer.from(dst.subarray(0, n)).toString(), 'clé');
  assert.equal(p.readBytes('digest', dst), 4);
  assert.deepStrictEqual([...dst.subarray(0, 4)], [1, 2, 3, 4]);
  p.writeBytes('key', Buffer.from('ключ'));
  assert.equal(p.key, 'ключ');
  assert.throws(
    () => p.readBytes('key', new Uint8Array(3)),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'larger buffer'),
  );
  assert.throws(
    () => p.writeBytes('key', new Uint8Array(65)),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'Raw.key'),
  );
  p.keys.writeBytes(1, Buffer.from('abc'));
  assert.equal(p.keys.get(1), 'abc');
  assert.equal(p.keys.readBytes(1, dst), 3);
});

test('instances survive a fork: parent and child change them independently', () => {
  const memory = testMemory();
  const Account = defineStruct('Account', { id: u32, balance: i64, owner: string(16) });
  const addresses = Array.from({ length: 50 }, (_, i) =>
    Account.alloc(memory, { id: i, balance: 100n, owner: `owner${i}` }),
  );
  const child = forkMemory(memory);
  const inParent = Account.cursor(memory);
  const inChild = Account.cursor(child);
  for (const [i, address] of addresses.entries()) {
    inChild.at(address).balance -= BigInt(i);
    if (i % 2 === 0) inParent.at(address).owner = `parent${i}`;
  }
  const added = Account.alloc(child, { id: 999 });
  for (const [i, address] of addresses.entries()) {
    assert.deepStrictEqual(inParent.at(address).toObject(), {
      id: i,
      balance: 100n,
      owner: i % 2 === 0 ? `parent${i}` : `owner${i}`,
    });
    assert.deepStrictEqual(inChild.at(address).toObject(), {
      id: i,
      balance: 100n - BigInt(i),
      owner: `owner${i}`,
    });
  }
  assert.equal(inChild.at(added).id, 999);
  assert.equal(Account.is(memory, added), false, 'the parent does not see the child’s allocation');
});

test('a nested struct or array assigned from another cursor is copied whole, across heaps too', () => {
  const memory = testMemory();
  const Point = defineStruct('CopyPoint', { x: f64, y: f64, label: string(8) });
  const Segment = defineStruct('CopySegment', { start: Point, end: Point, marks: array(u16, 3) });
  const a = Segment.cursor(memory).at(
    Segment.alloc(memory, {
      start: { x: 1, y: 2, label: 's' },
      end: { x: 3, y: 4, label: 'e' },
      marks: [7, 8, 9],
    }),
  );
  const b = Segment.cursor(memory).at(Segment.alloc(memory));
  b.start = a.end;
  b.marks = a.marks;
  assert.deepStrictEqual(b.toObject(), {
    start: { x: 3, y: 4, label: 'e' },
    end: { x: 0, y: 0, label: '' },
    marks: [7, 8, 9],
  });
  const child = forkMemory(memory);
  const c = Segment.cursor(child).at(Segment.alloc(child));
  c.set(a);
  assert.deepStrictEqual(c.toObject(), a.toObject());
  c.end.set(b.start);
  assert.equal(c.end.label, 'e');
  assert.throws(
    () => b.set({ start: a.marks as never }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'CopySegment.start'),
  );
  assert.deepStrictEqual(a.toObject().start, { x: 1, y: 2, label: 's' }, 'the source is unchanged');
});
