/**
 * Swap slots: which page-store slots are in use, how many references each has, and the
 * clone-chain dedup tables of seed 004.
 *
 * Every swapped leaf entry refers to one slot, and so does every resident frame whose bytes
 * still match a slot (FramePool.frameSlot); `refs[s]` counts both. A slot whose count drops to
 * zero is free: the caller queues its discard and may hand the number out again at once,
 * because the destager keeps the operations on one slot in order.
 *
 * Dedup is per clone chain (spaces forked from a common ancestor): each chain has one table
 * from page-content hash to the slots holding pages with that hash; the per-space "logical
 * addressing table" of the seed is the space's own page table, whose swapped entries name
 * slots. Hash collisions are expected (32-bit hashes) and harmless: slots with one hash form
 * a list through `next`, and the pager compares bytes before it shares a slot.
 *
 * Written by hand: this is the product's own bookkeeping, numbers in typed arrays (no object
 * per page), in the style of src/memory/content-index.ts, whose table it reuses.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import { ContentIndex } from '../memory/content-index.js';
import { grown } from '../memory/typed-arrays.js';

const INITIAL_SLOTS = 1024;
/** `chain[s]` of a slot that is in no dedup table. */
const UNINDEXED = 0;

export class SwapSlots {
  /** Slots the store holds (an upper bound; arrays grow to the high-water mark only). */
  readonly capacity: number;
  private refs = new Int32Array(INITIAL_SLOTS);
  private hash = new Uint32Array(INITIAL_SLOTS);
  private chain = new Int32Array(INITIAL_SLOTS);
  /** 1 + the next slot in the same (chain, hash) list, or 0 at the end. */
  private next = new Int32Array(INITIAL_SLOTS);
  private freeStack = new Int32Array(INITIAL_SLOTS);
  private freeTop = 0;
  private top = 0;
  private readonly tables = new Map<number, ContentIndex>();

  constructor(
    capacity: number,
    private readonly storeName: string,
  ) {
    this.capacity = capacity;
  }

  /** Slots holding a page now. */
  get inUse(): number {
    return this.top - this.freeTop;
  }

  /** Highest slot ever used, plus one. */
  get highWater(): number {
    return this.top;
  }

  /** A free slot with one reference. Throws STORE_FULL when every slot is taken. */
  allocate(): number {
    let slot: number;
    if (this.freeTop > 0) {
      slot = this.freeStack[--this.freeTop]!;
    } else {
      if (this.top === this.capacity) {
        throw new MemfabricError(
          ErrorCodes.STORE_FULL,
          `the page store ${this.storeName} is full: all ${this.capacity} slots hold pages; give the pager ` +
            `a larger storeSize or budget, or free memory (trim, destroy spaces)`,
        );
      }
      slot = this.top++;
      if (slot >= this.refs.length) this.grow(Math.min(this.capacity, this.refs.length * 2));
    }
    this.refs[slot] = 1;
    this.chain[slot] = UNINDEXED;
    return slot;
  }

  /**
   * Takes a reference on a slot whose bytes were written before this process (a heap image's
   * committed pages): used only while opening, before the first allocate(); `sealAdopted`
   * then frees every slot below the high-water mark that nothing adopted.
   */
  adopt(slot: number): void {
    if (slot >= this.capacity) {
      throw new MemfabricError(
        ErrorCodes.STORE_FULL,
        `slot ${slot} is outside the page store ${this.storeName} (${this.capacity} slots); open it with a larger storeSize`,
      );
    }
    if (slot >= this.refs.length) {
      let length = this.refs.length;
      while (length <= slot) length *= 2;
      this.grow(Math.min(this.capacity, length));
    }
    if (slot >= this.top) this.top = slot + 1;
    this.refs[slot]!++;
  }

  /** adopt() of every slot in [first, end), with one growth of the arrays. */
  adoptRange(first: number, end: number): void {
    if (end <= first) return;
    this.adopt(end - 1);
    this.refs[end - 1]!--;
    for (let slot = first; slot < end; slot++) this.refs[slot]!++;
  }

