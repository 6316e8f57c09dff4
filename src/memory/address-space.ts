/**
 * Address space: a sparse, paged, copy-on-write virtual memory over a frame pool.
 *
 * Page table. A radix tree: interior nodes of DIR_ENTRIES slots (this space's own `nodes`
 * array, node 0 is the root) above leaves of LEAF_ENTRIES slots (the pool's LeafArena,
 * shared between forks). A space of `size` bytes has `levels` interior levels, just enough
 * to cover its pages, so 1 GiB of 4 KiB pages is root -> leaf, and 256 TiB is three interior
 * levels. Nothing below the root exists until a page under it is written.
 *
 * Entries. A leaf slot holds NO_FRAME (hole: never written, or trimmed), ZERO_FRAME (written
 * as zeros) or a real frame. Each slot also records the epoch of the page's last write. A real
 * frame is put in a slot only through LeafArena.map, which keeps the leaf's occupancy summary
 * (the merger reads only the slots it marks); ownLeaf copies the summary with the slots.
 *
 * Copy-on-write. fork() copies the interior nodes and shares every leaf (refs[leaf]++), so it
 * costs O(leaves). Before a space changes a slot it makes the leaf its own (copying a shared
 * leaf retains every frame in it), then makes the frame its own (copying a frame whose
 * refcount is above one). Frames the merger indexed are never written in place either.
 *
 * Translation caches. Two direct-mapped caches sit in front of the walk, so the resident fast
 * path is a compare and a DataView access and never allocates or awaits:
 *   - the page TLB, page -> (segment, byte offset). An entry is "writable" only once the page
 *     holds a private frame whose epoch is the current one. It starts at 256 slots and grows
 *     while scalar accesses keep displacing each other (a working set larger than it), up to
 *     one slot per page or 2^18 slots;
 *   - the span TLB (scalar reads only): one entry per leaf whose LEAF_ENTRIES pages map
 *     consecutive frames of segment 0, as pages written in order do (a space smaller than a
 *     leaf has one span over its whole pages, kept in two fields rather than a table). On a
 *     large space read at random it replaces hundreds of page translations (each a cache
 *     miss) with one, the way huge pages relieve a hardware TLB, without changing how frames
 *     are allocated; on a small one it is the first check an access makes, so it should hit.
 *     Not used with a pager, which needs each page's translation to see its accessed bit.
 * The scalar fast path (see the accessors) checks the small space's span, the span slot, then
 * the page TLB slot, and reads through one DataView, that of segment 0 (fastView): a pool whose
 * maxCapacity fits SEGMENT_BYTES_MAX has no other, however it grows. Each check is a tag and
 * bounds test on one pair of numbers that lie side by side. A slot is armed for it only by a
 * scalar miss (locate), which looks for a span first; bulk calls fill TLB slots without arming
 * them.
 * Anything that makes a cached translation stale drops it: fork (frames become shared), epoch
 * advance (the next write must record its epoch; writable entries only), trim and zeroing,
 * sharePage, a page made writable (it may get a new frame), and the merger and the pager
 * (through FramePool.flushAllTranslations). Flushing a large TLB costs only the slots filled
 * since the last flush, up to TLB_LOG_ENTRIES of them.
 *
 * Failure atomicity. A call that needs frames reserves all of them before it changes
 * anything, so POOL_EXHAUSTED leaves every space exactly as it was.
 */
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
import { parseSize } from '../size.js';
import {
  FIRST_FRAME,
  FRAME_MERGED,
  NO_FRAME,
  ZERO_FRAME,
  type FramePool,
  type TranslationCache,
} from './frame-pool.js';
import { LEAF_BITS, LEAF_ENTRIES, LEAF_MASK } from './leaf-arena.js';
import { grown } from './typed-arrays.js';

export const DIR_BITS = 10;
export const DIR_ENTRIES = 1 << DIR_BITS;
const DIR_MASK = DIR_ENTRIES - 1;

/**
 * The TLB starts with 2^TLB_BITS_MIN slots and grows (see growTlb) while scalar accesses keep
 * displacing each other's translations, up to one slot per page of the space and at most
 * 2^TLB_BITS_MAX slots: 1 GiB of 4 KiB pages, at about 45 bytes a slot (12 MiB at most).
 */
const TLB_BITS_MIN = 8;
const TLB_BITS_MAX = 18;
/** Each growth multiplies the slots by 2^TLB_GROWTH_BITS, so a large working set is met in few steps. */
const TLB_GROWTH_BITS = 2;
/**
 * Slots filled since the last flush are logged (up to this many), so flushing a large TLB
 * after a few fills touches those slots only; past this many, a flush clears every slot.
 */
const TLB_LOG_ENTRIES = 256;
/**
 * Span translations: one entry maps a whole leaf (LEAF_ENTRIES pages, 2 MiB of 4 KiB pages)
 * whose frames are consecutive in segment 0, as a space filled in order gets them. The span
 * TLB has one slot per leaf of the space, at most 2^SPAN_TLB_BITS_MAX (8 GiB of 4 KiB pages).
 */
const SPAN_TLB_BITS_MAX = 12;
/** Whole-page views kept for bulk reads, keyed by frame number (direct-mapped). */
const VIEW_CACHE_ENTRIES = 256;
const VIEW_CACHE_MASK = VIEW_CACHE_ENTRIES - 1;

/** Largest virtual size a space may have: 4 PiB (2^52 bytes). */
export const SPACE_BYTES_MAX = 2 ** 52;

/** `extents()` flags, chosen to match NBD's base:allocation bits. */
export const EXTENT_HOLE = 1;
export const EXTENT_ZERO = 2;

/** readAsync loads and copies this much at a time, so a range may exceed a pager's budget. */
const ASYNC_CHUNK_BYTES = 1024 * 1024;

/** Epoch start times kept for the merger's millisecond quiet interval (a ring). */
const EPOCH_TIMES = 64;

let nextChainId = 1;

export interface AddressSpaceOptions {
  /** Virtual size in bytes or a size string ("256TiB"). */
  size: number | string;
  /** Trust domain: the merger shares pages only within a domain unless told otherwise. */
  domain?: string;
}

/**
 * A hook on the write path, set by whoever must see writes as they happen (a live migration:
 * src/migrate). The resident fast path never calls it: a page's first write in an epoch
 * always takes the slow path (advanceEpoch drops writable translations), so the hook sees
 * every page as it becomes dirty, which is what pacing a migration needs, at no cost to the
 * writes that follow in the same epoch. To see every write from some instant on (say, to refuse
 * them all), set the gate and call advanceEpoch() or flushTranslations() in the same
 * synchronous step.
 */
export interface WriteGate {
  /**
   * Called once at the start of a bulk write, zeroing or trim (and of sharePage), before any
   * byte changes. Throw to refuse the whole call (it then changed nothing).
   */
  admit(space: AddressSpace): void;
  /**
   * Called before `page` is made writable (its first write in the current epoch, or after its
   * translation was dropped), and once per run of whole pages zeroed or trimmed. Nothing of
   * the page has changed yet. May throw (a scalar write is then refused whole) or park the
   * caller briefly (to slow a writer that dirties pages faster than a migration sends them).
   */
  dirtied(space: AddressSpace, page: number): void;
}

/** Called by the merger registry so forks of a registered space are registered too. */
export interface SpaceRegistry {
  register(space: AddressSpace): void;
  unregister(space: AddressSpace): void;
}

export interface SpaceStats {
  size: number;
  epoch: number;
  /** Pages that hold data in a frame (private or shared). */
  dataPages: number;
  /** Pages mapped to the shared zero frame. */
  zeroPages: number;
  /** Data pages whose frame is shared with another page or space. */
  sharedPages: number;
  /** Pages whose bytes a pager moved out to its page store (not counted in dataPages). */
  swappedPages: number;
  /** Page-table leaves reachable from this space. */
  leaves: number;
  /** Bytes of this space's own interior page-table nodes. */
  tableBytes: number;
}

export class AddressSpace implements TranslationCache {
  declare readonly pool: FramePool;
  declare readonly pageSize: number;
  readonly domain: string;
  /** Spaces forked from a common ancestor share a chain id (used by swap dedup). */
  readonly chain: number;
  /** Virtual size in bytes; 0 once destroyed (so every range check fails fast). */
  size: number;
  /** The current epoch: writes record it; advanceEpoch() starts a new one. */
  epoch = 1;
  /** The merger that scans this space, if any (forks inherit it). */
  registry: SpaceRegistry | undefined;
  /** The write-path hook, if any (see WriteGate). Forks do not inherit it. */
  writeGate: WriteGate | undefined;

