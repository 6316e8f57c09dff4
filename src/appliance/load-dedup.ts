/**
 * Merging while loading. A file-backed image holds every page in full, so an appliance that
 * merged sixteen identical 8 MiB writes into 512 KiB at run time would need 128 MiB to load
 * them back one frame per page. The loader instead offers each non-zero page here first: if
 * an identical page was already loaded into a space of the same trust domain, the new page is
 * mapped to that page's frame (AddressSpace.sharePage, copy-on-write) and costs no frame.
 *
 * Identity is an xxh32 key (a plain number: no BigInt per page) and then a byte compare against the
 * source page's bytes as they are now, so a stale entry (the source page was written since, or
 * its space destroyed) never shares wrong bytes: it just fails to match. Like the merger, one
 * frame takes at most MAX_SHARING_DEFAULT references; past that the next page starts a new one.
 *
 * The table holds numbers only: a ContentIndex from key to the newest entry, and per entry its
 * space (an index into `spaces`), its page and the next entry with the same key.
 */
import { xxh32 } from '@node-rs/xxhash';
import { MAX_SHARING_DEFAULT, type AddressSpace } from '../memory/index.js';
import { ContentIndex } from '../memory/content-index.js';
import { FIRST_FRAME } from '../memory/frame-pool.js';
import { grown } from '../memory/typed-arrays.js';

export class LoadDeduper {
  /** Pages mapped to an existing frame instead of taking one. */
  pagesShared = 0;
  private readonly spaces: AddressSpace[] = [];
  private readonly spaceIds = new Map<AddressSpace, number>();
  private readonly indexes = new Map<string, ContentIndex>();
  private entrySpace = new Int32Array(1024);
  private entryPage = new Float64Array(1024);
  private entryNext = new Int32Array(1024);
  /** Entry 0 is "none" (ContentIndex uses 0 for an empty slot). */
  private entries = 1;

  /**
   * Puts `bytes` (one whole page) into page `page` of `space`: shared with an identical page
   * loaded before in the same trust domain, else written (which takes a frame and may throw
   * POOL_EXHAUSTED, changing nothing). Returns true when it shared.
   */
  load(space: AddressSpace, page: number, bytes: Uint8Array): boolean {
    const pool = space.pool;
    const key = xxh32(bytes);
    let index = this.indexes.get(space.domain);
    if (!index) {
      index = new ContentIndex();
      this.indexes.set(space.domain, index);
    }
    const head = index.get(key);
    for (let entry = head; entry !== 0; entry = this.entryNext[entry]!) {
      const source = this.spaces[this.entrySpace[entry]!]!;
      const sourcePage = this.entryPage[entry]!;
      if (source.isDestroyed || source.pool !== pool) continue;
      const frame = source.frameAt(sourcePage);
      if (frame < FIRST_FRAME || pool.refcount[frame]! >= MAX_SHARING_DEFAULT) continue;
      const offset = pool.frameOffset(frame);
      if (pool.frameSegment(frame).compare(bytes, 0, bytes.length, offset, offset + bytes.length) !== 0)
        continue;
      space.sharePage(page, source, sourcePage);
      this.pagesShared++;
      return true;
    }
    space.write(page * space.pageSize, bytes);
    index.set(key, this.add(space, page, head));
    return false;
  }

  /** Forgets every entry (after loading: the running merger takes over). */
  clear(): void {
    this.spaces.length = 0;
    this.spaceIds.clear();
    this.indexes.clear();
    this.entries = 1;
  }

  private add(space: AddressSpace, page: number, next: number): number {
    let id = this.spaceIds.get(space);
    if (id === undefined) {
      id = this.spaces.length;
      this.spaces.push(space);
      this.spaceIds.set(space, id);
    }
    if (this.entries === this.entrySpace.length) {
      this.entrySpace = grown(this.entrySpace, this.entries * 2);
      this.entryPage = grown(this.entryPage, this.entries * 2);
      this.entryNext = grown(this.entryNext, this.entries * 2);
    }
    const entry = this.entries++;
    this.entrySpace[entry] = id;
    this.entryPage[entry] = page;
    this.entryNext[entry] = next;
    return entry;
  }
}
