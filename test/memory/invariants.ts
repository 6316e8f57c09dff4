/**
 * Whole-pool invariant checks for tests: recomputes from the page tables what the pool's
 * counters claim and fails on any difference.
 */
import assert from 'node:assert/strict';
import type { AddressSpace, FramePool } from '../../src/index.js';
import { FIRST_FRAME, ZERO_FRAME } from '../../src/memory/frame-pool.js';
import { GROUP_BITS, LEAF_ENTRIES } from '../../src/memory/leaf-arena.js';

export function checkPoolInvariants(pool: FramePool, spaces: AddressSpace[]): void {
  const arena = pool.leaves;
  const leafHolders = new Map<number, number>();
  for (const space of spaces) {
    if (space.isDestroyed) continue;
    space.forEachLeaf((leaf) => leafHolders.set(leaf, (leafHolders.get(leaf) ?? 0) + 1));
  }
  const slotsHolding = new Map<number, number>();
  let zeroSlots = 0;
  for (const [leaf, holders] of leafHolders) {
    assert.equal(
      arena.refs[leaf],
      holders,
      `leaf ${leaf}: refs ${arena.refs[leaf]} but ${holders} spaces hold it`,
    );
    const base = leaf * LEAF_ENTRIES;
    let maxEpoch = 0;
    for (let i = 0; i < LEAF_ENTRIES; i++) {
      const frame = arena.entries[base + i]!;
      maxEpoch = Math.max(maxEpoch, arena.epochs[base + i]!);
      if (frame === ZERO_FRAME) zeroSlots++;
      else if (frame >= FIRST_FRAME) {
        slotsHolding.set(frame, (slotsHolding.get(frame) ?? 0) + 1);
        // The occupancy summary is complete: a resident frame the summary missed would never
        // be seen by the merger.
        assert.ok(
          (arena.occupancy[leaf]! >>> (i >>> GROUP_BITS)) & 1,
          `leaf ${leaf} slot ${i} maps frame ${frame} but its occupancy bit is clear`,
        );
      }
    }
    assert.ok(arena.maxEpoch[leaf]! >= maxEpoch, `leaf ${leaf}: maxEpoch below an entry's epoch`);
  }
  assert.equal(arena.live, leafHolders.size, 'every live leaf is reachable from a live space');
  let framesInUse = 0;
  for (let frame = FIRST_FRAME; frame < pool.refcount.length; frame++) {
    const refs = pool.refcount[frame]!;
    if (refs > 0) framesInUse++;
    assert.equal(refs, slotsHolding.get(frame) ?? 0, `frame ${frame}: refcount ${refs} vs slots holding it`);
  }
  assert.equal(pool.zeroEntries, zeroSlots, 'zeroEntries counts the slots mapping the zero frame');
  assert.equal(pool.used, framesInUse, 'used == distinct frames mapped');
  assert.equal(pool.free + pool.used, pool.capacity, 'free + used == capacity');
}