  private destroyed = false;
  private readonly pageCount: number;
  private readonly levels: number;
  /** Multipliers that turn a page number into each level's slot (exact: powers of two). */
  private readonly levelScale: Float64Array;
  private nodes: Int32Array;
  private nodeCount = 1;

  declare private readonly invPageSize: number;
  /**
   * The TLB: direct-mapped, slot `page & tlbMask`, in parallel typed arrays. Invariants:
   *   tlbPage[s] == -1, or slot s translates page tlbPage[s] to frame tlbFrame[s] (ZERO_FRAME
   *     for a hole), which is what the page table says now;
   *   tlbWritable[s] == 1 only while that frame is private to this space, not merged, and
   *     the page's epoch is the current one (a write may go straight to the frame);
   *   every slot that holds a translation was logged in fillLog since the last flush (or
   *     fillCount > TLB_LOG_ENTRIES), and every writable one in writeLog since the last
   *     flush or dropWritable (or writeCount > TLB_LOG_ENTRIES).
   */
  private tlbBits = TLB_BITS_MIN;
  private tlbMask = (1 << TLB_BITS_MIN) - 1;
  /** The most the TLB may grow to: enough slots for every page, capped at TLB_BITS_MAX. */
  private readonly tlbBitsMax: number;
  /** Scalar misses that displaced another page's translation since the TLB last grew. */
  private tlbConflicts = 0;
  private tlbPage = new Float64Array(0);
  private tlbFrame = new Int32Array(0);
  private tlbWritable = new Uint8Array(0);
  /**
   * The scalar fast path's view of the TLB: two numbers per slot, at `2 * slot`, in tlbRead
   * for reads and tlbWrite for writes:
   *   [0] base, the byte address where the slot's page starts (NaN when the slot is empty,
   *       not armed by a scalar miss, its page is the partial last one or its frame lies
   *       outside segment 0: see armScalar; in tlbWrite, also NaN unless the slot is writable);
   *   [1] delta, the page's byte offset in segment 0 minus base: `addr + delta` is the byte.
   * A pair lies in one cache line, so a lookup in a TLB too large for the CPU's caches costs
   * one miss, not the two of separate base and delta arrays; delta is kept twice so that reads
   * touch tlbRead only and writes tlbWrite only.
   * One subtraction checks tag and bounds together: `addr - base` must be a whole number from
   * 0 to pageSize - width (`x >>> 0 === x` rejects negative, fractional and NaN at once).
   */
  private tlbRead = new Float64Array(0);
  private tlbWrite = new Float64Array(0);
  /**
   * The DataView of segment 0, the only segment the scalar fast path reads and writes: a slot
   * or span is armed only when its frames lie there. One view in a field, rather than one per
   * slot in an array, lets V8 know its map and skip the per-access checks an array element
   * needs (a model of the span path, 0.44x -> 0.6x of a bare DataView on random reads over
   * 1 GiB). Fields the fast path reads are `declare`d and set once in the constructor: a
   * field that starts as undefined (as an ES2022 class field does) can lose V8's exact type.
   * A pool whose maxCapacity is up to SEGMENT_BYTES_MAX has no other segment, grown or not (see
   * FramePool); in a larger pool, the pages in later segments take locate() on every scalar
   * access.
   */
  declare private readonly fastView: DataView;
  /**
   * The span TLB (scalar reads only), direct-mapped by leaf, two numbers per slot at
   * `2 * slot`: the byte address where the span starts (NaN when empty), and the segment byte
   * offset minus that address (frames in segment 0 only: see fastView). Invariant: a filled
   * slot's spanPages pages map, right now, to the consecutive frames it names; anything that
   * changes one of them drops it (flushTranslations, invalidatePage, translateForWrite).
   * spanChecked remembers a leaf found not to be one run, so its misses do not rescan it until
   * the next flush. A space smaller than one leaf keeps its one span in soloEnd and soloDelta
   * instead, and never fills this table.
   */
  declare private readonly spanMask: number;
  /**
   * Pages a span maps: LEAF_ENTRIES, except in a space smaller than one leaf, where the one
   * span covers the space's whole pages (a partial last page is left to the page TLB, so the
   * span's bounds check is also the space's). Without it a small space, which has no whole
   * leaf, would never get a span and every read would first miss in the span slot.
   */
  declare private readonly spanPages: number;
  declare private readonly spanBytes: number;
  /** 1 / (bytes per leaf): the span slot of an address is its leaf number & spanMask. */
  declare private readonly invSpanBytes: number;
  declare private readonly spans: Float64Array;
  declare private readonly spanChecked: Float64Array;
  /** The space is smaller than one leaf: its one span lives in soloEnd and soloDelta. */
  declare private readonly solo: boolean;
  /**
   * The span of a space smaller than one leaf, in two fields: the first check every scalar
   * read makes, and the cheapest (two fields, no table, no tag: the span starts at address 0,
   * so `addr <= soloEnd - width` and `addr >>> 0 === addr` are the whole check). soloEnd is
   * spanBytes while the span is filled and 0 otherwise (always 0 in a larger space, whose
   * reads then fail the first compare); soloDelta is the segment byte offset of address 0.
   * Filled and dropped exactly where span slot 0 would be.
   */
  declare private soloEnd: number;
  declare private soloDelta: number;
  /** Span slots filled or checked since the last flush (a flush with none costs nothing). */
  private spanFills = 0;
  private readonly fillLog = new Int32Array(TLB_LOG_ENTRIES);
  private fillCount = 0;
  private readonly writeLog = new Int32Array(TLB_LOG_ENTRIES);
  private writeCount = 0;
  /**
   * Whole-page views by frame (so full-page reads allocate nothing). A view of a frame never
   * goes stale (segments never move), so this cache needs no invalidation.
   */
  private readonly viewCache: Uint8Array[] = [];
  private readonly viewFrame = new Int32Array(VIEW_CACHE_ENTRIES).fill(-1);
  /** Segment of the last `locate` hit (a second return value without allocating). */
  private hitSegment = 0;
  private readonly scratch = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private readonly epochTimes = new Float64Array(EPOCH_TIMES);

  constructor(pool: FramePool, options: AddressSpaceOptions, chain?: number) {
    const size = parseSize(options.size, 'size');
    if (size <= 0 || size > SPACE_BYTES_MAX) {
      throw invalidArgument(`size ${size} must be from 1 byte to 4 PiB (2^52 bytes)`);
    }
    this.pool = pool;
    this.pageSize = pool.pageSize;
    this.invPageSize = 1 / pool.pageSize;
    this.domain = options.domain ?? 'default';
    this.chain = chain ?? nextChainId++;
    this.size = size;
    this.pageCount = Math.ceil(size / this.pageSize);
    const pageBits = Math.max(LEAF_BITS + 1, Math.ceil(Math.log2(this.pageCount)));
    this.levels = Math.max(1, Math.ceil((pageBits - LEAF_BITS) / DIR_BITS));
    this.levelScale = new Float64Array(this.levels);
    for (let level = 0; level < this.levels; level++) {
      this.levelScale[level] = 2 ** -(LEAF_BITS + DIR_BITS * (this.levels - 1 - level));
    }
    this.nodes = new Int32Array(DIR_ENTRIES);
    this.epochTimes[this.epoch % EPOCH_TIMES] = performance.now();
    this.tlbBitsMax = Math.min(TLB_BITS_MAX, Math.max(TLB_BITS_MIN, Math.ceil(Math.log2(this.pageCount))));
    this.resizeTlb(TLB_BITS_MIN);
    const spanSlots =
      2 ** Math.min(SPAN_TLB_BITS_MAX, Math.max(0, Math.ceil(Math.log2(this.pageCount / LEAF_ENTRIES))));
    // `| 0`: an integer field (a `**` result is a double, and V8 would keep the mask boxed).
    this.spanMask = (spanSlots - 1) | 0;
    this.spanPages = this.pageCount <= LEAF_ENTRIES ? Math.floor(size / this.pageSize) : LEAF_ENTRIES;
    this.spanBytes = this.spanPages * this.pageSize;
    this.invSpanBytes = 1 / (LEAF_ENTRIES * this.pageSize);
    this.spans = new Float64Array(2 * spanSlots).fill(Number.NaN);
    this.spanChecked = new Float64Array(spanSlots).fill(-1);
    this.solo = this.pageCount <= LEAF_ENTRIES;
    this.soloEnd = 0;
    this.soloDelta = 0;
    this.fastView = pool.views[0]!;
    const emptyView = pool.segments[0]!.subarray(0, 0);
    for (let i = 0; i < VIEW_CACHE_ENTRIES; i++) this.viewCache.push(emptyView);
    pool.addTranslationCache(this);
  }

