/**
 * The page map: which image slot holds each page of the heap's address space, as of one
 * checkpoint. It is the on-disk twin of the address space's page table.
 *
 * Entries are 8 bytes, (u32 slot word, u32 xxh32 of the page): slot word 0 is a hole (never
 * written), 1 a page of zeros, anything else the slot that holds the page's bytes. On disk the
 * map is a radix tree of map pages, each holding pageSize/8 entries: level-1 pages hold the
 * entries of the heap's pages, level-2 pages the entries (slot, checksum) of level-1 pages, and
 * so on up to one root page, which the superblock names with its checksum. So every byte of a
 * checkpoint is covered by a checksum chain from the superblock (a Merkle tree, as in ZFS).
 *
 * In memory the map is kept whole, as typed arrays (8 bytes per heap page up to the highest one
 * stored: 8 MiB for a 4 GiB heap of 4 KiB pages, 0.2%), with one dirty bit per map page. A
 * checkpoint rewrites only the map pages whose entries changed and their ancestors, each to a
 * new slot (never in place): its cost follows the dirty pages, not the heap's size.
 *
 * Written by hand: this is the product's own on-disk format.
 */
import { xxh32 } from '@node-rs/xxhash';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { grown } from '../memory/typed-arrays.js';
import type { MapRoot } from './superblock.js';

export const SLOT_HOLE = 0;
export const SLOT_ZERO = 1;
/** Map pages read at once while loading. */
const READ_CONCURRENCY = 32;

export interface MapWriteResult {
  root: MapRoot;
  /** Slots of map pages this write replaced: free once the new checkpoint is committed. */
  replaced: number[];
  /** Slots of the new map pages: to release if the checkpoint fails before its commit. */
  written: number[];
}

export class PageMap {
  readonly pageSize: number;
  /** Entries per map page. */
  readonly fanout: number;
  /** Pages covered: entries exist for pages [0, pages). */
  pages = 0;
  /** Level 0: the heap's pages; level l >= 1: map pages of level l. Two words per entry. */
  private words: Uint32Array[] = [new Uint32Array(0)];
  /** Per level >= 1: one byte per map page, 1 when it must be rewritten. */
  private dirty: Uint8Array[] = [new Uint8Array(0)];
  /** The levels of map pages the committed root has (0: no map yet). */
  levels = 0;

  constructor(pageSize: number) {
    this.pageSize = pageSize;
    this.fanout = pageSize / 8;
  }

  slotWord(page: number): number {
    return page < this.pages ? this.words[0]![2 * page]! : SLOT_HOLE;
  }

  checksum(page: number): number {
    return page < this.pages ? this.words[0]![2 * page + 1]! : 0;
  }

  /** The entries of pages [0, pages) as (slot word, checksum) pairs: a view, not a copy. */
  entryWords(): Uint32Array {
    return this.words[0]!.subarray(0, 2 * this.pages);
  }

  /** Sets page `page`'s entry, growing the map to cover it. */
  set(page: number, slotWord: number, checksum: number): void {
    if (page >= this.pages) this.cover(page + 1);
    const words = this.words[0]!;
    words[2 * page] = slotWord;
    words[2 * page + 1] = checksum;
    this.dirty[1]![Math.floor(page / this.fanout)] = 1;
  }

  /** Calls visit(page, slotWord, checksum) for every stored page (slot word >= 2 or zero pages). */
  forEachEntry(visit: (page: number, slotWord: number, checksum: number) => void): void {
    const words = this.words[0]!;
    for (let page = 0; page < this.pages; page++) {
      const word = words[2 * page]!;
      if (word !== SLOT_HOLE) visit(page, word, words[2 * page + 1]!);
    }
  }

  /** Calls visit(slot) for every map page of the committed tree. */
  forEachMapSlot(visit: (slot: number) => void): void {
    for (let level = 1; level <= this.levels; level++) {
      const words = this.words[level]!;
      const count = this.nodesAt(level);
      for (let i = 0; i < count; i++) {
        const slot = words[2 * i]!;
        if (slot !== SLOT_HOLE) visit(slot);
      }
    }
  }

