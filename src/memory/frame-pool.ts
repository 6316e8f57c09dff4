/**
 * Frame pool: the physical pages (frames) that every address space of the pool maps.
 *
 * Frames live in large segments (one ArrayBuffer or SharedArrayBuffer each, wrapped once in a
 * Buffer and a DataView); a frame is a number, never an object. Frame `f` is at byte
 * `(f & segmentMask) * pageSize` of segment `f >>> segmentShift`.
 *
 * Two frame numbers are reserved in segment 0 and never handed out:
 *   NO_FRAME   (0)  an empty page-table entry: a hole, reads as zeros;
 *   ZERO_FRAME (1)  the shared, read-only zero page: written as zeros, costs no frame.
 *
 * Per-frame metadata are typed arrays indexed by frame number:
 *   refcount[f]  the number of page-table entries (leaf slots) that hold f. Leaves shared
 *                between forked spaces count once: a leaf slot is one entry however many
 *                spaces share the leaf.
 *   flags[f]     FRAME_MERGED when the same-page merger indexed f by its contents; such a
 *                frame must not be written in place until it leaves the index.
 *   frameSlot[f] 1 + the page-store slot that holds a copy of f's bytes, or 0 (only pools
 *                with a pager: see paging.ts). Lets the pager drop a clean page without I/O;
 *                the copy is forgotten (and its slot reference dropped) before f is written
 *                in place or freed.
 *
 * Invariants (checked by the property tests):
 *   free + used == capacity
 *   used == |{ f >= FIRST_FRAME : refcount[f] > 0 }|   (frames in use are exactly those mapped)
 *   refcount[f] == number of leaf slots holding f
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { parseSize } from '../size.js';
import { LeafArena } from './leaf-arena.js';
import type { PagingBackend } from './paging.js';
import { grown } from './typed-arrays.js';

export const NO_FRAME = 0;
export const ZERO_FRAME = 1;
export const FIRST_FRAME = 2;

export const PAGE_SIZE_MIN = 512;
export const PAGE_SIZE_MAX = 65536;
export const PAGE_SIZE_DEFAULT = 4096;

/**
 * A segment holds at most this many bytes (2 GiB: byte offsets stay below 2^31). A pool whose
 * maxCapacity fits is one segment for its whole life, grown or not, which the scalar fast path
 * of AddressSpace needs (it reads segment 0 through one DataView): segment 0 reserves address
 * space for maxCapacity at once, and the memory stays virtual until frames are used (a fresh
 * ArrayBuffer is zero-filled lazily, and frames are handed out lowest first). A larger pool
 * starts with a segment sized for its initial capacity and grows by segments of that size.
 */
export const SEGMENT_BYTES_MAX = 2 ** 31;

/** Set in `flags[f]` while the merger indexes frame f by content. */
export const FRAME_MERGED = 1;

export interface FramePoolOptions {
  /** Bytes per page: a power of two from 512 to 65536. Default 4096. */
  pageSize?: number;
  /** Memory the pool starts with, in bytes or a size string ("256MiB"). */
  capacity: number | string;
  /** Grow on demand up to this many bytes (default: no growth). */
  maxCapacity?: number | string;
  /** Back frames with SharedArrayBuffer so workers can see them. Default false. */
  shared?: boolean;
  /**
   * @internal Frames per segment (a power of two), instead of the size derived from the
   * capacities: lets tests spread a small pool over several segments.
   */
  segmentFrames?: number;
}

/** Anything that caches translations to frames and must drop them when frames move. */
export interface TranslationCache {
  flushTranslations(): void;
}

/** What the merger needs to hear from the pool. */
export interface FrameIndex {
  /** Frame f is leaving the content index (freed, or about to be written in place). */
  forget(frame: number): void;
}

export class FramePool {
  readonly pageSize: number;
  readonly pageShift: number;
  readonly shared: boolean;
  readonly framesPerSegment: number;
  readonly segmentShift: number;
  readonly segmentMask: number;
  /** Usable frames now (reserved frames excluded). */
  capacity: number;
  /** Usable frames the pool may grow to. */
  readonly maxCapacity: number;