  /** True once destroy() ran. */
  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /** Number of pages (the last one may be partial when size is not page-aligned). */
  get pages(): number {
    return this.pageCount;
  }

  // ---------------------------------------------------------------------------------------
  // Bulk access

  /** Copies `dst.length` bytes from `offset` into `dst`. Unwritten bytes read as zeros. */
  read(offset: number, dst: Uint8Array): void {
    this.readInto(offset, dst.length, dst, 0);
  }

  /**
   * Copies `length` bytes from `offset` into `dst` at `dstOffset` (which must have room), like
   * read: callers that build a reply in a larger buffer need no view of it per call.
   */
  readInto(offset: number, length: number, dst: Uint8Array, dstOffset: number): void {
    this.checkRange(offset, length);
    if (dstOffset < 0 || dstOffset + length > dst.length) {
      throw invalidArgument(`no room for ${length} bytes at ${dstOffset} in a ${dst.length}-byte buffer`);
    }
    const pageSize = this.pageSize;
    let done = 0;
    while (done < length) {
      const addr = offset + done;
      const page = Math.floor(addr * this.invPageSize);
      const inPage = addr - page * pageSize;
      const n = Math.min(pageSize - inPage, length - done);
      const slot = page & this.tlbMask;
      if (this.tlbPage[slot] !== page) this.translateForRead(page);
      if (n === pageSize) {
        dst.set(this.pageView(this.tlbFrame[slot]!), dstOffset + done);
      } else {
        const frame = this.tlbFrame[slot]!;
        const start = this.pool.frameOffset(frame) + inPage;
        this.pool.frameSegment(frame).copy(dst, dstOffset + done, start, start + n);
      }
      done += n;
    }
  }

  /** Writes `src` at `offset`, copying shared frames first. Throws POOL_EXHAUSTED having changed nothing. */
  write(offset: number, src: Uint8Array): void {
    const length = src.length;
    this.checkRange(offset, length);
    if (length === 0) return;
    const pageSize = this.pageSize;
    const first = Math.floor(offset * this.invPageSize);
    const last = Math.floor((offset + length - 1) * this.invPageSize);
    if (this.writeGate !== undefined) this.writeGate.admit(this);
    this.reserveForWrite(first, last);
    let done = 0;
    while (done < length) {
      const addr = offset + done;
      const page = Math.floor(addr * this.invPageSize);
      const inPage = addr - page * pageSize;
      const n = Math.min(pageSize - inPage, length - done);
      const slot = page & this.tlbMask;
      if (this.tlbPage[slot] !== page || this.tlbWritable[slot] === 0)
        this.translateForWrite(page, n === pageSize);
      const frame = this.tlbFrame[slot]!;
      const segment = this.pool.frameSegment(frame);
      const at = this.pool.frameOffset(frame) + inPage;
      if (n === length) segment.set(src, at);
      else segment.set(src.subarray(done, done + n), at);
      done += n;
    }
  }

  /**
   * Makes sure a write of `[offset, offset + length)` that will arrive in pieces can find its
   * frames: throws POOL_EXHAUSTED (growing the pool, or with a pager making room, when it can)
   * before any of it is written, rather than part-way. Nothing is held for it, so frames taken
   * meanwhile by other writes can still make a later piece fail.
   */
  reserveWrite(offset: number, length: number): void {
    this.checkRange(offset, length);
    if (length === 0) return;
    const first = Math.floor(offset * this.invPageSize);
    this.reserveForWrite(first, Math.floor((offset + length - 1) * this.invPageSize));
  }

  /**
   * Brings `[offset, offset + length)` into memory without blocking the event loop, so the
   * reads and writes that follow take no fault. Without a pager (see src/tier) every page is
   * already resident and this resolves at once. Loading is a hint: pages may be evicted again
   * before they are used (reads then fault synchronously), and a range larger than the pager's
   * budget cannot stay resident at once: use readAsync for that.
   */
  async load(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    const paging = this.pool.paging;
    if (!paging || length === 0) return;
    const first = Math.floor(offset * this.invPageSize);
    const last = Math.floor((offset + length - 1) * this.invPageSize);
    await paging.load(this, first, last);
  }

  /** Like read(), but pages out in a page store are fetched without blocking the event loop. */
  async readAsync(offset: number, dst: Uint8Array): Promise<void> {
    this.checkRange(offset, dst.length);
    if (!this.pool.paging) return this.read(offset, dst);
    for (let done = 0; done < dst.length; done += ASYNC_CHUNK_BYTES) {
      const n = Math.min(ASYNC_CHUNK_BYTES, dst.length - done);
      await this.load(offset + done, n);
      this.read(offset + done, dst.subarray(done, done + n));
    }
  }

  /**
   * Like write(), but a partly overwritten page that is out in a page store is fetched without
   * blocking the event loop (wholly overwritten pages need no fetch at all). With a pager, a
   * range larger than its budget is written in pieces that fit (so a failure part-way leaves
   * the earlier pieces written); without one, the write is all or nothing like write().
   */
  async writeAsync(offset: number, src: Uint8Array): Promise<void> {
    this.checkRange(offset, src.length);
    if (!this.pool.paging || src.length === 0) return this.write(offset, src);
    const piece = Math.max(
      this.pageSize,
      Math.min(ASYNC_CHUNK_BYTES, Math.floor(this.pool.capacity / 4) * this.pageSize),
    );
    for (let done = 0; done < src.length;) {
      const at = offset + done;
      // Pieces end on page boundaries, so only the range's own ends can be partial pages.
      const n = Math.min(src.length - done, piece - (at % this.pageSize));
      const end = at + n;
      if (at % this.pageSize !== 0) await this.load(at, 1);
      if (end % this.pageSize !== 0) await this.load(end - 1, 1);
      this.write(at, src.subarray(done, done + n));
      done += n;
    }
  }

  /**
   * Discards `[offset, offset + length)`: whole pages become holes and give back their frames;
   * partial pages at either end are zeroed. Later reads return zeros.
   */
  trim(offset: number, length: number): void {
    this.zeroRange(offset, length, NO_FRAME);
  }

  /**
   * Makes a range read as zeros. Whole pages map to the shared zero frame (still "allocated",
   * as NBD's NO_HOLE asks), or become holes when `punchHole` is set.
   */
  writeZeroes(offset: number, length: number, punchHole = false): void {
    this.zeroRange(offset, length, punchHole ? NO_FRAME : ZERO_FRAME);
  }

  // ---------------------------------------------------------------------------------------
  // Scalar access (little-endian). A value that crosses a page boundary takes a slower path.
  // The twenty accessors are spelled out on purpose: each calls one DataView method, so each
  // call site stays monomorphic and V8 can inline the fast path into the caller; a generic
  // accessor taking the DataView method as a parameter would make that call megamorphic.

