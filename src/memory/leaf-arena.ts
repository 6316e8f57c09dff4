/**
 * Leaf arena: the last level of every page table of a pool, in typed arrays.
 *
 * A leaf maps LEAF_ENTRIES consecutive pages. Leaf `l` owns slots
 * `[l * LEAF_ENTRIES, (l + 1) * LEAF_ENTRIES)` of `entries` (frame numbers, or negative
 * swapped entries: see paging.ts), `epochs` (the epoch of each page's last write or trim;
 * 0 = never) and `accessed` (set when a translation is made, cleared by the pager's CLOCK).
 * `chain[l]` is the clone chain of the spaces sharing the leaf (swap dedup is per chain).
 *
 * Leaves are shared copy-on-write between forked spaces: `refs[l]` counts the interior
 * slots (across all spaces) that point at leaf l. A space may change a leaf in place only
 * while refs[l] == 1; otherwise it copies the leaf first. This is what makes fork() cost
 * O(leaves) instead of O(pages).
 *
 * Invariants:
 *   refs[l] > 0  for every leaf reachable from a live space; 0 for leaves on the free list
 *   maxEpoch[l] >= epochs[s] for every slot s of l (lets dirty scans skip clean leaves)
 *   leaf 0 is never allocated: an interior slot holding 0 means "no leaf"
 */

import { grown } from './typed-arrays.js';

export const LEAF_BITS = 9;
export const LEAF_ENTRIES = 1 << LEAF_BITS;
export const LEAF_MASK = LEAF_ENTRIES - 1;

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
    this.chain[leaf] = chain;
    return leaf;
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
  }
}
