/**
 * A paging backend for memory-core tests: it keeps evicted pages in a Map instead of a store
 * worker, so tests of swapped entries (faults, copy-on-write of swapped pages, slot references)
 * run in-process and fast, and can choose exactly which pages leave memory.
 *
 * Eviction follows the pager's rules (src/tier/pager.ts `evict`): a frame whose bytes a slot
 * already holds drops clean onto that slot; otherwise a new slot takes its bytes; a frame still
 * mapped by other entries remembers its slot (`frameSlot`), with a reference of its own.
 * Reference counting is strict: releasing a slot nobody holds fails the test.
 */
import assert from 'node:assert/strict';
import type { AddressSpace, FramePool } from '../../src/index.js';
import { FIRST_FRAME } from '../../src/memory/frame-pool.js';
import { LEAF_BITS, LEAF_ENTRIES } from '../../src/memory/leaf-arena.js';
import { swappedEntry, type PagingBackend } from '../../src/memory/paging.js';

interface Slot {
  bytes: Buffer;
  refs: number;
}

export class MapPaging implements PagingBackend {
  readonly slots = new Map<number, Slot>();
  /** Every fetch, in order: [page, slot]. */
  readonly fetches: [number, number][] = [];
  makeRoomCalls = 0;
  /** When set, `fetch` throws it (a store that fails a read). */
  fetchError: Error | undefined;
  /**
   * What `makeRoom` evicts: every resident page ('all'); or resident pages in leaf order until
   * enough frames are free ('needed'); or the pages in `victims`, in order, until enough are
   * free ('victims').
   */
  policy: 'all' | 'needed' | 'victims' = 'needed';
  readonly victims: [AddressSpace, number][] = [];
  private nextSlot = 0;
  private hand = LEAF_ENTRIES;

  constructor(readonly pool: FramePool) {
    pool.attachPaging(this);
  }

  makeRoom(count: number): void {
    this.makeRoomCalls++;
    if (this.policy === 'all') {
      this.evictAll();
      return;
    }
    if (this.policy === 'victims') {
      while (this.pool.free < count && this.victims.length > 0) {
        const [space, page] = this.victims.shift()!;
        this.evictPage(space, page);
      }
      return;
    }
    const arena = this.pool.leaves;
    const end = arena.highWater * LEAF_ENTRIES;
    // One turn of the hand at most, evicting whatever is resident.
    for (let steps = 0; steps < end && this.pool.free < count; steps++) {
      if (this.hand >= end) this.hand = LEAF_ENTRIES;
      const entry = this.hand++;
      const frame = arena.entries[entry]!;
      if (arena.refs[entry >>> LEAF_BITS] !== 0 && frame >= FIRST_FRAME) this.evict(entry, frame);
    }
    this.pool.flushAllTranslations();
  }

  /** Moves every resident page of every live leaf out of memory. */
  evictAll(): void {
    const arena = this.pool.leaves;
    const end = arena.highWater * LEAF_ENTRIES;
    for (let entry = LEAF_ENTRIES; entry < end; entry++) {
      const frame = arena.entries[entry]!;
      if (arena.refs[entry >>> LEAF_BITS] !== 0 && frame >= FIRST_FRAME) this.evict(entry, frame);
    }
    this.pool.flushAllTranslations();
  }

  /** Moves the page `page` of `space` out of memory, if it is resident. */
  evictPage(space: AddressSpace, page: number): void {
    const entry = space.entryIndexAt(page);
    if (entry < 0) return;
    const frame = this.pool.leaves.entries[entry]!;
    if (frame >= FIRST_FRAME) this.evict(entry, frame);
    this.pool.flushAllTranslations();
  }

  fetch(_space: AddressSpace, page: number, slot: number, frame: number): void {
    const held = this.slots.get(slot);
    assert.ok(held !== undefined && held.refs > 0, `fetch of slot ${slot}, which nobody holds`);
    if (this.fetchError) throw this.fetchError;
    this.fetches.push([page, slot]);
    held.bytes.copy(this.pool.frameSegment(frame), this.pool.frameOffset(frame));
  }

  retainSlot(slot: number): void {
    const held = this.slots.get(slot);
    assert.ok(held !== undefined && held.refs > 0, `retain of slot ${slot}, which nobody holds`);
    held.refs++;
  }

  releaseSlot(slot: number): void {
    const held = this.slots.get(slot);
    assert.ok(held !== undefined && held.refs > 0, `release of slot ${slot}, which nobody holds`);
    if (--held.refs === 0) this.slots.delete(slot);
  }

  load(): Promise<void> {
    return Promise.reject(new Error('MapPaging does not load asynchronously'));
  }

  /** The references on each slot. */
  references(): Map<number, number> {
    return new Map([...this.slots].map(([slot, { refs }]) => [slot, refs]));
  }

  private evict(entry: number, frame: number): void {
    const pool = this.pool;
    const copy = pool.frameSlot[frame]!;
    let slot: number;
    if (copy !== 0) {
      slot = copy - 1;
      this.retainSlot(slot);
    } else {
      slot = this.nextSlot++;
      this.slots.set(slot, { bytes: Buffer.from(pool.frameBytes(frame)), refs: 1 });
      if (pool.refcount[frame]! > 1) {
        this.retainSlot(slot);
        pool.frameSlot[frame] = slot + 1;
      }
    }
    pool.leaves.entries[entry] = swappedEntry(slot);
    pool.release(frame);
  }
}

/**
 * Every slot's references equal the swapped entries naming it (once per leaf, however many
 * spaces share the leaf) plus the frames whose bytes it holds.
 */
export function checkSlotReferences(paging: MapPaging, spaces: AddressSpace[]): void {
  const pool = paging.pool;
  const held = new Map<number, number>();
  const seen = new Set<number>();
  for (const space of spaces) {
    if (space.isDestroyed) continue;
    space.forEachLeaf((leaf) => {
      if (seen.has(leaf)) return;
      seen.add(leaf);
      for (let i = 0; i < LEAF_ENTRIES; i++) {
        const entry = pool.leaves.entries[leaf * LEAF_ENTRIES + i]!;
        if (entry < 0) held.set(-1 - entry, (held.get(-1 - entry) ?? 0) + 1);
      }
    });
  }
  for (let frame = 0; frame < pool.frameSlot.length; frame++) {
    const slot = pool.frameSlot[frame]! - 1;
    if (slot < 0) continue;
    assert.ok(pool.refcount[frame]! > 0, `free frame ${frame} still names slot ${slot}`);
    held.set(slot, (held.get(slot) ?? 0) + 1);
  }
  assert.deepEqual(
    new Map([...paging.references()].sort((a, b) => a[0] - b[0])),
    new Map([...held].sort((a, b) => a[0] - b[0])),
    'slot references are exactly the entries and frames naming each slot',
  );
}
