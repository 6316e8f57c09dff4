/**
 * The crash tests' workload: a deterministic sequence of operations on a heap image drawn
 * from a seed, so the writer (a child process that gets killed) and the checker (which
 * replays the sequence into a plain byte array) agree on what every checkpoint holds.
 */
import type { AddressSpace } from '../../src/memory/address-space.js';
import { seededBytes } from '../fabric/seeded-bytes.js';

export const PAGE = 4096;
/** Pages the workload touches: more than the writer's budget, so pages are evicted to the image. */
export const PAGES = 384;
export const BUDGET = '256KiB';

export type Op =
  | { kind: 'write'; offset: number; length: number; seed: number }
  | { kind: 'trim'; page: number; count: number }
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'checkpoint' };

/** The i-th operations of the sequence for `seed`. */
export function* operations(seed: number): Generator<Op> {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  for (;;) {
    const roll = next() % 100;
    if (roll < 80) {
      const offset = next() % (PAGES * PAGE - 1);
      const length = 1 + (next() % Math.min(2 * PAGE, PAGES * PAGE - offset));
      yield { kind: 'write', offset, length, seed: next() };
    } else if (roll < 84) {
      const page = next() % PAGES;
      yield { kind: 'trim', page, count: 1 + (next() % Math.min(8, PAGES - page)) };
    } else if (roll < 88) {
      const offset = next() % (PAGES * PAGE - 1);
      yield { kind: 'zero', offset, length: 1 + (next() % Math.min(3 * PAGE, PAGES * PAGE - offset)) };
    } else {
      yield { kind: 'checkpoint' };
    }
  }
}

export function applyToSpace(space: AddressSpace, op: Op): void {
  if (op.kind === 'write') space.write(op.offset, seededBytes(op.seed, op.length));
  else if (op.kind === 'trim') space.trim(op.page * PAGE, op.count * PAGE);
  else if (op.kind === 'zero') space.writeZeroes(op.offset, op.length);
}

/** The bytes the space holds after the first `count` operations, starting from `base`. */
export function modelAfter(seed: number, count: number, base: Uint8Array): Uint8Array {
  const model = base.slice();
  let i = 0;
  for (const op of operations(seed)) {
    if (i++ >= count) break;
    if (op.kind === 'write') model.set(seededBytes(op.seed, op.length), op.offset);
    else if (op.kind === 'trim') model.fill(0, op.page * PAGE, (op.page + op.count) * PAGE);
    else if (op.kind === 'zero') model.fill(0, op.offset, op.offset + op.length);
  }
  return model;
}