  /** Segment memory as Buffers (for bulk copies and compares) and DataViews (for scalars). */
  readonly segments: Buffer[] = [];
  readonly views: DataView[] = [];

  refcount: Uint32Array;
  flags: Uint8Array;
  frameSlot: Int32Array;
  /** The pager that moves this pool's pages in and out, if any. */
  paging: PagingBackend | undefined;
  private freeStack: Int32Array;
  private freeTop = 0;

  /** Page-table leaves of every space of this pool (leaves are shared between forks). */
  readonly leaves = new LeafArena();

  /** Leaf slots that map the zero frame, across all spaces (each slot counted once). */
  zeroEntries = 0;
  /** Frames copied because a write hit a shared frame (copy-on-write breaks). */
  cowCopies = 0;
  /** Copy-on-write breaks of frames the merger had merged. */
  mergedCowBreaks = 0;
  /** Translations (TLB misses) that found their page resident: the pager's "hits". */
  translations = 0;

  private readonly caches = new Set<TranslationCache>();
  private index: FrameIndex | undefined;

  constructor(options: FramePoolOptions) {
    const pageSize = options.pageSize ?? PAGE_SIZE_DEFAULT;
    if (
      !Number.isInteger(pageSize) ||
      pageSize < PAGE_SIZE_MIN ||
      pageSize > PAGE_SIZE_MAX ||
      (pageSize & (pageSize - 1)) !== 0
    ) {
      throw invalidArgument(`pageSize ${pageSize} must be a power of two from 512 to 65536`);
    }
    const capacityBytes = parseSize(options.capacity, 'capacity');
    const maxBytes =
      options.maxCapacity === undefined ? capacityBytes : parseSize(options.maxCapacity, 'maxCapacity');
    if (maxBytes < capacityBytes) {
      throw invalidArgument(`maxCapacity (${maxBytes} bytes) is below capacity (${capacityBytes} bytes)`);
    }
    this.pageSize = pageSize;
    this.pageShift = Math.log2(pageSize);
    this.shared = options.shared ?? false;
    const initialFrames = Math.floor(capacityBytes / pageSize);
    const maxFrames = Math.floor(maxBytes / pageSize);
    if (maxFrames < 1) {
      throw invalidArgument(`capacity must hold at least one ${pageSize}-byte page`);
    }
    if (maxFrames > 2 ** 31 - FIRST_FRAME - 1) {
      throw invalidArgument(`maxCapacity allows ${maxFrames} frames; the limit is 2^31`);
    }
    // Segments are a power of two frames: the smallest that holds the pool at its largest, when
    // that fits in SEGMENT_BYTES_MAX (so growth stays in segment 0); otherwise the smallest that
    // holds its initial capacity, capped at SEGMENT_BYTES_MAX, and growth adds segments.
    const segmentFramesMax = SEGMENT_BYTES_MAX / pageSize;
    const fitting = (frames: number) =>
      Math.min(2 ** Math.ceil(Math.log2(frames + FIRST_FRAME)), segmentFramesMax);
    const whole = options.segmentFrames === undefined && maxFrames + FIRST_FRAME <= segmentFramesMax;
    let segmentFrames = options.segmentFrames ?? fitting(whole ? maxFrames : Math.max(initialFrames, 1));
    if (
      !Number.isInteger(segmentFrames) ||
      segmentFrames < FIRST_FRAME ||
      segmentFrames > segmentFramesMax ||
      (segmentFrames & (segmentFrames - 1)) !== 0
    ) {
      throw invalidArgument(
        `segmentFrames ${segmentFrames} must be a power of two from 2 to ${segmentFramesMax}`,
      );
    }
    let first: ArrayBuffer | SharedArrayBuffer;
    try {
      // The pool never holds frames past maxFrames + FIRST_FRAME: segment 0 need not be longer.
      first = this.segmentMemory((whole ? maxFrames + FIRST_FRAME : segmentFrames) * pageSize);
    } catch (error) {
      // Reserving maxCapacity is address space, not memory, but an OS that accounts for it
      // (strict overcommit) may refuse: then the pool grows by segments like a larger one.
      if (!whole || !(error instanceof RangeError)) throw error;
      segmentFrames = fitting(Math.max(initialFrames, 1));
      first = this.segmentMemory(segmentFrames * pageSize);
    }
    this.segments.push(Buffer.from(first));
    this.views.push(new DataView(first));
    this.framesPerSegment = segmentFrames;
    this.segmentShift = Math.log2(this.framesPerSegment);
    this.segmentMask = this.framesPerSegment - 1;
    this.maxCapacity = maxFrames;
    this.capacity = 0;
    this.refcount = new Uint32Array(0);
    this.flags = new Uint8Array(0);
    this.frameSlot = new Int32Array(0);
    this.freeStack = new Int32Array(0);
    this.growTo(initialFrames);
  }