  /** Number of map pages (all levels). */
  get mapPages(): number {
    let count = 0;
    for (let level = 1; level <= this.levelsFor(this.pages); level++) count += this.nodesAt(level);
    return count;
  }

  /** A copy of this map with every map page marked for writing (a fork writes its own copy). */
  cloneForWrite(): PageMap {
    const copy = new PageMap(this.pageSize);
    copy.pages = this.pages;
    copy.levels = 0;
    copy.words = this.words.map((w) => w.slice());
    copy.dirty = this.dirty.map((d) => d.slice().fill(1));
    // The copy's map pages are all new: forget the slots of this map's pages.
    for (let level = 1; level < copy.words.length; level++) copy.words[level]!.fill(0);
    return copy;
  }

  /** Copies the state needed to undo a write() that never committed. */
  snapshotNodes(): { levels: number; words: Uint32Array[]; dirty: Uint8Array[] } {
    return {
      levels: this.levels,
      words: this.words.slice(1).map((w) => w.slice()),
      dirty: this.dirty.slice(1).map((d) => d.slice()),
    };
  }

  restoreNodes(saved: { levels: number; words: Uint32Array[]; dirty: Uint8Array[] }): void {
    this.levels = saved.levels;
    for (let i = 0; i < saved.words.length; i++) {
      this.words[i + 1] = saved.words[i]!;
      this.dirty[i + 1] = saved.dirty[i]!;
    }
  }

  /**
   * Writes every dirty map page and its ancestors to new slots through `store` (which returns
   * the slot it wrote, holding one reference) and returns the new root. Nothing is durable
   * until the caller flushes and commits a superblock naming the root.
   */
  async write(store: (bytes: Uint8Array) => Promise<number>): Promise<MapWriteResult> {
    const replaced: number[] = [];
    const written: number[] = [];
    const levels = this.levelsFor(this.pages);
    if (levels === 0) return { root: { slot: SLOT_HOLE, checksum: 0, levels: 0 }, replaced, written };
    this.ensureLevels(levels);
    // A taller tree than the committed one: its new upper pages must all be written (they name
    // the pages below). Level 1 never needs this: a level-1 page with entries is dirty already,
    // and one covering only holes is never written (its parent's entry stays 0).
    for (let level = Math.max(2, this.levels + 1); level <= levels; level++) {
      this.dirty[level]!.fill(1, 0, this.nodesAt(level));
    }
    const page = Buffer.alloc(this.pageSize);
    for (let level = 1; level <= levels; level++) {
      const count = this.nodesAt(level);
      const below = this.words[level - 1]!;
      const belowCount = level === 1 ? this.pages : this.nodesAt(level - 1);
      const words = this.words[level]!;
      const dirty = this.dirty[level]!;
      for (let i = 0; i < count; i++) {
        if (dirty[i] === 0) continue;
        page.fill(0);
        const first = i * this.fanout;
        const last = Math.min(belowCount, first + this.fanout);
        if (last > first) {
          const src = new Uint8Array(below.buffer, below.byteOffset + first * 8, (last - first) * 8);
          page.set(src, 0);
        }
        const checksum = xxh32(page, 0) >>> 0;
        const slot = await store(page);
        written.push(slot);
        if (words[2 * i]! !== SLOT_HOLE) replaced.push(words[2 * i]!);
        words[2 * i] = slot;
        words[2 * i + 1] = checksum;
        dirty[i] = 0;
        if (level < levels) this.dirty[level + 1]![Math.floor(i / this.fanout)] = 1;
      }
    }
    // Pages of levels above the new top (a tree never shrinks, but be exact) are replaced too.
    this.levels = levels;
    const root = this.words[levels]!;
    return { root: { slot: root[0]!, checksum: root[1]!, levels }, replaced, written };
  }