  /**
   * adopt() for many slots at once: `times` references on each slot word `words[stride·i]`
   * that names a slot (>= `first`), for i below `count`. One growth of the arrays, one loop.
   */
  adoptMany(words: Uint32Array, stride: number, count: number, first: number, times: number): void {
    let highest = -1;
    for (let i = 0; i < count; i++) {
      const slot = words[stride * i]!;
      if (slot >= first && slot > highest) highest = slot;
    }
    if (highest < 0) return;
    this.adopt(highest);
    this.refs[highest]!--;
    const refs = this.refs;
    for (let i = 0; i < count; i++) {
      const slot = words[stride * i]!;
      if (slot >= first) refs[slot]! += times;
    }
  }

  /** Ends adoption: every slot below the high-water mark with no reference becomes free, lowest first out. */
  sealAdopted(): void {
    for (let slot = this.top - 1; slot >= 0; slot--) {
      if (this.refs[slot] === 0) this.pushFree(slot);
    }
  }

  /** Gives back a slot that was allocated but never used (its write was refused). */
  unallocate(slot: number): void {
    this.refs[slot] = 0;
    this.pushFree(slot);
  }

  retain(slot: number): void {
    this.refs[slot]!++;
  }

  /** Drops a reference; returns true when it was the last (the slot is free again). */
  release(slot: number): boolean {
    if (--this.refs[slot]! > 0) return false;
    if (this.chain[slot] !== UNINDEXED) this.unindex(slot);
    this.pushFree(slot);
    return true;
  }

  references(slot: number): number {
    return this.refs[slot]!;
  }

  /** Records that `slot` holds a page of clone chain `chain` whose content hash is `hash`. */
  index(slot: number, chain: number, hash: number): void {
    let table = this.tables.get(chain);
    if (!table) {
      table = new ContentIndex();
      this.tables.set(chain, table);
    }
    this.chain[slot] = chain;
    this.hash[slot] = hash;
    this.next[slot] = table.get(hash);
    table.set(hash, slot + 1);
  }

  /** The first slot of chain `chain` holding a page with hash `hash`, or -1. */
  first(chain: number, hash: number): number {
    const table = this.tables.get(chain);
    return table ? table.get(hash) - 1 : -1;
  }

  /** The slot after `slot` in its (chain, hash) list, or -1. */
  following(slot: number): number {
    return this.next[slot]! - 1;
  }

  /** Dedup tables and slot arrays, in bytes. */
  get byteLength(): number {
    let bytes =
      this.refs.byteLength +
      this.hash.byteLength +
      this.chain.byteLength +
      this.next.byteLength +
      this.freeStack.byteLength;
    for (const table of this.tables.values()) bytes += table.byteLength;
    return bytes;
  }

  private unindex(slot: number): void {
    const chain = this.chain[slot]!;
    const hash = this.hash[slot]!;
    const table = this.tables.get(chain)!;
    const head = table.get(hash) - 1;
    if (head === slot) {
      if (this.next[slot] === 0) table.delete(hash);
      else table.set(hash, this.next[slot]!);
    } else {
      let at = head;
      while (this.next[at]! - 1 !== slot) at = this.next[at]! - 1;
      this.next[at] = this.next[slot]!;
    }
    if (table.size === 0) this.tables.delete(chain);
    this.chain[slot] = UNINDEXED;
    this.next[slot] = 0;
  }

  private pushFree(slot: number): void {
    if (this.freeTop === this.freeStack.length)
      this.freeStack = grown(this.freeStack, this.freeStack.length * 2);
    this.freeStack[this.freeTop++] = slot;
  }

  private grow(length: number): void {
    this.refs = grown(this.refs, length);
    this.hash = grown(this.hash, length);
    this.chain = grown(this.chain, length);
    this.next = grown(this.next, length);
  }
}