  readU8(addr: number): number {
    if (addr <= this.soloEnd - 1 && addr >>> 0 === addr) return this.fastView.getUint8(addr + this.soloDelta);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 1) {
      return this.fastView.getUint8(addr + spans[span + 1]!);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 1) {
      return this.fastView.getUint8(addr + tlb[slot + 1]!);
    }
    const at = this.locate(addr, 1, false);
    return at >= 0 ? this.pool.views[this.hitSegment]!.getUint8(at) : this.readSplit(addr, 1).getUint8(0);
  }

  readI8(addr: number): number {
    if (addr <= this.soloEnd - 1 && addr >>> 0 === addr) return this.fastView.getInt8(addr + this.soloDelta);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 1) {
      return this.fastView.getInt8(addr + spans[span + 1]!);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 1) {
      return this.fastView.getInt8(addr + tlb[slot + 1]!);
    }
    const at = this.locate(addr, 1, false);
    return at >= 0 ? this.pool.views[this.hitSegment]!.getInt8(at) : this.readSplit(addr, 1).getInt8(0);
  }

  readU16(addr: number): number {
    if (addr <= this.soloEnd - 2 && addr >>> 0 === addr)
      return this.fastView.getUint16(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 2) {
      return this.fastView.getUint16(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 2) {
      return this.fastView.getUint16(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 2, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getUint16(at, true)
      : this.readSplit(addr, 2).getUint16(0, true);
  }

  readI16(addr: number): number {
    if (addr <= this.soloEnd - 2 && addr >>> 0 === addr)
      return this.fastView.getInt16(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 2) {
      return this.fastView.getInt16(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 2) {
      return this.fastView.getInt16(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 2, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getInt16(at, true)
      : this.readSplit(addr, 2).getInt16(0, true);
  }

  readU32(addr: number): number {
    if (addr <= this.soloEnd - 4 && addr >>> 0 === addr)
      return this.fastView.getUint32(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 4) {
      return this.fastView.getUint32(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 4) {
      return this.fastView.getUint32(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 4, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getUint32(at, true)
      : this.readSplit(addr, 4).getUint32(0, true);
  }

  readI32(addr: number): number {
    if (addr <= this.soloEnd - 4 && addr >>> 0 === addr)
      return this.fastView.getInt32(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 4) {
      return this.fastView.getInt32(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 4) {
      return this.fastView.getInt32(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 4, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getInt32(at, true)
      : this.readSplit(addr, 4).getInt32(0, true);
  }

  readF32(addr: number): number {
    if (addr <= this.soloEnd - 4 && addr >>> 0 === addr)
      return this.fastView.getFloat32(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 4) {
      return this.fastView.getFloat32(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 4) {
      return this.fastView.getFloat32(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 4, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getFloat32(at, true)
      : this.readSplit(addr, 4).getFloat32(0, true);
  }

  readF64(addr: number): number {
    if (addr <= this.soloEnd - 8 && addr >>> 0 === addr)
      return this.fastView.getFloat64(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 8) {
      return this.fastView.getFloat64(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 8) {
      return this.fastView.getFloat64(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 8, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getFloat64(at, true)
      : this.readSplit(addr, 8).getFloat64(0, true);
  }

  readU64(addr: number): bigint {
    if (addr <= this.soloEnd - 8 && addr >>> 0 === addr)
      return this.fastView.getBigUint64(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 8) {
      return this.fastView.getBigUint64(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 8) {
      return this.fastView.getBigUint64(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 8, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getBigUint64(at, true)
      : this.readSplit(addr, 8).getBigUint64(0, true);
  }

  readI64(addr: number): bigint {
    if (addr <= this.soloEnd - 8 && addr >>> 0 === addr)
      return this.fastView.getBigInt64(addr + this.soloDelta, true);
    const spans = this.spans;
    const span = ((addr * this.invSpanBytes) & this.spanMask) << 1;
    const inSpan = addr - spans[span]!;
    if (inSpan >>> 0 === inSpan && inSpan <= this.spanBytes - 8) {
      return this.fastView.getBigInt64(addr + spans[span + 1]!, true);
    }
    const tlb = this.tlbRead;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 8) {
      return this.fastView.getBigInt64(addr + tlb[slot + 1]!, true);
    }
    const at = this.locate(addr, 8, false);
    return at >= 0
      ? this.pool.views[this.hitSegment]!.getBigInt64(at, true)
      : this.readSplit(addr, 8).getBigInt64(0, true);
  }

  writeU8(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 1) {
      this.fastView.setUint8(addr + tlb[slot + 1]!, value);
      return;
    }
    const at = this.locate(addr, 1, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setUint8(at, value);
    else this.writeSplit(addr, 1, this.scratchView.setUint8(0, value));
  }

  writeI8(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 1) {
      this.fastView.setInt8(addr + tlb[slot + 1]!, value);
      return;
    }
    const at = this.locate(addr, 1, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setInt8(at, value);
    else this.writeSplit(addr, 1, this.scratchView.setInt8(0, value));
  }

  writeU16(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 2) {
      this.fastView.setUint16(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 2, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setUint16(at, value, true);
    else this.writeSplit(addr, 2, this.scratchView.setUint16(0, value, true));
  }

  writeI16(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 2) {
      this.fastView.setInt16(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 2, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setInt16(at, value, true);
    else this.writeSplit(addr, 2, this.scratchView.setInt16(0, value, true));
  }

  writeU32(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 4) {
      this.fastView.setUint32(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 4, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setUint32(at, value, true);
    else this.writeSplit(addr, 4, this.scratchView.setUint32(0, value, true));
  }

  writeI32(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 4) {
      this.fastView.setInt32(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 4, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setInt32(at, value, true);
    else this.writeSplit(addr, 4, this.scratchView.setInt32(0, value, true));
  }

  writeF32(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 4) {
      this.fastView.setFloat32(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 4, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setFloat32(at, value, true);
    else this.writeSplit(addr, 4, this.scratchView.setFloat32(0, value, true));
  }

  writeF64(addr: number, value: number): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 8) {
      this.fastView.setFloat64(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 8, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setFloat64(at, value, true);
    else this.writeSplit(addr, 8, this.scratchView.setFloat64(0, value, true));
  }

  writeU64(addr: number, value: bigint): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 8) {
      this.fastView.setBigUint64(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 8, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setBigUint64(at, value, true);
    else this.writeSplit(addr, 8, this.scratchView.setBigUint64(0, value, true));
  }

  writeI64(addr: number, value: bigint): void {
    const tlb = this.tlbWrite;
    const slot = ((addr * this.invPageSize) & this.tlbMask) << 1;
    const inPage = addr - tlb[slot]!;
    if (inPage >>> 0 === inPage && inPage <= this.pageSize - 8) {
      this.fastView.setBigInt64(addr + tlb[slot + 1]!, value, true);
      return;
    }
    const at = this.locate(addr, 8, true);
    if (at >= 0) this.pool.views[this.hitSegment]!.setBigInt64(at, value, true);
    else this.writeSplit(addr, 8, this.scratchView.setBigInt64(0, value, true));
  }

  // ---------------------------------------------------------------------------------------
  // Zero-copy page access

  /**
   * A view of page `page`'s bytes, without copying. BORROWED: valid only until the next call
   * that can change this space or its pool (a write, trim, fork, merge pass, destroy); do not
   * keep it and do not write through it. An unwritten page returns the shared zero page.
   */
  borrowPageForRead(page: number): Uint8Array {
    this.checkPage(page);
    const slot = page & this.tlbMask;
    if (this.tlbPage[slot] !== page) this.translateForRead(page);
    return this.pageView(this.tlbFrame[slot]!);
  }

  /**
   * A writable view of page `page`, made private to this space first (copy-on-write) and
   * recorded as written in the current epoch. BORROWED, like borrowPageForRead: valid only
   * until the next call that can change this space or its pool.
   */
  borrowPageForWrite(page: number): Uint8Array {
    this.checkPage(page);
    this.reserveForWrite(page, page);
    const slot = page & this.tlbMask;
    if (this.tlbPage[slot] !== page || this.tlbWritable[slot] === 0) this.translateForWrite(page, false);
    return this.pageView(this.tlbFrame[slot]!);
  }

  /**
   * Maps `page` to the frame that backs `sourcePage` of `source`, copy-on-write: the frame gains
   * a reference, and a later write to either page copies it first. The two spaces must share
   * this pool and trust domain (sharing across domains is a side channel), and the source page
   * must hold a resident frame. Needs no free frame, so it works in a full pool; records the
   * current epoch like a write. Loaders use it to keep identical pages in one frame as they
   * read them (the merger's result, without first needing a frame per page).
   */
  sharePage(page: number, source: AddressSpace, sourcePage: number): void {
    this.checkPage(page);
    source.checkPage(sourcePage);
    if (source.pool !== this.pool) throw invalidArgument('the source space belongs to another frame pool');
    if (source.domain !== this.domain) {
      throw invalidArgument(
        `pages are shared only within a trust domain; the source is in "${source.domain}", this space in "${this.domain}"`,
      );
    }
    const pool = this.pool;
    const frame = source.frameAt(sourcePage);
    if (frame < FIRST_FRAME) {
      throw invalidArgument(`page ${sourcePage} of the source space holds no resident frame to share`);
    }
    if (source === this && sourcePage === page) return;
    if (this.writeGate !== undefined) {
      this.writeGate.admit(this);
      this.writeGate.dirtied(this, page);
    }
    const leaf = this.ownLeaf(this.leafSlotIndex(page, true));
    const entry = leaf * LEAF_ENTRIES + (page & LEAF_MASK);
    const old = pool.leaves.entries[entry]!;
    // Retain before releasing: the old entry may be this very frame.
    pool.refcount[frame]!++;
    if (old !== NO_FRAME) pool.release(old);
    pool.leaves.map(entry, frame);
    this.markWritten(leaf, entry);
    // The frame is shared now: neither side may keep a translation that writes it in place.
    this.invalidatePage(page);
    source.invalidatePage(sourcePage);
  }

  /**
   * @internal For loaders (the heap's open): maps pages `first + i`, never written in this
   * space, to `entries[i]` — a swapped entry naming a store slot (see paging.ts), ZERO_FRAME, or
   * NO_FRAME to leave the page a hole — without marking them written: their epochs stay 0, so
   * they are not dirty. The caller has already taken the references the entries hold (on their
   * slots). One page-table walk per leaf, so a million pages map in milliseconds.
   */
  installStored(first: number, entries: Int32Array): void {
    if (entries.length === 0) return;
    this.checkPage(first);
    this.checkPage(first + entries.length - 1);
    const arena = this.pool.leaves;
    let zeros = 0;
    for (let i = 0; i < entries.length;) {
      const page = first + i;
      const run = Math.min(entries.length - i, LEAF_ENTRIES - (page & LEAF_MASK));
      let any = false;
      for (let k = 0; k < run; k++) {
        if (entries[i + k] !== NO_FRAME) {
          any = true;
          break;
        }
      }
      if (any) {
        const base = this.ownLeaf(this.leafSlotIndex(page, true)) * LEAF_ENTRIES + (page & LEAF_MASK);
        for (let k = 0; k < run; k++) {
          const entry = entries[i + k]!;
          if (entry === NO_FRAME) continue;
          if (!(entry < 0 || entry === ZERO_FRAME)) {
            throw invalidArgument(`installStored takes swapped entries or the zero frame, not ${entry}`);
          }
          if (arena.entries[base + k] !== NO_FRAME) {
            throw invalidArgument(`page ${page + k} is already mapped; installStored maps only holes`);
          }
          arena.entries[base + k] = entry;
          if (entry === ZERO_FRAME) zeros++;
        }
      }
      i += run;
    }
    this.pool.zeroEntries += zeros;
    this.flushTranslations();
  }

  // ---------------------------------------------------------------------------------------
  // Fork, epochs, extents, destroy

  /**
   * A copy-on-write child holding the same bytes. Costs O(page-table leaves): no page is
   * copied until parent or child writes it. Forks of a space the merger scans are scanned too.
   */
  fork(options: { domain?: string } = {}): AddressSpace {
    this.assertLive();
    const child = new AddressSpace(
      this.pool,
      { size: this.size, domain: options.domain ?? this.domain },
      this.chain,
    );
    child.nodes = this.nodes.slice(0, Math.max(this.nodes.length, DIR_ENTRIES));
    child.nodeCount = this.nodeCount;
    child.epoch = this.epoch;
    const refs = this.pool.leaves.refs;
    this.forEachLeaf((leaf) => {
      refs[leaf]!++;
    });
    // Every frame is now shared with the child: the parent's cached writable translations are stale.
    this.flushTranslations();
    this.registry?.register(child);
    return child;
  }

  /** Starts a new epoch and returns its number: writes from now on are "written since" it. */
  advanceEpoch(): number {
    this.assertLive();
    this.epoch++;
    this.epochTimes[this.epoch % EPOCH_TIMES] = performance.now();
    this.dropWritable();
    return this.epoch;
  }

  /**
   * Raises the epoch to at least `epoch` (a new epoch begins unless it already is that high).
   * For a space that continues another one (a live migration's destination): dirty-epoch
   * numbers the program took on the source stay meaningful here, since every page written
   * here from now on records an epoch at or above the source's.
   */
  continueEpoch(epoch: number): number {
    this.assertLive();
    if (!Number.isSafeInteger(epoch) || epoch < 1) {
      throw invalidArgument(`epoch ${epoch} must be a whole number from 1`);
    }
    if (epoch > this.epoch) {
      this.epoch = epoch - 1;
      this.advanceEpoch();
    }
    return this.epoch;
  }

  /** Calls `visit(page)` in ascending order for every page written or trimmed at epoch >= `since`. */
  forEachDirtyPage(since: number, visit: (page: number) => void): void {
    this.assertLive();
    // Epoch 0 marks slots never written: they are never dirty, whatever `since` is.
    const from = Math.max(1, since);
    const arena = this.pool.leaves;
    this.forEachLeaf((leaf, firstPage) => {
      if (arena.maxEpoch[leaf]! < from) return;
      const base = leaf * LEAF_ENTRIES;
      const epochs = arena.epochs;
      const count = Math.min(LEAF_ENTRIES, this.pageCount - firstPage);
      for (let i = 0; i < count; i++) {
        if (epochs[base + i]! >= from) visit(firstPage + i);
      }
    });
  }

  /** Pages written or trimmed at epoch >= `since`, ascending. Cost O(leaves + dirty pages). */
  dirtyPages(since: number): Float64Array {
    const pages: number[] = [];
    this.forEachDirtyPage(since, (page) => pages.push(page));
    return Float64Array.from(pages);
  }

  /** Epoch in which `page` was last written or trimmed (0 = never). */
  pageEpoch(page: number): number {
    this.checkPage(page);
    const leaf = this.leafOf(page);
    return leaf === 0 ? 0 : this.pool.leaves.epochs[leaf * LEAF_ENTRIES + (page & LEAF_MASK)]!;
  }

  /**
   * Describes `[offset, offset + length)` as maximal runs of pages in the same state, calling
   * `emit(length, flags)` in order (flags: EXTENT_HOLE | EXTENT_ZERO for holes, EXTENT_ZERO for
   * zero pages, 0 for data). Stops after `maxExtents`; returns the number emitted.
   */
  extents(
    offset: number,
    length: number,
    emit: (length: number, flags: number) => void,
    maxExtents = Number.MAX_SAFE_INTEGER,
  ): number {
    this.checkRange(offset, length);
    if (length === 0) return 0;
    const arena = this.pool.leaves;
    const end = offset + length;
    let emitted = 0;
    let runStart = offset;
    let runFlags = -1;
    let page = Math.floor(offset * this.invPageSize);
    let addr = offset;
    while (addr < end && emitted < maxExtents) {
      const leaf = this.leafOf(page);
      let flags: number;
      let pagesInRun: number;
      if (leaf === 0) {
        flags = EXTENT_HOLE | EXTENT_ZERO;
        pagesInRun = LEAF_ENTRIES - (page & LEAF_MASK);
      } else {
        const frame = arena.entries[leaf * LEAF_ENTRIES + (page & LEAF_MASK)]!;
        flags = frame === NO_FRAME ? EXTENT_HOLE | EXTENT_ZERO : frame === ZERO_FRAME ? EXTENT_ZERO : 0;
        pagesInRun = 1;
      }
      if (flags !== runFlags) {
        if (runFlags !== -1) {
          emit(addr - runStart, runFlags);
          emitted++;
        }
        runStart = addr;
        runFlags = flags;
      }
      page += pagesInRun;
      addr = Math.min(end, page * this.pageSize);
    }
    if (emitted < maxExtents && runFlags !== -1) {
      emit(Math.min(addr, end) - runStart, runFlags);
      emitted++;
    }
    return emitted;
  }

  /** Counts of this space's pages by state. O(leaves). */
  stats(): SpaceStats {
    this.assertLive();
    const arena = this.pool.leaves;
    const refcount = this.pool.refcount;
    let dataPages = 0;
    let zeroPages = 0;
    let sharedPages = 0;
    let swappedPages = 0;
    let leaves = 0;
    this.forEachLeaf((leaf) => {
      leaves++;
      const shared = arena.refs[leaf]! > 1;
      const base = leaf * LEAF_ENTRIES;
      for (let i = 0; i < LEAF_ENTRIES; i++) {
        const frame = arena.entries[base + i]!;
        if (frame === ZERO_FRAME) zeroPages++;
        else if (frame < 0) swappedPages++;
        else if (frame >= FIRST_FRAME) {
          dataPages++;
          if (shared || refcount[frame]! > 1) sharedPages++;
        }
      }
    });
    return {
      size: this.size,
      epoch: this.epoch,
      dataPages,
      zeroPages,
      sharedPages,
      swappedPages,
      leaves,
      tableBytes: this.nodeCount * DIR_ENTRIES * 4,
    };
  }

  /** Returns every frame this space alone held. Further use throws DESTROYED. Idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.forEachLeaf((leaf) => this.releaseLeaf(leaf));
    this.destroyed = true;
    this.size = 0;
    this.nodes = new Int32Array(0);
    this.nodeCount = 0;
    this.flushTranslations();
    this.pool.removeTranslationCache(this);
    this.registry?.unregister(this);
  }

  /** Drops every cached translation (TranslationCache). */
  flushTranslations(): void {
    if (this.spanFills > 0) {
      this.spans.fill(Number.NaN);
      this.spanChecked.fill(-1);
      this.soloEnd = 0;
      this.spanFills = 0;
    }
    if (this.fillCount > TLB_LOG_ENTRIES) {
      this.tlbPage.fill(-1);
      this.tlbWritable.fill(0);
      this.tlbRead.fill(Number.NaN);
      this.tlbWrite.fill(Number.NaN);
    } else {
      // Every writable slot was filled since the last flush, so it is in this log too.
      for (let i = 0; i < this.fillCount; i++) this.clearSlot(this.fillLog[i]!);
    }
    this.fillCount = 0;
    this.writeCount = 0;
  }

  // ---------------------------------------------------------------------------------------
  // Internal: used by the merger and other mechanisms of src/memory.

  /** @internal Calls `visit(leaf, firstPage, slotIndex)` for every leaf, in page order. */
  forEachLeaf(visit: (leaf: number, firstPage: number, slotIndex: number) => void): void {
    if (this.destroyed) return;
    this.walk(0, 0, 0, visit);
  }

  // --- Leaf seek (the merger's cursor) ------------------------------------------------------

  /**
   * @internal First page of the leaf that maps `from`, or else of the next leaf after it, in
   * page order; -1 when no leaf lies at or after `from`. Empty interior slots are skipped a whole
   * subtree at a time, so on a huge sparse space the cost is O(levels + empty slots passed)
   * rather than O(pages). Allocates nothing and keeps no state: a caller that holds a page
   * number as its cursor sees the table as it is now, however it changed in between.
   */
  nextLeafPage(from: number): number {
    if (this.destroyed || !(from < this.pageCount)) return -1;
    return this.seekLeaf(0, 0, 0, Math.max(0, from));
  }

  /** nextLeafPage below `node` (at `level`, mapping pages from `nodeFirstPage`). */
  private seekLeaf(node: number, level: number, nodeFirstPage: number, from: number): number {
    const scale = this.levelScale[level]!;
    const pagesPerSlot = 1 / scale;
    const last = level === this.levels - 1;
    const base = node * DIR_ENTRIES;
    // Slots wholly before `from` are passed over; only the first slot searched may start before it.
    let i = from > nodeFirstPage ? Math.floor((from - nodeFirstPage) * scale) : 0;
    for (; i < DIR_ENTRIES; i++) {
      const child = this.nodes[base + i]!;
      if (child === 0) continue;
      const page = nodeFirstPage + i * pagesPerSlot;
      if (last) return page;
      const found = this.seekLeaf(child, level + 1, page, from);
      if (found >= 0) return found;
    }
    return -1;
  }

  // --- end of leaf seek --------------------------------------------------------------------

  /** @internal Time (performance.now()) at which epoch `epoch` began, if still remembered. */
  epochStartTime(epoch: number): number | undefined {
    if (epoch > this.epoch || this.epoch - epoch >= EPOCH_TIMES) return undefined;
    return this.epochTimes[epoch % EPOCH_TIMES];
  }

  /** @internal The leaf that maps `page` now, or 0. */
  leafAt(page: number): number {
    return this.leafOf(page);
  }

  /** @internal Index in the leaf arena of `page`'s entry, or -1 when no leaf maps it. */
  entryIndexAt(page: number): number {
    const leaf = this.leafOf(page);
    return leaf === 0 ? -1 : leaf * LEAF_ENTRIES + (page & LEAF_MASK);
  }

  /** @internal The leaf entry of `page`: a frame, NO_FRAME, ZERO_FRAME or a swapped entry (< 0). */
  frameAt(page: number): number {
    const leaf = this.leafOf(page);
    return leaf === 0 ? NO_FRAME : this.pool.leaves.entries[leaf * LEAF_ENTRIES + (page & LEAF_MASK)]!;
  }

  // ---------------------------------------------------------------------------------------
  // Private machinery

  private walk(
    node: number,
    level: number,
    firstPage: number,
    visit: (leaf: number, firstPage: number, slotIndex: number) => void,
  ): void {
    const base = node * DIR_ENTRIES;
    const pagesPerSlot = 1 / this.levelScale[level]!;
    const last = level === this.levels - 1;
    for (let i = 0; i < DIR_ENTRIES; i++) {
      const child = this.nodes[base + i]!;
      if (child === 0) continue;
      const page = firstPage + i * pagesPerSlot;
      if (last) visit(child, page, base + i);
      else this.walk(child, level + 1, page, visit);
    }
  }

  /** The leaf mapping `page`, or 0. */
  private leafOf(page: number): number {
    if (this.levels === 1) return this.nodes[page >>> LEAF_BITS]!;
    const slot = this.leafSlotIndex(page, false);
    return slot < 0 ? 0 : this.nodes[slot]!;
  }

  /** Index in `nodes` of the slot that holds page's leaf; -1 when absent and !create. */
  private leafSlotIndex(page: number, create: boolean): number {
    let node = 0;
    const lastLevel = this.levels - 1;
    for (let level = 0; level < lastLevel; level++) {
      const slot = node * DIR_ENTRIES + (Math.floor(page * this.levelScale[level]!) & DIR_MASK);
      let child = this.nodes[slot]!;
      if (child === 0) {
        if (!create) return -1;
        child = this.allocateNode();
        this.nodes[slot] = child;
      }
      node = child;
    }
    return node * DIR_ENTRIES + (Math.floor(page * this.levelScale[lastLevel]!) & DIR_MASK);
  }

  private allocateNode(): number {
    const node = this.nodeCount++;
    if (this.nodeCount * DIR_ENTRIES > this.nodes.length)
      this.nodes = grown(this.nodes, this.nodes.length * 2);
    return node;
  }

  /** A whole-page view of `frame`, reused while it stays in the view cache. */
  private pageView(frame: number): Uint8Array {
    const key = frame & VIEW_CACHE_MASK;
    if (this.viewFrame[key] !== frame) {
      this.viewCache[key] = this.pool.frameBytes(frame);
      this.viewFrame[key] = frame;
    }
    return this.viewCache[key]!;
  }

  /** Replaces the TLB with an empty one of 2^bits slots (every translation is dropped). */
  private resizeTlb(bits: number): void {
    const entries = 2 ** bits;
    this.tlbBits = bits;
    this.tlbMask = (entries - 1) | 0; // an integer field, as spanMask
    this.tlbConflicts = 0;
    this.tlbPage = new Float64Array(entries).fill(-1);
    this.tlbFrame = new Int32Array(entries);
    this.tlbWritable = new Uint8Array(entries);
    this.tlbRead = new Float64Array(2 * entries).fill(Number.NaN);
    this.tlbWrite = new Float64Array(2 * entries).fill(Number.NaN);
    this.fillCount = 0;
    this.writeCount = 0;
  }

  /**
   * Called when scalar misses have displaced as many translations as the TLB has slots since
   * it last grew: the working set does not fit, so the TLB grows (up to tlbBitsMax).
   */
  private growTlb(): void {
    if (this.tlbBits >= this.tlbBitsMax) {
      this.tlbConflicts = 0;
      return;
    }
    this.resizeTlb(Math.min(this.tlbBitsMax, this.tlbBits + TLB_GROWTH_BITS));
  }

  private fillTlb(slot: number, page: number, frame: number, writable: number): void {
    const pool = this.pool;
    if (this.fillCount < TLB_LOG_ENTRIES) this.fillLog[this.fillCount] = slot;
    if (this.fillCount <= TLB_LOG_ENTRIES) this.fillCount++;
    this.tlbPage[slot] = page;
    this.tlbFrame[slot] = frame;
    this.tlbWritable[slot] = writable;
    // Not armed for the scalar fast path yet: only a scalar miss arms it (armScalar), after
    // looking for a span first.
    const delta = pool.frameOffset(frame) - page * this.pageSize;
    const at = slot << 1;
    this.tlbRead[at] = Number.NaN;
    this.tlbRead[at + 1] = delta;
    this.tlbWrite[at] = Number.NaN;
    this.tlbWrite[at + 1] = delta;
    if (writable) {
      if (this.writeCount < TLB_LOG_ENTRIES) this.writeLog[this.writeCount] = slot;
      if (this.writeCount <= TLB_LOG_ENTRIES) this.writeCount++;
    }
  }

  /**
   * Lets the scalar fast path use TLB slot `slot` (filled): sets its base addresses, unless
   * its page is the partial last one (a value there must be bounds-checked against the size)
   * or its frame lies outside segment 0 (the fast path reads fastView only).
   */
  private armScalar(slot: number): void {
    const base = this.tlbPage[slot]! * this.pageSize;
    if (base + this.pageSize > this.size || this.tlbFrame[slot]! > this.pool.segmentMask) return;
    this.tlbRead[slot << 1] = base;
    if (this.tlbWritable[slot] !== 0) this.tlbWrite[slot << 1] = base;
  }

  /** Drops the cached translation of one page, if cached. */
  private invalidatePage(page: number): void {
    this.invalidateSpan(page);
    const slot = page & this.tlbMask;
    if (this.tlbPage[slot] !== page) return;
    this.clearSlot(slot);
  }

  /** Drops the span translation that covers `page`, if any. */
  private invalidateSpan(page: number): void {
    if (this.spanFills === 0) return;
    if (this.solo) {
      this.soloEnd = 0;
      return;
    }
    const first = page - (page & LEAF_MASK);
    const start = first * this.pageSize;
    const span = (start * this.invSpanBytes) & this.spanMask;
    if (this.spans[span << 1] === start) this.spans[span << 1] = Number.NaN;
  }

  private clearSlot(slot: number): void {
    this.tlbPage[slot] = -1;
    this.tlbWritable[slot] = 0;
    this.tlbRead[slot << 1] = Number.NaN;
    this.tlbWrite[slot << 1] = Number.NaN;
  }

  /** Cached translations stay valid for reads but may no longer be written through. */
  private dropWritable(): void {
    if (this.writeCount > TLB_LOG_ENTRIES) {
      this.tlbWritable.fill(0);
      for (let at = 0; at < this.tlbWrite.length; at += 2) this.tlbWrite[at] = Number.NaN;
    } else {
      for (let i = 0; i < this.writeCount; i++) {
        const slot = this.writeLog[i]!;
        this.tlbWritable[slot] = 0;
        this.tlbWrite[slot << 1] = Number.NaN;
      }
    }
    this.writeCount = 0;
  }

  private translateForRead(page: number): void {
    const leaf = this.leafOf(page);
    let frame = NO_FRAME;
    if (leaf !== 0) {
      const entry = leaf * LEAF_ENTRIES + (page & LEAF_MASK);
      const arena = this.pool.leaves;
      frame = arena.entries[entry]!;
      if (frame < 0) {
        frame = this.faultIn(page);
      } else if (this.pool.paging) {
        // Only a pager reads these: without one, skip the store (on a 1 GiB space the bit
        // array is another cache miss per translation).
        arena.accessed[entry] = 1;
        this.pool.translations++;
      }
    }
    this.fillTlb(page & this.tlbMask, page, frame === NO_FRAME ? ZERO_FRAME : frame, 0);
  }

  /**
   * Brings a swapped-out page back (a fault) and returns its frame. The frame is made free
   * first, which may evict other pages but never this one (it is not resident); the entry is
   * read again afterwards. The page keeps its epoch: faulting in is not a write. The frame
   * inherits the entry's slot reference as its "copy in the store", so evicting it again
   * before anyone writes it costs no I/O.
   */
  private faultIn(page: number): number {
    const pool = this.pool;
    if (pool.free === 0) pool.reserve(1);
    const arena = pool.leaves;
    const entry = this.leafOf(page) * LEAF_ENTRIES + (page & LEAF_MASK);
    const swapped = arena.entries[entry]!;
    const frame = pool.allocate();
    try {
      pool.paging!.fetch(this, page, -1 - swapped, frame);
    } catch (error) {
      pool.release(frame);
      throw error;
    }
    arena.map(entry, frame);
    pool.frameSlot[frame] = -swapped;
    arena.accessed[entry] = 1;
    return frame;
  }

  /**
   * Makes `page` writable by this space alone and records the current epoch. The caller has
   * reserved any frame this needs. `overwriteAll`: the caller will overwrite the whole page,
   * so a new frame need not be zeroed or copied.
   */
  private translateForWrite(page: number, overwriteAll: boolean): void {
    if (this.writeGate !== undefined) this.writeGate.dirtied(this, page);
    const pool = this.pool;
    // Make room before reading the entry (with a pager, allocating may evict pages), and only
    // when a frame is needed: overwriting a private page must work in a full pool.
    if (pool.free === 0 && this.needsFrame(page)) pool.reserve(1);
    const slotIndex = this.leafSlotIndex(page, true);
    const leaf = this.ownLeaf(slotIndex);
    const arena = pool.leaves;
    const entry = leaf * LEAF_ENTRIES + (page & LEAF_MASK);
    let frame = arena.entries[entry]!;
    if (frame < FIRST_FRAME) {
      const fresh = pool.allocate();
      if (frame < 0) {
        // Swapped out: fetch the old bytes unless every one of them is about to be replaced.
        if (!overwriteAll) {
          try {
            pool.paging!.fetch(this, page, -1 - frame, fresh);
          } catch (error) {
            pool.release(fresh);
            throw error;
          }
        }
        pool.release(frame);
      } else {
        if (!overwriteAll) pool.zeroFrame(fresh);
        if (frame === ZERO_FRAME) pool.zeroEntries--;
      }
      frame = fresh;
    } else if (pool.refcount[frame]! > 1) {
      const copy = pool.allocate();
      if (!overwriteAll) pool.copyFrame(frame, copy);
      pool.cowCopies++;
      if (pool.flags[frame]! & FRAME_MERGED) pool.mergedCowBreaks++;
      pool.release(frame);
      frame = copy;
    } else {
      pool.unmerge(frame);
      pool.forgetCopy(frame);
      pool.translations++;
    }
    // A span covering the page would go on reading the frame it had before.
    if (arena.entries[entry] !== frame) this.invalidateSpan(page);
    arena.map(entry, frame);
    if (pool.paging) arena.accessed[entry] = 1;
    this.markWritten(leaf, entry);
    this.fillTlb(page & this.tlbMask, page, frame, 1);
  }

  /** The leaf in `nodes[slotIndex]`, created or copied so this space alone holds it. */
  private ownLeaf(slotIndex: number): number {
    const arena = this.pool.leaves;
    const leaf = this.nodes[slotIndex]!;
    if (leaf === 0) {
      const fresh = arena.allocate(this.chain);
      this.nodes[slotIndex] = fresh;
      return fresh;
    }
    if (arena.refs[leaf] === 1) return leaf;
    // Shared with a fork: copy it. Every frame it maps gains a reference (the new slot).
    const copy = arena.allocate(this.chain);
    const from = leaf * LEAF_ENTRIES;
    const to = copy * LEAF_ENTRIES;
    arena.entries.copyWithin(to, from, from + LEAF_ENTRIES);
    arena.epochs.copyWithin(to, from, from + LEAF_ENTRIES);
    arena.maxEpoch[copy] = arena.maxEpoch[leaf]!;
    arena.occupancy[copy] = arena.occupancy[leaf]!;
    const pool = this.pool;
    for (let i = 0; i < LEAF_ENTRIES; i++) {
      const frame = arena.entries[to + i]!;
      if (frame >= FIRST_FRAME) pool.refcount[frame]!++;
      else if (frame !== NO_FRAME) pool.retainEntry(frame);
    }
    arena.refs[leaf]!--;
    this.nodes[slotIndex] = copy;
    // Cached translations still point at frames through the old leaf; they stay correct for
    // reads, but writable ones would now write shared frames.
    this.dropWritable();
    return copy;
  }

  private markWritten(leaf: number, entry: number): void {
    const arena = this.pool.leaves;
    arena.epochs[entry] = this.epoch;
    if (arena.maxEpoch[leaf]! < this.epoch) arena.maxEpoch[leaf] = this.epoch;
  }

  /** Drops this space's reference to a leaf; the last reference releases its frames. */
  private releaseLeaf(leaf: number): void {
    const arena = this.pool.leaves;
    if (--arena.refs[leaf]! > 0) return;
    const base = leaf * LEAF_ENTRIES;
    for (let i = 0; i < LEAF_ENTRIES; i++) {
      const frame = arena.entries[base + i]!;
      if (frame !== NO_FRAME) this.pool.release(frame);
    }
    arena.free(leaf);
  }

  /** Frames a write to pages [first, last] would need; reserves them (or throws, changing nothing). */
  private reserveForWrite(first: number, last: number): void {
    const pool = this.pool;
    if (pool.free > last - first) return;
    let needed = 0;
    for (let page = first; page <= last; page++) {
      if (this.needsFrame(page)) needed++;
    }
    pool.reserve(needed);
  }

  private needsFrame(page: number): boolean {
    const leaf = this.leafOf(page);
    if (leaf === 0) return true;
    const frame = this.pool.leaves.entries[leaf * LEAF_ENTRIES + (page & LEAF_MASK)]!;
    return frame < FIRST_FRAME || this.pool.refcount[frame]! > 1 || this.pool.leaves.refs[leaf]! > 1;
  }

  /** Whole pages in the range get `fill` (NO_FRAME or ZERO_FRAME); partial pages are zeroed. */
  private zeroRange(offset: number, length: number, fill: number): void {
    this.checkRange(offset, length);
    if (length === 0) return;
    if (this.writeGate !== undefined) this.writeGate.admit(this);
    const pageSize = this.pageSize;
    const end = offset + length;
    const firstWhole = Math.ceil(offset * this.invPageSize);
    const endWhole = Math.floor(end * this.invPageSize);
    const headEnd = Math.min(end, firstWhole * pageSize);
    const tailStart = Math.max(headEnd, endWhole * pageSize);
    // Partial pages need real frames unless they already read as zeros; reserve both first.
    const headPage = Math.floor(offset * this.invPageSize);
    const tailPage = Math.floor(tailStart * this.invPageSize);
    const headNeeds = offset < headEnd && holdsData(this.frameAt(headPage)) && this.needsFrame(headPage);
    // Head and tail are different pages whenever both exist (whole pages or a boundary lie between).
    const tailNeeds = tailStart < end && holdsData(this.frameAt(tailPage)) && this.needsFrame(tailPage);
    this.pool.reserve((headNeeds ? 1 : 0) + (tailNeeds ? 1 : 0));
    if (offset < headEnd) this.zeroBytes(offset, headEnd - offset);
    if (tailStart < end) this.zeroBytes(tailStart, end - tailStart);
    if (firstWhole < endWhole) this.mapWholePages(firstWhole, endWhole, fill);
  }

  /** Zeroes bytes within one page, unless the page already reads as zeros. */
  private zeroBytes(addr: number, n: number): void {
    const page = Math.floor(addr * this.invPageSize);
    if (!holdsData(this.frameAt(page))) return;
    const slot = page & this.tlbMask;
    if (this.tlbPage[slot] !== page || this.tlbWritable[slot] === 0) this.translateForWrite(page, false);
    const frame = this.tlbFrame[slot]!;
    const at = this.pool.frameOffset(frame) + (addr - page * this.pageSize);
    this.pool.frameSegment(frame).fill(0, at, at + n);
  }

  /** Sets pages [first, end) to NO_FRAME or ZERO_FRAME, recording the epoch. */
  private mapWholePages(first: number, end: number, fill: number): void {
    if (this.writeGate !== undefined && first < end) this.writeGate.dirtied(this, first);
    const pool = this.pool;
    let page = first;
    while (page < end) {
      const chunkEnd = Math.min(end, (Math.floor(page / LEAF_ENTRIES) + 1) * LEAF_ENTRIES);
      let slotIndex = this.leafSlotIndex(page, fill === ZERO_FRAME);
      if (slotIndex >= 0 && this.nodes[slotIndex] === 0 && fill === NO_FRAME) slotIndex = -1;
      if (slotIndex >= 0) {
        const leaf = this.ownLeaf(slotIndex);
        const arena = pool.leaves;
        for (let p = page; p < chunkEnd; p++) {
          const entry = leaf * LEAF_ENTRIES + (p & LEAF_MASK);
          const old = arena.entries[entry]!;
          if (old === fill) {
            if (old === NO_FRAME && arena.epochs[entry] === 0) continue; // never written: nothing to record
          } else {
            if (old !== NO_FRAME) pool.release(old);
            if (fill === ZERO_FRAME) pool.zeroEntries++;
            arena.entries[entry] = fill;
          }
          this.markWritten(leaf, entry);
        }
      }
      page = chunkEnd;
    }
    this.flushTranslations();
  }

  /**
   * Byte offset within segment `hitSegment` of a `width`-byte value at `addr`, translating
   * (and for writes, making the page private) as needed; -1 when the value crosses a page.
   * Arms the span or TLB slot it used, so the next access to that page takes the fast path.
   *
   * The scalar accessors' miss path. It is one method on purpose, with the span fill written
   * into it, so that its bytecode stays above V8's inlining limit (460 bytes): inlined into an
   * accessor it made that accessor's optimized code too large for V8 to inline the accessor
   * into its caller's loop, and every read then paid a call (seen with --trace-turbo-inlining
   * on the random-read bench, which fills 512 spans as it warms up).
   */
  private locate(addr: number, width: number, forWrite: boolean): number {
    const page = Math.floor(addr * this.invPageSize);
    const inPage = addr - page * this.pageSize;
    if (!(addr >= 0 && addr <= this.size - width) || (inPage | 0) !== inPage) this.throwRange(addr, width);
    if (inPage > this.pageSize - width) return -1;
    const pool = this.pool;
    // Spans first, even for a page the TLB holds: bulk calls fill the TLB (not the scalar fast
    // path, see fillTlb), so a space first written or read in bulk still gets its spans. A span
    // is filled when its leaf's spanPages pages map consecutive frames of segment 0 (see
    // fastView); spanChecked remembers a leaf that does not, until the next flush. Only for
    // reads, and only without a pager: a pager needs every page's own translation to set its
    // accessed bit.
    const first = page - (page & LEAF_MASK);
    const spanStart = first * this.pageSize;
    const span = (spanStart * this.invSpanBytes) & this.spanMask;
    const spanPages = this.spanPages;
    if (
      !forWrite &&
      pool.paging === undefined &&
      page - first < spanPages &&
      spanStart + this.spanBytes <= this.size &&
      this.spanChecked[span] !== first
    ) {
      if (this.solo ? this.soloEnd !== 0 : this.spans[span << 1] === spanStart) {
        this.hitSegment = 0;
        return addr + (this.solo ? this.soloDelta : this.spans[(span << 1) + 1]!);
      }
      this.spanFills++;
      this.spanChecked[span] = first;
      const leaf = this.leafOf(page);
      const entries = pool.leaves.entries;
      const base = leaf * LEAF_ENTRIES;
      const frame = leaf === 0 ? NO_FRAME : entries[base]!;
      let run = frame >= FIRST_FRAME && frame + spanPages - 1 <= pool.segmentMask;
      for (let i = 1; run && i < spanPages; i++) run = entries[base + i] === frame + i;
      if (run) {
        this.spanChecked[span] = -1;
        const delta = pool.frameOffset(frame) - spanStart;
        if (this.solo) {
          this.soloEnd = this.spanBytes;
          this.soloDelta = delta;
        } else {
          this.spans[span << 1] = spanStart;
          this.spans[(span << 1) + 1] = delta;
        }
        this.hitSegment = 0;
        return addr + delta;
      }
    }
    let slot = page & this.tlbMask;
    if (this.tlbPage[slot] !== page || (forWrite && this.tlbWritable[slot] === 0)) {
      if (this.tlbPage[slot]! >= 0 && this.tlbPage[slot] !== page && ++this.tlbConflicts > this.tlbMask) {
        this.growTlb();
        slot = page & this.tlbMask;
      }
      if (forWrite) {
        this.reserveForWrite(page, page);
        this.translateForWrite(page, false);
      } else {
        this.translateForRead(page);
      }
    }
    this.armScalar(slot);
    const frame = this.tlbFrame[slot]!;
    this.hitSegment = frame >>> pool.segmentShift;
    return pool.frameOffset(frame) + inPage;
  }

  private readSplit(addr: number, width: number): DataView {
    this.read(addr, this.scratch.subarray(0, width));
    return this.scratchView;
  }

  /** Writes the first `width` scratch bytes (set by the caller's expression) at `addr`. */
  private writeSplit(addr: number, width: number, _filled: void): void {
    this.write(addr, this.scratch.subarray(0, width));
  }

  private assertLive(): void {
    if (this.destroyed) {
      throw new MemfabricError(
        ErrorCodes.DESTROYED,
        'this address space was destroyed; create or fork a new one',
      );
    }
  }

  private throwRange(addr: number, width: number): never {
    this.assertLive();
    if (!Number.isSafeInteger(addr)) throw invalidArgument(`address ${addr} must be a whole number of bytes`);
    throw outOfRange(`${width} bytes at ${addr} lie outside the ${this.size}-byte address space`);
  }

  private checkRange(offset: number, length: number): void {
    this.assertLive();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) {
      throw invalidArgument(`offset ${offset} and length ${length} must be whole numbers of bytes`);
    }
    if (length < 0) throw invalidArgument(`length ${length} must not be negative`);
    if (offset < 0 || offset + length > this.size) {
      throw outOfRange(
        `range [${offset}, ${offset + length}) lies outside the ${this.size}-byte address space; ` +
          `valid offsets are 0 to ${this.size}`,
      );
    }
  }

  private checkPage(page: number): void {
    this.assertLive();
    if (!Number.isSafeInteger(page) || page < 0 || page >= this.pageCount) {
      throw outOfRange(`page ${page} is outside this space's ${this.pageCount} pages`);
    }
  }
}

/** True when a leaf entry holds bytes: a frame, or a page swapped out to a store. */
function holdsData(entry: number): boolean {
  return entry >= FIRST_FRAME || entry < 0;
}
