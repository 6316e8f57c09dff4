/**
 * The hooks through which a pager (src/tier) lets a pool's pages live outside it.
 *
 * A leaf entry normally holds NO_FRAME, ZERO_FRAME or a frame. A page that the pager moved
 * out of memory holds a *swapped entry*: the negative number `-1 - slot`, where `slot` is
 * the page-store slot that keeps its bytes. The entry's epoch is untouched, so a page's
 * dirty state survives eviction. Swapped entries live in leaves like frames do, so forks
 * share them copy-on-write; every entry (and every frame whose bytes match a slot, see
 * `FramePool.frameSlot`) holds a reference on its slot through `retainSlot`/`releaseSlot`.
 *
 * The memory core never does I/O itself: when it meets a swapped entry it asks the backend
 * to `fetch` the bytes into a frame it has allocated, and when it needs frames beyond the
 * pool's budget it asks the backend to `makeRoom`.
 */
import type { AddressSpace } from './address-space.js';

export interface PagingBackend {
  /**
   * Evicts resident pages until at least `count` frames are free. Called by
   * `FramePool.reserve` before it would fail; may leave fewer free (then the pool throws).
   */
  makeRoom(count: number): void;
  /**
   * Synchronously fills frame `frame` with the bytes of swap slot `slot`, the page `page` of
   * `space`. May install neighbouring pages too (prefetch) but must not evict anything.
   */
  fetch(space: AddressSpace, page: number, slot: number, frame: number): void;
  /** One more entry or frame refers to `slot`. */
  retainSlot(slot: number): void;
  /** One entry or frame stopped referring to `slot`; at zero the slot is free. */
  releaseSlot(slot: number): void;
  /** Brings pages [first, last] of `space` into memory without blocking the event loop. */
  load(space: AddressSpace, first: number, last: number): Promise<void>;
}

/** The leaf entry of a page whose bytes live in store slot `slot`. */
export function swappedEntry(slot: number): number {
  return -1 - slot;
}

/** The store slot of a swapped entry (`entry < 0`). */
export function slotOfEntry(entry: number): number {
  return -1 - entry;
}