  /** Frames handed out and not yet returned. */
  get used(): number {
    return this.capacity - this.freeTop;
  }

  /** Frames ready to hand out without growing. */
  get free(): number {
    return this.freeTop;
  }

  /** Frames that could still be handed out, growth included. */
  get available(): number {
    return this.freeTop + (this.maxCapacity - this.capacity);
  }

  /**
   * Makes sure `count` frames can be allocated without failing; grows if it must.
   * Throws POOL_EXHAUSTED (having changed nothing) when the pool cannot hold them.
   */
  reserve(count: number): void {
    if (count <= this.freeTop) return;
    if (count > this.available) {
      if (this.paging) {
        this.paging.makeRoom(count);
        if (count <= this.freeTop) return;
      }
      throw new MemfabricError(
        ErrorCodes.POOL_EXHAUSTED,
        `the frame pool is full: ${count} more ${this.pageSize}-byte frames needed, ${this.freeTop} free of ` +
          `${this.capacity} (limit ${this.maxCapacity}); free memory (trim, destroy spaces, merge) or create the ` +
          `pool with a larger maxCapacity`,
      );
    }
    const missing = count - this.freeTop;
    this.growTo(
      Math.min(this.maxCapacity, Math.max(this.capacity + missing, Math.ceil(this.capacity * 1.25))),
    );
  }

  /** Takes a free frame (refcount 1, contents undefined). Call `reserve` first on multi-frame paths. */
  allocate(): number {
    if (this.freeTop === 0) this.reserve(1);
    const frame = this.freeStack[--this.freeTop]!;
    this.refcount[frame] = 1;
    return frame;
  }

  /** Adds a reference to a real frame. */
  retain(frame: number): void {
    this.refcount[frame]!++;
  }

  /** Drops one reference; the frame returns to the free list at zero. Takes any leaf entry. */
  release(frame: number): void {
    if (frame < FIRST_FRAME) {
      if (frame === ZERO_FRAME) this.zeroEntries--;
      else if (frame < 0) this.paging?.releaseSlot(-1 - frame);
      return;
    }
    if (--this.refcount[frame]! === 0) {
      if (this.flags[frame]! & FRAME_MERGED) this.index!.forget(frame);
      this.forgetCopy(frame);
      this.freeStack[this.freeTop++] = frame;
    }
  }

  /** Adds a reference for one more leaf entry holding `entry` (a frame, the zero frame or a swapped page). */
  retainEntry(entry: number): void {
    if (entry >= FIRST_FRAME) this.refcount[entry]!++;
    else if (entry === ZERO_FRAME) this.zeroEntries++;
    else if (entry < 0) this.paging!.retainSlot(-1 - entry);
  }

  /** Frame f's bytes are about to change or f is being freed: its page-store copy no longer matches. */
  forgetCopy(frame: number): void {
    const slotPlusOne = this.frameSlot[frame]!;
    if (slotPlusOne !== 0) {
      this.frameSlot[frame] = 0;
      this.paging?.releaseSlot(slotPlusOne - 1);
    }
  }

  /** Attaches the pager (one per pool); the pool must be shared and may not grow past its budget. */
  attachPaging(paging: PagingBackend | undefined): void {
    if (paging && this.paging && this.paging !== paging) {
      throw invalidArgument('this frame pool already has a pager');
    }
    this.paging = paging;
  }

