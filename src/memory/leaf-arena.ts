/**
 * Leaf arena: the last level of every page table of a pool, in typed arrays.
 *
 * A leaf maps LEAF_ENTRIES consecutive pages. Leaf `l` owns slots
 * `[l * LEAF_ENTRIES, (l + 1) * LEAF_ENTRIES)` of `entries` (frame numbers, or negative
 * swapped entries: see paging.ts), `epochs` (the epoch of each page's last write or trim;
 * 0 = never) and `accessed` (set when a translation is made, cleared by the pager's CLOCK).
 * `chain[l]` is the clone chain of the spaces sharing the leaf (swap dedup is per chain).
 *
 * Occupancy. `occupancy[l]` summarises where leaf l may hold resident frames: bit g stands for
 * the GROUP_ENTRIES slots from g * GROUP_ENTRIES (one 64-byte line of `entries`), so a scan of
 * a leaf holding a few pages reads a word and a line or two instead of every slot (the merger's
 * first scan of pages scattered one per leaf, see merger.ts). Whatever maps a resident frame
 * into a slot does it through `map`, which sets the slot's bit; nothing else sets bits, and only
 * a reader that finds a group holding no resident frame clears its bit. A bit set over an empty
 * group costs a read of its line; a bit missing would hide the group's pages from the merger.
 *
 * Leaves are shared copy-on-write between forked spaces: `refs[l]` counts the interior
 * slots (across all spaces) that point at leaf l. A space may change a leaf in place only
 * while refs[l] == 1; otherwise it copies the leaf first. This is what makes fork() cost
 * O(leaves) instead of O(pages).
 *
 * Invariants:
 *   refs[l] > 0  for every leaf reachable from a live space; 0 for leaves on the free list
 *   maxEpoch[l] >= epochs[s] for every slot s of l (lets dirty scans skip clean leaves)
 *   bit (s / GROUP_ENTRIES) of occupancy[l] is set for every slot s of l holding a resident
 *     frame (>= FIRST_FRAME)
 *   leaf 0 is never allocated: an interior slot holding 0 means "no leaf"
 */

import { grown } from './typed-arrays.js';

export const LEAF_BITS = 9;
export const LEAF_ENTRIES = 1 << LEAF_BITS;
export const LEAF_MASK = LEAF_ENTRIES - 1;
/** Slots per occupancy bit: LEAF_ENTRIES / 32, so one 32-bit word summarises a leaf. */
export const GROUP_BITS = LEAF_BITS - 5;
export const GROUP_ENTRIES = 1 << GROUP_BITS;

const INITIAL_LEAVES = 64;

export class LeafArena {
  entries = new Int32Array(INITIAL_LEAVES * LEAF_ENTRIES);
  epochs = new Uint32Array(INITIAL_LEAVES * LEAF_ENTRIES);
  accessed = new Uint8Array(INITIAL_LEAVES * LEAF_ENTRIES);
  chain = new Int32Array(INITIAL_LEAVES);
  refs = new Uint32Array(INITIAL_LEAVES);
  maxEpoch = new Uint32Array(INITIAL_LEAVES);
  /** Scan round in which the merger last visited the leaf (so shared leaves are scanned once). */
  scanMark = new Uint32Array(INITIAL_LEAVES);
  /** Per leaf, one bit per GROUP_ENTRIES slots that may hold a resident frame (see the overview). */
  occupancy = new Int32Array(INITIAL_LEAVES);

  /** Leaves ever handed out (high-water mark); leaf 0 is reserved. */
  private top = 1;
  private freeList = new Int32Array(INITIAL_LEAVES);
  private freeCount = 0;

  /** Leaves in use. */
  get live(): number {
    return this.top - 1 - this.freeCount;
  }

  get byteLength(): number {
    return (
      this.entries.byteLength +
      this.epochs.byteLength +
      this.accessed.byteLength +
      this.chain.byteLength +
      this.refs.byteLength +
      this.maxEpoch.byteLength +
      this.scanMark.byteLength +
      this.occupancy.byteLength +
      this.freeList.byteLength
    );
  }

  /** Leaves ever handed out, plus one: leaf ids are below this (the pager's CLOCK sweeps them). */
  get highWater(): number {
    return this.top;
  }

  /** A new, empty leaf with refs = 1, belonging to clone chain `chain`. */
  allocate(chain: number): number {
    let leaf: number;
    if (this.freeCount > 0) {
      leaf = this.freeList[--this.freeCount]!;
    } else {
      if (this.top === this.refs.length) this.grow();
      leaf = this.top++;
    }
    this.refs[leaf] = 1;
    this.maxEpoch[leaf] = 0;
    this.scanMark[leaf] = 0;
    this.occupancy[leaf] = 0;
    this.chain[leaf] = chain;
    return leaf;
  }

  /**
   * Puts `value` in slot `entry` (an index into `entries`) and sets the slot's occupancy bit.
   * Every path that maps a resident frame into a slot goes through here; others may too.
   */
  map(entry: number, value: number): void {
    this.entries[entry] = value;
    this.occupancy[entry >>> LEAF_BITS]! |= 1 << ((entry >>> GROUP_BITS) & 31);
  }

  /** Returns a leaf whose slots no longer hold frames (the caller released them). */
  free(leaf: number): void {
    const base = leaf * LEAF_ENTRIES;
    this.entries.fill(0, base, base + LEAF_ENTRIES);
    this.epochs.fill(0, base, base + LEAF_ENTRIES);
    this.accessed.fill(0, base, base + LEAF_ENTRIES);
    this.refs[leaf] = 0;
    if (this.freeCount === this.freeList.length)
      this.freeList = grown(this.freeList, this.freeList.length * 2);
    this.freeList[this.freeCount++] = leaf;
  }

  private grow(): void {
    const leaves = this.refs.length * 2;
    this.entries = grown(this.entries, leaves * LEAF_ENTRIES);
    this.epochs = grown(this.epochs, leaves * LEAF_ENTRIES);
    this.accessed = grown(this.accessed, leaves * LEAF_ENTRIES);
    this.chain = grown(this.chain, leaves);
    this.refs = grown(this.refs, leaves);
    this.maxEpoch = grown(this.maxEpoch, leaves);
    this.scanMark = grown(this.scanMark, leaves);
    this.occupancy = grown(this.occupancy, leaves);
  }
}