  /**
   * Reads the map a superblock names: every map page, checking each against the checksum its
   * parent (or the superblock) recorded. HEAP_CORRUPT names the first page that fails.
   */
  static async read(
    pageSize: number,
    root: MapRoot,
    pages: number,
    readSlot: (slot: number, dst: Uint8Array) => Promise<void>,
    where: string,
  ): Promise<PageMap> {
    const map = new PageMap(pageSize);
    if (root.levels === 0 || pages === 0) return map;
    if (map.levelsFor(pages) !== root.levels) {
      throw corrupt(
        `${where}: the superblock names a ${root.levels}-level page map for ${pages} pages, which needs ${map.levelsFor(pages)}`,
      );
    }
    map.cover(pages);
    map.ensureLevels(root.levels);
    map.levels = root.levels;
    const top = map.words[root.levels]!;
    top[0] = root.slot;
    top[1] = root.checksum;
    for (let level = root.levels; level >= 1; level--) {
      const words = map.words[level]!;
      const count = map.nodesAt(level);
      const below = map.words[level - 1]!;
      const belowCount = level === 1 ? pages : map.nodesAt(level - 1);
      let next = 0;
      const worker = async (): Promise<void> => {
        const page = new Uint8Array(pageSize);
        while (next < count) {
          const i = next++;
          const slot = words[2 * i]!;
          const expected = words[2 * i + 1]!;
          // A map page never written covers only holes: its entries stay zero.
          if (slot === SLOT_HOLE) continue;
          if (slot < 2)
            throw corrupt(
              `${where}: map page ${i} of level ${level} names slot ${slot}, which holds no map page`,
            );
          await readSlot(slot, page);
          const found = xxh32(page, 0) >>> 0;
          if (found !== expected) {
            throw corrupt(
              `${where}: map page ${i} of level ${level} (slot ${slot}) does not match its checksum ` +
                `(found 0x${found.toString(16)}, recorded 0x${expected.toString(16)})`,
            );
          }
          const first = i * map.fanout;
          const last = Math.min(belowCount, first + map.fanout);
          if (last > first) {
            new Uint8Array(below.buffer, below.byteOffset + first * 8, (last - first) * 8).set(
              page.subarray(0, (last - first) * 8),
            );
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, count) }, worker));
    }
    for (let level = 1; level < map.dirty.length; level++) map.dirty[level]!.fill(0);
    return map;
  }

  /** Map levels needed for `pages` heap pages. */
  levelsFor(pages: number): number {
    if (pages === 0) return 0;
    let levels = 1;
    for (let covered = this.fanout; covered < pages; covered *= this.fanout) levels++;
    return levels;
  }

  private nodesAt(level: number): number {
    let count = this.pages;
    for (let l = 0; l < level; l++) count = Math.ceil(count / this.fanout);
    return count;
  }

  /** Grows the arrays to cover `pages` heap pages. */
  private cover(pages: number): void {
    const levels = Math.max(1, this.levelsFor(pages));
    this.ensureLevels(levels);
    let capacity = this.words[0]!.length / 2;
    if (capacity < pages) {
      capacity = Math.max(pages, capacity * 2, 1024);
      this.words[0] = grown(this.words[0]!, capacity * 2);
    }
    let count = capacity;
    for (let level = 1; level <= levels; level++) {
      count = Math.ceil(count / this.fanout);
      if (this.words[level]!.length < count * 2) {
        this.words[level] = grown(this.words[level]!, count * 2);
        this.dirty[level] = grown(this.dirty[level]!, count);
      }
    }
    this.pages = pages;
  }

  private ensureLevels(levels: number): void {
    while (this.words.length <= levels) {
      this.words.push(new Uint32Array(2));
      this.dirty.push(new Uint8Array(1));
    }
  }
}

function corrupt(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.HEAP_CORRUPT, `${message}; restore the image from a copy`);
}
