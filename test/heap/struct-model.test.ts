/**
 * Model-based test of heap values: random sequences of struct allocations, field writes, blob
 * puts and replaces, frees and forks, run against a heap and against plain JS maps; after every
 * step each live value reads back as the model says, in the parent and in every fork.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { array, defineStruct, f64, i64, ref, string, u16, u8 } from '../../src/heap/struct.js';
import { freeValue, getValue, putValue, replaceValue } from '../../src/heap/blob.js';
import { ErrorCodes } from '../../src/errors.js';
import { forkMemory, testMemory, type TestMemory } from './test-allocator.js';

const Item = defineStruct('ModelItem', {
  count: u16,
  price: f64,
  name: string(12),
  serial: i64,
  next: ref('ModelItem'),
  bins: array(u8, 3),
});
type ItemObject = ReturnType<ReturnType<typeof Item.cursor>['toObject']>;

/** One heap and its model: address → what a struct or blob there holds. */
interface World {
  memory: TestMemory;
  structs: Map<number, ItemObject>;
  blobs: Map<number, unknown>;
}

const itemValue = fc.record({
  count: fc.integer({ min: 0, max: 65535 }),
  price: fc.double({ noNaN: true }),
  name: fc.string({ maxLength: 12 }).filter((s) => Buffer.byteLength(s) <= 12),
  serial: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  next: fc.nat(),
  bins: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 3, maxLength: 3 }),
});
const blobValue = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.array(fc.integer(), { maxLength: 50 }),
  fc.dictionary(
    fc.string({ maxLength: 5 }).filter((k) => k !== '__proto__'),
    fc.oneof(fc.integer(), fc.boolean(), fc.string({ maxLength: 300 })),
    { noNullPrototype: true },
  ),
);

type Op =
  | { op: 'alloc'; value: ItemObject }
  | { op: 'set'; pick: number; field: 'count' | 'name' | 'serial' | 'bins'; value: ItemObject }
  | { op: 'freeStruct'; pick: number }
  | { op: 'put'; value: unknown }
  | { op: 'replace'; pick: number; value: unknown }
  | { op: 'freeBlob'; pick: number }
  | { op: 'fork' }
  | { op: 'switch'; pick: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: itemValue.map((value) => ({ op: 'alloc' as const, value })) },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('set' as const),
      pick: fc.nat(),
      field: fc.constantFrom('count' as const, 'name' as const, 'serial' as const, 'bins' as const),
      value: itemValue,
    }),
  },
  { weight: 1, arbitrary: fc.nat().map((pick) => ({ op: 'freeStruct' as const, pick })) },
  { weight: 3, arbitrary: blobValue.map((value) => ({ op: 'put' as const, value })) },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constant('replace' as const), pick: fc.nat(), value: blobValue }),
  },
  { weight: 1, arbitrary: fc.nat().map((pick) => ({ op: 'freeBlob' as const, pick })) },
  { weight: 1, arbitrary: fc.constant({ op: 'fork' as const }) },
  { weight: 1, arbitrary: fc.nat().map((pick) => ({ op: 'switch' as const, pick })) },
);

function nth<K>(keys: Iterable<K>, pick: number): K | undefined {
  const list = [...keys];
  return list.length === 0 ? undefined : list[pick % list.length];
}

function check(world: World): void {
  const cursor = Item.cursor(world.memory);
  for (const [address, expected] of world.structs)
    assert.deepStrictEqual(cursor.at(address).toObject(), expected);
  for (const [address, expected] of world.blobs)
    assert.deepStrictEqual(getValue(world.memory, address), expected);
}

test('fast-check: structs and blobs behave like a JS model through allocs, writes, replaces, frees and forks', () => {
  const base = testMemory();
  fc.assert(
    fc.property(fc.array(op, { minLength: 1, maxLength: 40 }), (ops) => {
      const worlds: World[] = [{ memory: forkMemory(base), structs: new Map(), blobs: new Map() }];
      let world = worlds[0]!;
      try {
        for (const step of ops) {
          switch (step.op) {
            case 'alloc': {
              const address = Item.alloc(world.memory, step.value);
              world.structs.set(address, structuredClone(step.value));
              break;
            }
            case 'set': {
              const address = nth(world.structs.keys(), step.pick);
              if (address === undefined) break;
              const cursor = Item.cursor(world.memory).at(address);
              cursor.set({ [step.field]: step.value[step.field] });
              world.structs.get(address)![step.field] = structuredClone(step.value[step.field]) as never;
              break;
            }
            case 'freeStruct': {
              const address = nth(world.structs.keys(), step.pick);
              if (address === undefined) break;
              Item.free(world.memory, address);
              world.structs.delete(address);
              assert.throws(() => Item.cursor(world.memory).at(address), { code: ErrorCodes.HEAP_TYPE });
              break;
            }
            case 'put':
              world.blobs.set(putValue(world.memory, step.value), step.value);
              break;
            case 'replace': {
              const address = nth(world.blobs.keys(), step.pick);
              if (address === undefined) break;
              world.blobs.delete(address);
              world.blobs.set(replaceValue(world.memory, address, step.value), step.value);
              break;
            }
            case 'freeBlob': {
              const address = nth(world.blobs.keys(), step.pick);
              if (address === undefined) break;
              freeValue(world.memory, address);
              world.blobs.delete(address);
              break;
            }
            case 'fork':
              world = {
                memory: forkMemory(world.memory),
                structs: structuredClone(world.structs),
                blobs: structuredClone(world.blobs),
              };
              worlds.push(world);
              break;
            case 'switch':
              world = worlds[step.pick % worlds.length]!;
              break;
          }
          check(world);
        }
        for (const each of worlds) check(each);
      } finally {
        for (const each of worlds) each.memory.space.destroy();
      }
    }),
    { numRuns: 40 },
  );
});