  /**
   * Called before writing frame f in place (refcount 1): a merged frame leaves the content
   * index first, since its contents are about to change.
   */
  unmerge(frame: number): void {
    if (this.flags[frame]! & FRAME_MERGED) this.index!.forget(frame);
  }

  /** Byte offset of a frame within its segment. */
  frameOffset(frame: number): number {
    return (frame & this.segmentMask) * this.pageSize;
  }

  /** The segment Buffer that holds a frame. */
  frameSegment(frame: number): Buffer {
    return this.segments[frame >>> this.segmentShift]!;
  }

  /** A view of one frame; valid while the frame is mapped. Allocates: not for hot paths. */
  frameBytes(frame: number): Buffer {
    const offset = this.frameOffset(frame);
    return this.frameSegment(frame).subarray(offset, offset + this.pageSize);
  }

  /** Copies frame `from` into frame `to`. */
  copyFrame(from: number, to: number): void {
    const src = this.frameSegment(from);
    const offset = this.frameOffset(from);
    src.copy(this.frameSegment(to), this.frameOffset(to), offset, offset + this.pageSize);
  }

  /** Fills a frame with zeros. */
  zeroFrame(frame: number): void {
    const offset = this.frameOffset(frame);
    this.frameSegment(frame).fill(0, offset, offset + this.pageSize);
  }

  /** Registers a space (or anything caching frame numbers) to be told when frames move. */
  addTranslationCache(cache: TranslationCache): void {
    this.caches.add(cache);
  }

  removeTranslationCache(cache: TranslationCache): void {
    this.caches.delete(cache);
  }

  /** Every cached translation is dropped: called after the merger repoints entries. */
  flushAllTranslations(): void {
    for (const cache of this.caches) cache.flushTranslations();
  }

  /** The number of live address spaces (and other caches) over this pool. */
  get spaceCount(): number {
    return this.caches.size;
  }

  /** Attaches the content index (the merger); one per pool. */
  attachIndex(index: FrameIndex | undefined): void {
    if (index && this.index && this.index !== index) {
      throw invalidArgument('this frame pool already has a same-page merger');
    }
    this.index = index;
  }

  /** Bytes of metadata the pool keeps per frame (refcount, flags, free stack). */
  get metadataBytes(): number {
    return (
      this.refcount.byteLength +
      this.flags.byteLength +
      this.frameSlot.byteLength +
      this.freeStack.byteLength +
      this.leaves.byteLength
    );
  }

  /** A fresh segment: zero-filled lazily by the OS, so untouched frames cost no RAM. */
  private segmentMemory(bytes: number): ArrayBuffer | SharedArrayBuffer {
    return this.shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
  }

  private growTo(frames: number): void {
    const total = frames + FIRST_FRAME;
    const segmentsNeeded = Math.ceil(total / this.framesPerSegment);
    const segmentBytes = this.framesPerSegment * this.pageSize;
    while (this.segments.length < segmentsNeeded) {
      const memory = this.segmentMemory(segmentBytes);
      this.segments.push(Buffer.from(memory));
      this.views.push(new DataView(memory));
    }
    const refcount = grown(this.refcount, total);
    const flags = grown(this.flags, total);
    const frameSlot = grown(this.frameSlot, total);
    // New frames go under the free ones, highest first: allocation takes the frames already
    // free first, then the lowest new frame first. So a lightly used pool touches (and makes
    // the OS commit) only the start of its segments, and a space written in order into a pool
    // that grows meanwhile still gets consecutive frames (span translations).
    const freeStack = new Int32Array(frames);
    let top = 0;
    for (let f = total - 1; f >= this.capacity + FIRST_FRAME; f--) freeStack[top++] = f;
    freeStack.set(this.freeStack.subarray(0, this.freeTop), top);
    top += this.freeTop;
    this.refcount = refcount;
    this.flags = flags;
    this.frameSlot = frameSlot;
    this.freeStack = freeStack;
    this.freeTop = top;
    this.capacity = frames;
  }
}
