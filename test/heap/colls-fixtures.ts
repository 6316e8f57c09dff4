/**
 * Shared pieces of the collection tests: a heap memory over a fresh space, key and value
 * arbitraries for each key kind, and a model key (JS Map keys must be primitives: bytes keys are
 * modelled by their hex).
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemfabricError } from '../../src/errors.js';
import { AddressSpace } from '../../src/memory/address-space.js';
import { FramePool } from '../../src/memory/frame-pool.js';
import type { KeyKind } from '../../src/heap/key-codec.js';
import { testMemory, type TestAllocatorOptions } from './colls-test-allocator.js';

export function freshMemory(options: TestAllocatorOptions = {}) {
  const pool = new FramePool({ pageSize: 4096, capacity: '64MiB' });
  const space = new AddressSpace(pool, { size: '4GiB' });
  return testMemory(space, options);
}

/** Keys of a kind, weighted towards collisions (a small alphabet) and edge cases. */
export function keyArbitrary(kind: KeyKind, keyMax: number): fc.Arbitrary<string | number | Uint8Array> {
  switch (kind) {
    case 'string':
      return fc.oneof(
        {
          weight: 6,
          arbitrary: fc.string({ maxLength: 6, unit: fc.constantFrom('a', 'b', 'é', '😀', '\0') }),
        },
        { weight: 1, arbitrary: fc.constant('') },
        { weight: 2, arbitrary: fc.string({ maxLength: 12 }) },
        {
          weight: 1,
          arbitrary: fc
            .integer({ min: keyMax - 40, max: keyMax })
            .chain((n) => fc.constantFrom('a', 'b').map((c) => 'L'.repeat(n - 1) + c)),
        },
      );
    case 'number':
      return fc.oneof(
        { weight: 6, arbitrary: fc.integer({ min: -20, max: 20 }) },
        {
          weight: 2,
          arbitrary: fc.constantFrom(0, -0, NaN, Infinity, -Infinity, Number.MIN_VALUE, -Number.MAX_VALUE),
        },
        { weight: 2, arbitrary: fc.double() },
      );
    case 'bytes':
      return fc.oneof(
        { weight: 6, arbitrary: fc.uint8Array({ maxLength: 4, min: 0, max: 2 }) },
        { weight: 2, arbitrary: fc.uint8Array({ maxLength: 16 }) },
        {
          weight: 1,
          arbitrary: fc.integer({ min: keyMax - 8, max: keyMax }).map((n) => new Uint8Array(n).fill(7)),
        },
      );
  }
}

/** msgpack values: small ones inline, long strings in blobs, structures. */
export const msgpackValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer(),
  fc.string({ maxLength: 20 }),
  fc.constant(null),
  fc.boolean(),
  fc
    .record({ a: fc.integer(), b: fc.array(fc.string({ maxLength: 5 }), { maxLength: 4 }) })
    .map((r) => ({ ...r })),
  fc.uint8Array({ maxLength: 40 }),
  fc.integer({ min: 400, max: 5000 }).map((n) => 'v'.repeat(n)),
);

/** The JS Map key that stands for a collection key (SameValueZero for numbers, as the collections). */
export function modelKey(key: string | number | Uint8Array): string | number {
  return key instanceof Uint8Array ? `bytes:${Buffer.from(key).toString('hex')}` : key;
}

/** Runs fn and returns the MemfabricError code it throws (fails when it does not throw one). */
export function errorCode(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.ok(error.message.length > 20, 'the message says what to do');
    return error.code;
  }
  assert.fail('expected a throw');
}
