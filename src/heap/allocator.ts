/**
 * The persistent heap's allocator: alloc/free/realloc of byte ranges inside one AddressSpace,
 * with every bit of its state (free lists, counts, the map of which page holds what) kept in
 * that same space, so a snapshot of the space is a snapshot of the allocator. Nothing needed
 * for correctness lives in JS objects: `attach` rebuilds the few derived constants (the size
 * class table, which depends only on the page size) and trusts nothing else.
 *
 * Learned from mimalloc (size-class pages with an intrusive free list and a `used` count; a
 * page whose last object is freed goes back to the page allocator) and from LMDB's free-page
 * handling (free page runs are reused before the file grows; runs are found by length). LMDB
 * also waits until no reader can see a freed page before reusing it: here that rule is kept
 * by the heap's checkpoints and forks, which each own a copy-on-write snapshot of the whole
 * space, so the allocator may reuse a page the moment it is freed.
 *
 * Layout (P = the space's page size, all page numbers absolute: address / P):
 *
 *   base                      header (HEADER_BYTES): magic, version, geometry, top, counters,
 *                             the head of each size class's span list and of each free-run bin
 *   base + HEADER_BYTES       descriptor table: DESC_BYTES per page from base to limit, found
 *                             by arithmetic (descriptor of page p at table + (p - basePage) * 16)
 *   dataStart * P             heap pages, handed out from low addresses up to `top`
 *   top * P .. limit          never handed out yet (or given back by lowering top)
 *
 * Page numbers are stored as u32, so a heap manages at most 2^32 - 1 pages (16 TiB of 4 KiB
 * pages); `format` refuses a larger limit.
 *
 * Size classes (derived from P alone): 16 to 128 bytes in steps of 16, then four classes per
 * doubling (at most 25 % lost to rounding) up to 2 P. A class's span is the fewest pages (1 to
 * 16) that waste at most 1/8 of the span. Larger requests get a run of whole pages.
 *
 * Every page in [dataStart, top) belongs to exactly one *run* of consecutive pages, and the
 * runs tile that range without gaps:
 *
 *   SPAN (+ SPAN_TAIL pages)  a small-object span: blocks of one size class. The span's first
 *                             bytes are a bitmap with one bit per block (1 = allocated), then
 *                             the blocks, 16-byte aligned. Free blocks form a singly linked list
 *                             through their first 4 bytes (block index + 1; 0 ends the list).
 *                             Blocks past `init` were never handed out (lazily carved, so a new
 *                             span costs no writes to its blocks).
 *   LARGE (+ LARGE_TAIL)      one large object: the whole run.
 *   FREE_HEAD, FREE_INNER..., FREE_TAIL
 *                             a free run. Head and tail both hold the length (boundary tags),
 *                             so freeing a run finds and merges both neighbours in O(1).
 *
 * Descriptor (16 bytes): kind u8 | class u8 | used u16 | a u32 | next u32 | prev u32, where
 * `a` is the run length (FREE_HEAD, FREE_TAIL, LARGE), the head page (SPAN_TAIL, LARGE_TAIL),
 * or for a SPAN the free-list head (u16, block index + 1) and `init` (u16). The first two
 * words are read and written whole (one accessor call each) on the hot path. `next`/`prev` link
 * a free run into its bin's list, or a span into its class's list (0 = none: page 0 is never
 * a heap page, it holds at least the header).
 *
 * Invariants (check() verifies every one and names the page that breaks it):
 *   - runs tile [dataStart, top); every tail/inner page points back to, or lies within, its head;
 *   - no two free runs are adjacent (freeing merges them), and the run just below top is not
 *     free (freeing one there lowers top instead);
 *   - each free run is in exactly the bin for its length; bins hold nothing else;
 *   - per span: used == bits set in its bitmap; used + |free list| == init <= capacity;
 *     every free-list entry is < init, unset in the bitmap and listed once;
 *   - a span is in its class list iff used < capacity;
 *   - header counters equal the sums over runs: live blocks per class, large objects, free,
 *     span and large pages, span bitmap bytes.
 *
 * Spans: a span leaves its class list when full and rejoins on its next free; when its last
 * block is freed it goes back to the page allocator, except the only listed span of its class
 * (kept, so one object allocated and freed in a loop does not take and return a span each time).
 * Free runs: bins of exact length for 1..32 pages, then one bin per power of two; a run is
 * taken from the smallest non-empty bin that must fit (a bounded first-fit scan in the one bin
 * that may hold runs too short), split, and the rest goes back to its bin. Only when none fits
 * does top grow.
 *
 * Costs: alloc/free of a small object is O(1) with no JS allocation (about a dozen typed
 * accessor calls each on resident pages). A large alloc or free is O(pages in the run) descriptor writes
 * (16 bytes per 4 KiB page, small beside the object); finding a run is O(bins) plus a
 * bounded first-fit scan of one bin. free() validates its argument exactly (bitmap bit, block
 * alignment, run head) before changing anything, so a bad free changes nothing.
 *
 * No state is cached in JS: every call reads the space, so any number of HeapAllocator objects
 * attached to one space (or one re-attached after the space was restored) agree.
 *
 * Stats: liveBytes counts USABLE sizes (the block size for small objects, whole pages for
 * large ones), not requested sizes, which the allocator does not store.
 *
 * Failure atomicity: an error the caller causes (bad size, bad free, heap full) is detected
 * before any write, and each operation reserves the frames for every page it may write before
 * its first write, so MF_POOL_EXHAUSTED (a full pool without a pager) changes nothing either.
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace } from '../memory/address-space.js';
import type { HeapAllocatorApi } from './memory.js';

const MAGIC = 0x4c41464d; // "MFAL" little-endian
const VERSION = 1;

/** Header bytes at `base`; the descriptor table follows. */
export const HEADER_BYTES = 2048;
/** Bytes per page descriptor (a power of two, so a descriptor never crosses a page). */
export const DESC_BYTES = 16;
/** Objects are 16-byte aligned; the smallest block is 16 bytes. */
const ALIGN = 16;
const MAX_CLASSES = 64;
/** Free-run bins: lengths 1..EXACT_BINS each have their own; longer runs share one per power of two. */
const EXACT_BINS = 32;
const NUM_BINS = EXACT_BINS + 27; // up to runs of 2^32 - 1 pages
/** A span spans at most this many pages. */
const SPAN_PAGES_MAX = 16;
/** First-fit scan bound within the one bin whose runs may be too short. */
const BIN_SCAN_MAX = 16;
/** Page numbers are stored as u32. */
const PAGES_MAX = 2 ** 32 - 1;
const COPY_CHUNK = 64 * 1024;
/**
 * Failure atomicity: before an operation writes anything it reserves (FramePool.reserve) as
 * many frames as the distinct pages it can write, so a full pool fails it with
 * MF_POOL_EXHAUSTED having changed nothing. A small alloc/free writes at most the header page,
 * three descriptor pages (its span and the list neighbours) and two span pages.
 */
const OP_PAGES_SMALL = 8;
/** Pages a page-run operation writes besides its run's descriptors: header, run and neighbour descriptors, span bitmap. */
const OP_PAGES_RUN = 32;

// Header fields (byte offsets from base).
const H_MAGIC = 0;
const H_VERSION = 4;
const H_PAGE_SIZE = 8;
const H_CLASSES = 12;
const H_BASE = 16; // f64
const H_LIMIT = 24; // f64
const H_DATA_START = 32; // u32 page
const H_LIMIT_PAGE = 36; // u32 page (exclusive)
const H_TOP = 40; // u32 page (exclusive)
const H_PEAK = 44; // u32 page: highest top since the last trimFree()
const H_LARGE_OBJECTS = 48; // f64 (live large objects; their bytes are H_LARGE_PAGES pages)
const H_FREE_PAGES = 64; // f64
const H_SPAN_PAGES = 72; // f64
const H_LARGE_PAGES = 80; // f64
const H_SPAN_HEADER_BYTES = 88; // f64
const H_CLASS_HEADS = 96; // u32 x MAX_CLASSES
const H_BIN_HEADS = H_CLASS_HEADS + 4 * MAX_CLASSES; // u32 x NUM_BINS
/** Live blocks per size class (f64): small-object stats without touching two counters per call. */
const H_CLASS_LIVE = H_BIN_HEADS + 4 * NUM_BINS + 4; // 8-aligned
const H_END = H_CLASS_LIVE + 8 * MAX_CLASSES;
if (H_END > HEADER_BYTES) throw new Error('allocator header fields overflow HEADER_BYTES');

// Descriptor fields. Word 0 packs kind | class << 8 | used << 16 and, for a span, word 1
// packs free-list head | init << 16, so the hot path reads and writes each with one call.
const D_KIND = 0; // u8, the low byte of word 0
const D_A = 4; // run length | head page | (span) free-list head u16 + init u16
const USED_ONE = 0x10000; // `used` += 1 in word 0
// The same fields as bytes, for the slow paths (walks, check).
const D_CLASS = 1; // u8
const D_USED = 2; // u16
const D_FREE = 4; // u16
const D_INIT = 6; // u16
const D_NEXT = 8;
const D_PREV = 12;

// Descriptor kinds. 0 (none) is what a never-written descriptor reads as: never valid below top.
const K_FREE_HEAD = 1;
const K_FREE_TAIL = 2;
const K_FREE_INNER = 3;
const K_LARGE = 4;
const K_LARGE_TAIL = 5;
const K_SPAN = 6;
const K_SPAN_TAIL = 7;
const KIND_NAMES = [
  'none',
  'free-head',
  'free-tail',
  'free-inner',
  'large',
  'large-tail',
  'span',
  'span-tail',
];

export interface AllocatorStats {
  /** Sum of the usable sizes of live objects (block size, or whole pages for large objects). */
  liveBytes: number;
  liveObjects: number;
  /** Bytes of heap pages below top (everything after the header and descriptor table). */
  heapBytes: number;
  /** heapBytes not holding live objects or span bitmaps: free runs, free blocks, span tails. */
  freeBytes: number;
  /** Of freeBytes, the bytes in free page runs (whole pages that any size can reuse). */
  freeRunBytes: number;
  /** High water: bytes from base to top, metadata included. */
  topBytes: number;
  /** Metadata in use: header, descriptors of the pages below top, span bitmaps. */
  metadataBytes: number;
  /** 1 - liveBytes / heapBytes (0 for an empty heap): the share of heap pages not in live objects. */
  fragmentation: number;
}

export interface AllocatorCheckResult {
  ok: boolean;
  problems: string[];
}

/** Size-class table: derived from the page size alone, so attach() can rebuild it. */
interface ClassTable {
  count: number;
  maxSmall: number;
  blockSize: Int32Array;
  spanPages: Int32Array;
  capacity: Int32Array;
  /** Byte offset of block 0 in its span (= bitmap bytes rounded up to ALIGN). */
  firstBlock: Int32Array;
  /** Class of a request of n bytes, indexed by ceil(n / 16) (n = 0 takes the smallest class). */
  byUnits: Uint8Array;
}

const tables = new Map<number, ClassTable>();

function classTable(pageSize: number): ClassTable {
  const cached = tables.get(pageSize);
  if (cached) return cached;
  const maxSmall = 2 * pageSize;
  const sizes: number[] = [];
  for (let s = ALIGN; s <= 128; s += ALIGN) sizes.push(s);
  // Four classes per doubling above 128 bytes: at most 25 % lost to rounding up.
  for (let b = 128; b < maxSmall; b *= 2) for (let k = 1; k <= 4; k++) sizes.push(b + (k * b) / 4);
  const count = sizes.length;
  const t: ClassTable = {
    count,
    maxSmall,
    blockSize: new Int32Array(count),
    spanPages: new Int32Array(count),
    capacity: new Int32Array(count),
    firstBlock: new Int32Array(count),
    byUnits: new Uint8Array(maxSmall / ALIGN + 1),
  };
  for (let c = 0; c < count; c++) {
    const size = sizes[c]!;
    // The fewest pages that waste at most 1/8 of the span, else the least wasteful.
    let best = 1;
    let bestWaste = Infinity;
    for (let k = 1; k <= SPAN_PAGES_MAX; k++) {
      const bytes = k * pageSize;
      let cap = Math.floor(bytes / size);
      while (cap > 0 && bitmapBytes(cap) + cap * size > bytes) cap--;
      if (cap === 0) continue;
      const waste = (bytes - cap * size) / bytes;
      if (waste < bestWaste) {
        best = k;
        bestWaste = waste;
      }
      if (waste <= 0.125) break;
    }
    let cap = Math.floor((best * pageSize) / size);
    while (bitmapBytes(cap) + cap * size > best * pageSize) cap--;
    t.blockSize[c] = size;
    t.spanPages[c] = best;
    t.capacity[c] = cap;
    t.firstBlock[c] = bitmapBytes(cap);
  }
  for (let u = 0, c = 0; u <= maxSmall / ALIGN; u++) {
    while (sizes[c]! < u * ALIGN) c++;
    t.byUnits[u] = c;
  }
  tables.set(pageSize, t);
  return t;
}

function bitmapBytes(blocks: number): number {
  return Math.ceil(Math.ceil(blocks / 8) / ALIGN) * ALIGN;
}

function binOf(pages: number): number {
  if (pages <= EXACT_BINS) return pages - 1;
  return EXACT_BINS + (31 - Math.clz32(pages)) - 5; // 33..63 -> 32, 64..127 -> 33, ...
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

function corrupt(message: string): MemfabricError {
  return new MemfabricError(
    ErrorCodes.HEAP_CORRUPT,
    `${message}. Run \`memfabric heap check\` for the full list, or restore the heap from a copy.`,
  );
}

export class HeapAllocator implements HeapAllocatorApi {
  readonly space: AddressSpace;
  readonly base: number;
  readonly limit: number;
  readonly pageSize: number;

  private readonly sizes: ClassTable;
  private readonly basePage: number;
  private readonly descBase: number;
  private readonly dataStart: number;
  private readonly limitPage: number;
  /** Largest request that could ever fit (every heap page). */
  private readonly maxBytes: number;
  // Second return values of locate() (no allocation on the free path).
  private hitPage = 0;
  private hitClass = 0;
  private hitIndex = 0;
  private hitSize = 0;
  /** The span's descriptor words 0 and 1 and the block's bitmap byte, as locate() read them. */
  private hitHead = 0;
  private hitWord = 0;
  private hitBits = 0;
  private copyBuffer: Uint8Array | undefined;

  private constructor(space: AddressSpace, base: number, limit: number) {
    this.space = space;
    this.base = base;
    this.limit = limit;
    this.pageSize = space.pageSize;
    this.sizes = classTable(space.pageSize);
    const geometry = HeapAllocator.geometry(space.pageSize, base, limit);
    this.basePage = geometry.basePage;
    this.descBase = base + HEADER_BYTES;
    this.dataStart = geometry.dataStart;
    this.limitPage = geometry.limitPage;
    this.maxBytes = (this.limitPage - this.dataStart) * this.pageSize;
  }

  private static geometry(
    pageSize: number,
    base: number,
    limit: number,
  ): { basePage: number; dataStart: number; limitPage: number } {
    const basePage = base / pageSize;
    const limitPage = Math.floor(limit / pageSize);
    const dataStart = basePage + Math.ceil((HEADER_BYTES + DESC_BYTES * (limitPage - basePage)) / pageSize);
    return { basePage, dataStart, limitPage };
  }

  /** Writes fresh allocator metadata at `base` (page-aligned) managing addresses up to `limit`. */
  static format(space: AddressSpace, options: { base: number; limit?: number }): HeapAllocator {
    const pageSize = space.pageSize;
    const base = options.base;
    if (!Number.isSafeInteger(base) || base < 0 || base % pageSize !== 0) {
      throw invalidArgument(
        `allocator base ${String(base)} must be a page-aligned address (a multiple of ${pageSize})`,
      );
    }
    const limit = options.limit ?? space.size;
    if (!Number.isSafeInteger(limit) || limit > space.size) {
      throw invalidArgument(
        `allocator limit ${String(limit)} must be an integer no larger than the space (${space.size} bytes)`,
      );
    }
    const { dataStart, limitPage } = HeapAllocator.geometry(pageSize, base, limit);
    if (limitPage > PAGES_MAX) {
      throw invalidArgument(
        `allocator limit ${limit} is beyond ${PAGES_MAX} pages of ${pageSize} bytes: give a lower limit`,
      );
    }
    if (dataStart >= limitPage) {
      throw invalidArgument(
        `allocator range ${hex(base)}..${hex(limit)} leaves no page after its metadata: give a higher limit`,
      );
    }
    const sizes = classTable(pageSize);
    space.writeZeroes(base, HEADER_BYTES);
    space.writeU32(base + H_MAGIC, MAGIC);
    space.writeU32(base + H_VERSION, VERSION);
    space.writeU32(base + H_PAGE_SIZE, pageSize);
    space.writeU32(base + H_CLASSES, sizes.count);
    space.writeF64(base + H_BASE, base);
    space.writeF64(base + H_LIMIT, limit);
    space.writeU32(base + H_DATA_START, dataStart);
    space.writeU32(base + H_LIMIT_PAGE, limitPage);
    space.writeU32(base + H_TOP, dataStart);
    space.writeU32(base + H_PEAK, dataStart);
    return new HeapAllocator(space, base, limit);
  }

  /** Opens the allocator whose metadata is at `base`; MF_HEAP_CORRUPT if it is missing or not sane. */
  static attach(space: AddressSpace, base: number): HeapAllocator {
    const pageSize = space.pageSize;
    if (
      !Number.isSafeInteger(base) ||
      base < 0 ||
      base % pageSize !== 0 ||
      base + HEADER_BYTES > space.size
    ) {
      throw invalidArgument(`allocator base ${String(base)} must be a page-aligned address inside the space`);
    }
    const where = `allocator metadata at ${hex(base)}`;
    const magic = space.readU32(base + H_MAGIC);
    if (magic !== MAGIC)
      throw corrupt(`${where}: magic is ${hex(magic)}, not ${hex(MAGIC)} (never formatted, or overwritten)`);
    const version = space.readU32(base + H_VERSION);
    if (version !== VERSION)
      throw corrupt(`${where}: format version ${version}, this build reads version ${VERSION}`);
    const storedPage = space.readU32(base + H_PAGE_SIZE);
    if (storedPage !== pageSize)
      throw corrupt(`${where}: written for ${storedPage}-byte pages, the space has ${pageSize}`);
    const storedBase = space.readF64(base + H_BASE);
    if (storedBase !== base) throw corrupt(`${where}: records base ${storedBase}, not ${base}`);
    const limit = space.readF64(base + H_LIMIT);
    if (!Number.isSafeInteger(limit) || limit <= base || limit > space.size) {
      throw corrupt(`${where}: limit ${limit} is not within the space (${base}..${space.size})`);
    }
    const geometry = HeapAllocator.geometry(pageSize, base, limit);
    const fields = [
      ['classes', H_CLASSES, classTable(pageSize).count],
      ['data start page', H_DATA_START, geometry.dataStart],
      ['limit page', H_LIMIT_PAGE, geometry.limitPage],
    ] as const;
    for (const [name, at, expected] of fields) {
      const got = space.readU32(base + at);
      if (got !== expected) throw corrupt(`${where}: ${name} is ${got}, expected ${expected}`);
    }
    const top = space.readU32(base + H_TOP);
    const peak = space.readU32(base + H_PEAK);
    if (top < geometry.dataStart || top > geometry.limitPage || peak < top || peak > geometry.limitPage) {
      throw corrupt(
        `${where}: top page ${top} / peak ${peak} outside ${geometry.dataStart}..${geometry.limitPage}`,
      );
    }
    const allocator = new HeapAllocator(space, base, limit);
    for (let i = 0; i < MAX_CLASSES + NUM_BINS; i++) {
      const head = space.readU32(base + H_CLASS_HEADS + 4 * i);
      if (head !== 0 && (head < geometry.dataStart || head >= top)) {
        const what = i < MAX_CLASSES ? `class ${i} span list` : `free bin ${i - MAX_CLASSES}`;
        throw corrupt(
          `${where}: head of ${what} is page ${head}, outside the heap pages ${geometry.dataStart}..${top}`,
        );
      }
    }
    return allocator;
  }

  // ---------------------------------------------------------------------------------------
  // Public API

  alloc(bytes: number): number {
    const sizes = this.sizes;
    // A whole number of pages gets a page run, so it starts on a page boundary: collections ask
    // for page-sized nodes and read them in place only when a node is one page, not two halves.
    if (bytes >>> 0 !== bytes || bytes > sizes.maxSmall || (bytes !== 0 && bytes % this.pageSize === 0)) {
      return this.allocLarge(bytes);
    }
    const sp = this.space;
    const c = sizes.byUnits[(bytes + ALIGN - 1) >>> 4]!;
    const headAt = this.base + H_CLASS_HEADS + 4 * c;
    let span = sp.readU32(headAt);
    if (span === 0) span = this.newSpan(c);
    else this.reserve(OP_PAGES_SMALL);
    const d = this.desc(span);
    const spanAddr = span * this.pageSize;
    const word = sp.readU32(d + D_A);
    const init = word >>> 16;
    let index = (word & 0xffff) - 1;
    let address: number;
    if (index >= 0) {
      address = spanAddr + sizes.firstBlock[c]! + index * sizes.blockSize[c]!;
      const next = sp.readU32(address);
      if (next > init) {
        throw corrupt(
          `span at page ${span}: free block ${hex(address)} links to block ${next - 1}, never carved`,
        );
      }
      sp.writeU32(d + D_A, next | (init << 16));
    } else {
      index = init;
      address = spanAddr + sizes.firstBlock[c]! + index * sizes.blockSize[c]!;
      sp.writeU32(d + D_A, (init + 1) << 16);
    }
    const head = sp.readU32(d) + USED_ONE;
    sp.writeU32(d, head);
    const bits = spanAddr + (index >>> 3);
    sp.writeU8(bits, sp.readU8(bits) | (1 << (index & 7)));
    if (head >>> 16 === sizes.capacity[c]) this.unlink(headAt, span);
    const live = this.base + H_CLASS_LIVE + 8 * c;
    sp.writeF64(live, sp.readF64(live) + 1);
    return address;
  }

  free(address: number): void {
    if (this.locate(address, 'free') === K_SPAN) {
      // The last block out returns its span to the page allocator: a run operation.
      const last = this.hitHead >>> 16 === 1;
      this.reserve(last ? OP_PAGES_SMALL + this.runOpPages(SPAN_PAGES_MAX) : OP_PAGES_SMALL);
      this.freeSmall(address);
    } else {
      this.reserve(this.runOpPages(this.hitSize / this.pageSize));
      this.freeLarge();
    }
  }

  realloc(address: number, bytes: number): number {
    this.checkSize(bytes);
    const kind = this.locate(address, 'realloc');
    const sizes = this.sizes;
    if (kind === K_SPAN) {
      const size = this.hitSize;
      if (
        bytes <= size &&
        (bytes * 2 >= size || this.hitClass === sizes.byUnits[(bytes + ALIGN - 1) >>> 4])
      ) {
        return address;
      }
      return this.move(address, size, bytes);
    }
    const head = this.hitPage;
    const pages = this.hitSize / this.pageSize;
    const wanted = Math.max(1, Math.ceil(bytes / this.pageSize));
    if (bytes <= sizes.maxSmall) return this.move(address, this.hitSize, bytes); // small enough for a span
    if (wanted === pages) return address;
    this.reserve(this.runOpPages(Math.max(pages, wanted)));
    if (wanted < pages) {
      this.shrinkLarge(head, pages, wanted);
      return address;
    }
    if (this.growLarge(head, pages, wanted)) return address;
    return this.move(address, this.hitSize, bytes);
  }

  usableSize(address: number): number {
    this.locate(address, 'usableSize');
    return this.hitSize;
  }

  /** Calls visit(address, usableSize) for every live object, in address order. Do not alloc or free inside visit. */
  forEachObject(visit: (address: number, size: number) => void): void {
    const sp = this.space;
    const sizes = this.sizes;
    const top = this.top;
    let page = this.dataStart;
    while (page < top) {
      const d = this.desc(page);
      const kind = sp.readU8(d);
      if (kind === K_SPAN) {
        const c = sp.readU8(d + D_CLASS);
        if (c >= sizes.count) throw corrupt(`span at page ${page} has class ${c}`);
        const init = sp.readU16(d + D_INIT);
        const spanAddr = page * this.pageSize;
        let bits = 0;
        for (let i = 0; i < init; i++) {
          if ((i & 7) === 0) bits = sp.readU8(spanAddr + (i >>> 3));
          if ((bits >>> (i & 7)) & 1) {
            visit(spanAddr + sizes.firstBlock[c]! + i * sizes.blockSize[c]!, sizes.blockSize[c]!);
          }
        }
        page += sizes.spanPages[c]!;
      } else if (kind === K_LARGE) {
        const n = sp.readU32(d + D_A);
        visit(page * this.pageSize, n * this.pageSize);
        page += Math.max(1, n);
      } else if (kind === K_FREE_HEAD) {
        page += Math.max(1, sp.readU32(d + D_A));
      } else {
        throw corrupt(
          `${this.where(page)} has a ${KIND_NAMES[kind] ?? kind} descriptor where a run should start`,
        );
      }
    }
  }

  stats(): AllocatorStats {
    const sp = this.space;
    const h = this.base;
    const sizes = this.sizes;
    let liveObjects = sp.readF64(h + H_LARGE_OBJECTS);
    let liveBytes = sp.readF64(h + H_LARGE_PAGES) * this.pageSize;
    for (let c = 0; c < sizes.count; c++) {
      const blocks = sp.readF64(h + H_CLASS_LIVE + 8 * c);
      liveObjects += blocks;
      liveBytes += blocks * sizes.blockSize[c]!;
    }
    const spanHeaders = sp.readF64(h + H_SPAN_HEADER_BYTES);
    const top = this.top;
    const heapBytes = (top - this.dataStart) * this.pageSize;
    return {
      liveBytes,
      liveObjects,
      heapBytes,
      freeBytes: heapBytes - liveBytes - spanHeaders,
      freeRunBytes: sp.readF64(h + H_FREE_PAGES) * this.pageSize,
      topBytes: top * this.pageSize - this.base,
      metadataBytes: HEADER_BYTES + DESC_BYTES * (top - this.basePage) + spanHeaders,
      fragmentation: heapBytes === 0 ? 0 : 1 - liveBytes / heapBytes,
    };
  }

  /**
   * Gives the frames of free pages back to the space (trim: they read as zeros and cost
   * nothing), both free runs and the pages above top that earlier use left behind. Returns
   * the bytes trimmed. Metadata is untouched; call it when memory or image size matters
   * (heap compaction), not after every free.
   */
  trimFree(): number {
    const sp = this.space;
    const P = this.pageSize;
    let trimmed = 0;
    for (let b = 0; b < NUM_BINS; b++) {
      for (let run = this.binHead(b), guard = 0; run !== 0 && guard <= PAGES_MAX; guard++) {
        const n = sp.readU32(this.desc(run) + D_A);
        sp.trim(run * P, n * P);
        trimmed += n * P;
        run = sp.readU32(this.desc(run) + D_NEXT);
      }
    }
    const top = this.top;
    const peak = sp.readU32(this.base + H_PEAK);
    if (peak > top) {
      sp.trim(top * P, (peak - top) * P);
      trimmed += (peak - top) * P;
      sp.writeU32(this.base + H_PEAK, top);
    }
    return trimmed;
  }

  /** Verifies every invariant in the header comment; each problem names the page or address. */
  check(): AllocatorCheckResult {
    return new Checker({
      space: this.space,
      base: this.base,
      pageSize: this.pageSize,
      dataStart: this.dataStart,
      limitPage: this.limitPage,
      sizes: this.sizes,
      desc: (page) => this.desc(page),
    }).run();
  }

  // ---------------------------------------------------------------------------------------
  // Small objects

  private newSpan(c: number): number {
    const sp = this.space;
    const sizes = this.sizes;
    const pages = sizes.spanPages[c]!;
    this.reserve(this.runOpPages(pages) + OP_PAGES_SMALL);
    const head = this.allocRun(pages);
    if (head < 0) throw this.full(sizes.blockSize[c]!, pages);
    const d = this.desc(head);
    sp.writeU32(d, K_SPAN | (c << 8));
    sp.writeU32(d + D_A, 0);
    for (let p = 1; p < pages; p++) this.setTail(head + p, K_SPAN_TAIL, head);
    sp.writeZeroes(head * this.pageSize, sizes.firstBlock[c]!);
    this.link(this.base + H_CLASS_HEADS + 4 * c, head);
    this.addF64(H_SPAN_PAGES, pages);
    this.addF64(H_SPAN_HEADER_BYTES, sizes.firstBlock[c]!);
    return head;
  }

  /** Frees the block locate() found. */
  private freeSmall(address: number): void {
    const sp = this.space;
    const sizes = this.sizes;
    const span = this.hitPage;
    const c = this.hitClass;
    const index = this.hitIndex;
    const d = this.desc(span);
    sp.writeU8(span * this.pageSize + (index >>> 3), this.hitBits & ~(1 << (index & 7)));
    const word = this.hitWord;
    sp.writeU32(address, word & 0xffff);
    sp.writeU32(d + D_A, (word & 0xffff0000) | (index + 1));
    const head = this.hitHead - USED_ONE;
    sp.writeU32(d, head);
    const used = head >>> 16;
    const live = this.base + H_CLASS_LIVE + 8 * c;
    sp.writeF64(live, sp.readF64(live) - 1);
    const headAt = this.base + H_CLASS_HEADS + 4 * c;
    if (used + 1 === sizes.capacity[c]) {
      this.link(headAt, span); // was full, so not listed
    } else if (used === 0 && !(sp.readU32(headAt) === span && sp.readU32(d + D_NEXT) === 0)) {
      // Empty: back to the page allocator, unless it is its class's only span (keeping one
      // avoids taking and returning a span on every alloc/free of a single object).
      this.unlink(headAt, span);
      const pages = sizes.spanPages[c]!;
      this.addF64(H_SPAN_PAGES, -pages);
      this.addF64(H_SPAN_HEADER_BYTES, -sizes.firstBlock[c]!);
      this.freeRun(span, pages);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Large objects

  private allocLarge(bytes: number): number {
    this.checkSize(bytes);
    const pages = Math.max(1, Math.ceil(bytes / this.pageSize));
    this.reserve(this.runOpPages(pages));
    const head = this.allocRun(pages);
    if (head < 0) throw this.full(bytes, pages);
    this.space.writeU8(this.desc(head) + D_KIND, K_LARGE);
    this.space.writeU32(this.desc(head) + D_A, pages);
    for (let p = 1; p < pages; p++) this.setTail(head + p, K_LARGE_TAIL, head);
    this.addF64(H_LARGE_PAGES, pages);
    this.addF64(H_LARGE_OBJECTS, 1);
    return head * this.pageSize;
  }

  private freeLarge(): void {
    const pages = this.hitSize / this.pageSize;
    this.addF64(H_LARGE_PAGES, -pages);
    this.addF64(H_LARGE_OBJECTS, -1);
    this.freeRun(this.hitPage, pages);
  }

  private shrinkLarge(head: number, pages: number, wanted: number): void {
    this.space.writeU32(this.desc(head) + D_A, wanted);
    const cut = pages - wanted;
    this.addF64(H_LARGE_PAGES, -cut);
    this.freeRun(head + wanted, cut);
  }

  /** Grows a large object in place into the free run or the unused pages after it, if they suffice. */
  private growLarge(head: number, pages: number, wanted: number): boolean {
    const sp = this.space;
    const extra = wanted - pages;
    const next = head + pages;
    const top = this.top;
    if (next === top) {
      if (top + extra > this.limitPage) return false;
      this.setTop(top + extra);
    } else {
      const d = this.desc(next);
      if (sp.readU8(d + D_KIND) !== K_FREE_HEAD) return false;
      const runPages = sp.readU32(d + D_A);
      if (runPages < extra) return false;
      this.takeFromFreeRun(next, runPages, extra);
    }
    sp.writeU32(this.desc(head) + D_A, wanted);
    for (let p = pages; p < wanted; p++) this.setTail(head + p, K_LARGE_TAIL, head);
    this.addF64(H_LARGE_PAGES, extra);
    return true;
  }

  /**
   * Makes sure `frames` frames are free before an operation writes anything, so a plain pool's
   * POOL_EXHAUSTED changes nothing. With a pager the pool makes room by evicting, and each
   * write makes its own room; the bound is capped at half the budget, so a tiny budget still
   * serves operations whose worst case exceeds it.
   */
  private reserve(frames: number): void {
    const pool = this.space.pool;
    pool.reserve(pool.paging ? Math.min(frames, pool.capacity >> 1) : frames);
  }

  private move(address: number, oldSize: number, bytes: number): number {
    // The new object, the copy into it and the free of the old one, reserved together.
    const oldPages = Math.ceil(oldSize / this.pageSize);
    const newPages = Math.ceil(bytes / this.pageSize) + 1;
    this.reserve(this.runOpPages(newPages) + newPages + this.runOpPages(oldPages) + 2 * OP_PAGES_SMALL);
    const fresh = this.alloc(bytes); // HEAP_FULL here leaves the old object as it was
    const sp = this.space;
    const n = Math.min(oldSize, bytes);
    const buffer = (this.copyBuffer ??= new Uint8Array(COPY_CHUNK));
    for (let done = 0; done < n; done += COPY_CHUNK) {
      const chunk = Math.min(COPY_CHUNK, n - done);
      const view = chunk === COPY_CHUNK ? buffer : buffer.subarray(0, chunk);
      sp.read(address + done, view);
      sp.write(fresh + done, view);
    }
    this.free(address);
    return fresh;
  }

  // ---------------------------------------------------------------------------------------
  // Page runs

  /** Head page of `pages` fresh pages (from the best-fitting free run, else from top); -1 if none fit. */
  private allocRun(pages: number): number {
    const sp = this.space;
    let bin = binOf(pages);
    if (bin >= EXACT_BINS) {
      // This bin's runs may be shorter than asked: a bounded first-fit scan.
      let run = this.binHead(bin);
      for (let i = 0; run !== 0 && i < BIN_SCAN_MAX; i++) {
        const n = sp.readU32(this.desc(run) + D_A);
        if (n >= pages) return this.takeFromFreeRun(run, n, pages);
        run = sp.readU32(this.desc(run) + D_NEXT);
      }
      bin++;
    }
    for (; bin < NUM_BINS; bin++) {
      const run = this.binHead(bin);
      if (run !== 0) return this.takeFromFreeRun(run, sp.readU32(this.desc(run) + D_A), pages);
    }
    const top = this.top;
    if (top + pages > this.limitPage) return -1;
    this.setTop(top + pages);
    return top;
  }

  /** Takes the first `pages` pages of free run `run` (of `runPages`); the rest stays free. */
  private takeFromFreeRun(run: number, runPages: number, pages: number): number {
    this.unlink(this.binHeadAt(binOf(runPages)), run);
    this.addF64(H_FREE_PAGES, -runPages);
    const rest = runPages - pages;
    if (rest > 0) this.makeFreeRun(run + pages, rest);
    return run;
  }

  /**
   * Returns pages [head, head + pages) to the free runs, merging with free neighbours; a run
   * that ends at top lowers top instead. The pages' old descriptors become free-inner.
   */
  private freeRun(head: number, pages: number): void {
    const sp = this.space;
    let start = head;
    let length = pages;
    if (start > this.dataStart) {
      const d = this.desc(start - 1);
      const kind = sp.readU8(d + D_KIND);
      if (kind === K_FREE_TAIL || kind === K_FREE_HEAD) {
        const n = sp.readU32(d + D_A);
        const left = kind === K_FREE_HEAD ? start - 1 : start - n;
        this.unlink(this.binHeadAt(binOf(n)), left);
        sp.writeU8(d + D_KIND, K_FREE_INNER);
        this.addF64(H_FREE_PAGES, -n);
        start = left;
        length += n;
      }
    }
    const right = head + pages;
    const top = this.top;
    if (right < top) {
      const d = this.desc(right);
      if (sp.readU8(d + D_KIND) === K_FREE_HEAD) {
        const n = sp.readU32(d + D_A);
        this.unlink(this.binHeadAt(binOf(n)), right);
        sp.writeU8(d + D_KIND, K_FREE_INNER);
        this.addF64(H_FREE_PAGES, -n);
        length += n;
      }
    } else {
      this.setTop(start); // descriptors above top are never read
      return;
    }
    for (let p = head; p < right; p++) sp.writeU8(this.desc(p) + D_KIND, K_FREE_INNER);
    this.makeFreeRun(start, length);
  }

  /** Writes head and tail tags of a free run and puts it in its bin (inner pages are already free-inner). */
  private makeFreeRun(start: number, length: number): void {
    const sp = this.space;
    const d = this.desc(start);
    sp.writeU8(d + D_KIND, K_FREE_HEAD);
    sp.writeU32(d + D_A, length);
    if (length > 1) this.setTail(start + length - 1, K_FREE_TAIL, length);
    this.link(this.binHeadAt(binOf(length)), start);
    this.addF64(H_FREE_PAGES, length);
  }

  // ---------------------------------------------------------------------------------------
  // Lookup and validation

  /**
   * What `address` is: K_SPAN (a live small block: hitPage = span, hitClass, hitIndex,
   * hitSize = block size) or K_LARGE (hitPage = head, hitSize = run bytes). Anything else is
   * MF_HEAP_BAD_FREE, thrown before anything changes.
   */
  private locate(address: number, op: string): number {
    const sp = this.space;
    const P = this.pageSize;
    if (typeof address !== 'number' || !Number.isSafeInteger(address)) {
      throw this.badFree(op, address, 'is not an address (a non-negative integer)');
    }
    if (address < this.dataStart * P || address >= this.top * P) {
      throw this.badFree(
        op,
        address,
        `is outside the heap's allocated pages (${hex(this.dataStart * P)}..${hex(this.top * P)})`,
      );
    }
    if (address % ALIGN !== 0)
      throw this.badFree(op, address, 'is not 16-byte aligned, so not an object start');
    const page = Math.floor(address / P);
    const d = this.desc(page);
    const head = sp.readU32(d);
    const kind = head & 0xff;
    if (kind === K_SPAN || kind === K_SPAN_TAIL) {
      const span = kind === K_SPAN ? page : sp.readU32(d + D_A);
      const sd = kind === K_SPAN ? d : this.desc(span);
      const spanHead = kind === K_SPAN ? head : sp.readU32(sd);
      const c = (spanHead >>> 8) & 0xff;
      if (
        span < this.dataStart ||
        span > page ||
        (spanHead & 0xff) !== K_SPAN ||
        c >= this.sizes.count ||
        page - span >= this.sizes.spanPages[c]!
      ) {
        throw corrupt(
          `page ${page} claims to belong to a small-object span at page ${span}, which is not one`,
        );
      }
      const size = this.sizes.blockSize[c]!;
      const offset = address - span * P - this.sizes.firstBlock[c]!;
      if (offset < 0) throw this.badFree(op, address, 'points into the bitmap of a small-object span');
      const index = offset / size;
      if (index !== Math.floor(index)) {
        throw this.badFree(
          op,
          address,
          `points inside a ${size}-byte block, not at its start (interior pointer)`,
        );
      }
      const word = sp.readU32(sd + D_A);
      if (index >= word >>> 16) throw this.badFree(op, address, 'is a block that was never allocated');
      const bits = sp.readU8(span * P + (index >>> 3));
      if (((bits >>> (index & 7)) & 1) === 0) {
        throw this.badFree(op, address, 'is already free (a double free, or never allocated)');
      }
      this.hitHead = spanHead;
      this.hitWord = word;
      this.hitBits = bits;
      this.hitPage = span;
      this.hitClass = c;
      this.hitIndex = index;
      this.hitSize = size;
      return K_SPAN;
    }
    if (kind === K_LARGE) {
      if (address !== page * P)
        throw this.badFree(op, address, 'points inside a large object, not at its start');
      const pages = sp.readU32(d + D_A);
      if (pages < 1 || page + pages > this.top) {
        throw corrupt(
          `large object at ${this.where(page)} claims ${pages} pages, past the top page ${this.top}`,
        );
      }
      this.hitPage = page;
      this.hitSize = pages * P;
      return K_LARGE;
    }
    if (kind === K_LARGE_TAIL) {
      throw this.badFree(op, address, `points inside the large object at ${hex(sp.readU32(d + D_A) * P)}`);
    }
    if (kind === K_FREE_HEAD || kind === K_FREE_TAIL || kind === K_FREE_INNER) {
      throw this.badFree(op, address, 'is in free space (already freed, or never allocated)');
    }
    throw corrupt(`page ${page} below top has descriptor kind ${kind}`);
  }

  private where(page: number): string {
    return `page ${page} (${hex(page * this.pageSize)})`;
  }

  /** Frames to reserve for a page-run operation over `pages` pages (see OP_PAGES_SMALL). */
  private runOpPages(pages: number): number {
    return OP_PAGES_RUN + Math.ceil((pages * DESC_BYTES) / this.pageSize) + 1;
  }

  private checkSize(bytes: number): void {
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) {
      throw invalidArgument(
        `allocation size ${String(bytes)} must be a non-negative integer number of bytes`,
      );
    }
    if (bytes > this.maxBytes) {
      throw invalidArgument(
        `allocation of ${bytes} bytes is larger than the whole heap (${this.maxBytes} bytes)`,
      );
    }
  }

  private badFree(op: string, address: unknown, why: string): MemfabricError {
    const shown =
      typeof address === 'number' && Number.isSafeInteger(address) ? hex(address) : String(address);
    return new MemfabricError(
      ErrorCodes.HEAP_BAD_FREE,
      `${op}(${shown}): the address ${why}; nothing was changed. Pass only addresses alloc/realloc returned, and free each once.`,
    );
  }

  private full(bytes: number, pages: number): MemfabricError {
    const s = this.stats();
    return new MemfabricError(
      ErrorCodes.HEAP_FULL,
      `no room for ${bytes} bytes (${pages} pages): no free run that long and top is ${s.topBytes} of ` +
        `${this.limit - this.base} bytes (${s.liveBytes} live). Free objects, or give the heap a larger size.`,
    );
  }

  // ---------------------------------------------------------------------------------------
  // Metadata helpers

  /** Current top (exclusive page). */
  get top(): number {
    return this.space.readU32(this.base + H_TOP);
  }

  private setTop(top: number): void {
    const sp = this.space;
    sp.writeU32(this.base + H_TOP, top);
    if (top > sp.readU32(this.base + H_PEAK)) sp.writeU32(this.base + H_PEAK, top);
  }

  private desc(page: number): number {
    return this.descBase + (page - this.basePage) * DESC_BYTES;
  }

  private setTail(page: number, kind: number, a: number): void {
    const d = this.desc(page);
    this.space.writeU8(d + D_KIND, kind);
    this.space.writeU32(d + D_A, a);
  }

  private binHeadAt(bin: number): number {
    return this.base + H_BIN_HEADS + 4 * bin;
  }

  private binHead(bin: number): number {
    return this.space.readU32(this.base + H_BIN_HEADS + 4 * bin);
  }

  /** Pushes `page` on the doubly linked list whose head word is at `headAt`. */
  private link(headAt: number, page: number): void {
    const sp = this.space;
    const old = sp.readU32(headAt);
    const d = this.desc(page);
    sp.writeU32(d + D_NEXT, old);
    sp.writeU32(d + D_PREV, 0);
    if (old !== 0) sp.writeU32(this.desc(old) + D_PREV, page);
    sp.writeU32(headAt, page);
  }

  private unlink(headAt: number, page: number): void {
    const sp = this.space;
    const d = this.desc(page);
    const next = sp.readU32(d + D_NEXT);
    const prev = sp.readU32(d + D_PREV);
    if (prev !== 0) sp.writeU32(this.desc(prev) + D_NEXT, next);
    else sp.writeU32(headAt, next);
    if (next !== 0) sp.writeU32(this.desc(next) + D_PREV, prev);
  }

  private addF64(field: number, delta: number): void {
    const at = this.base + field;
    this.space.writeF64(at, this.space.readF64(at) + delta);
  }
}

/** What check() needs of the allocator. */
interface CheckerView {
  space: AddressSpace;
  base: number;
  pageSize: number;
  dataStart: number;
  limitPage: number;
  sizes: ClassTable;
  desc(page: number): number;
}

/** Problems past this many are counted, not listed (a wrecked table would list millions). */
const PROBLEMS_MAX = 200;

/** The walk behind HeapAllocator.check(). Slow and thorough; allocates freely. */
class Checker {
  private readonly v: CheckerView;
  private readonly problems: string[] = [];
  private dropped = 0;
  private readonly freeRuns = new Map<number, number>();
  /** Spans with room (used < capacity), by class. */
  private readonly openSpans = new Map<number, number>();

  constructor(view: CheckerView) {
    this.v = view;
  }

  run(): AllocatorCheckResult {
    const { space: sp, base } = this.v;
    if (sp.readU32(base + H_MAGIC) !== MAGIC) {
      this.report(`header at ${hex(base)}: magic is ${hex(sp.readU32(base + H_MAGIC))}, not ${hex(MAGIC)}`);
      return this.result();
    }
    const top = sp.readU32(base + H_TOP);
    const peak = sp.readU32(base + H_PEAK);
    if (top < this.v.dataStart || top > this.v.limitPage) {
      this.report(`header: top page ${top} is outside ${this.v.dataStart}..${this.v.limitPage}`);
      return this.result();
    }
    if (peak < top || peak > this.v.limitPage)
      this.report(`header: peak page ${peak} is below top ${top} or past the limit`);
    const totals = this.walkRuns(top);
    this.checkBins(top);
    this.checkClassLists(top);
    const expect = (name: string, field: number, actual: number): void => {
      const stored = sp.readF64(base + field);
      if (stored !== actual) this.report(`header: ${name} is ${stored}, but the pages add up to ${actual}`);
    };
    for (let c = 0; c < this.v.sizes.count; c++) {
      expect(
        `live blocks of class ${c} (${this.v.sizes.blockSize[c]} B)`,
        H_CLASS_LIVE + 8 * c,
        totals.classLive[c]!,
      );
    }
    for (let c = this.v.sizes.count; c < MAX_CLASSES; c++) {
      // Slots past this page size's classes are never used: anything there is damage.
      expect(`live blocks of unused class slot ${c}`, H_CLASS_LIVE + 8 * c, 0);
      const head = sp.readU32(base + H_CLASS_HEADS + 4 * c);
      if (head !== 0) this.report(`header: unused class slot ${c} has a span list head (page ${head})`);
    }
    expect('large objects', H_LARGE_OBJECTS, totals.largeObjects);
    expect('free pages', H_FREE_PAGES, totals.freePages);
    expect('span pages', H_SPAN_PAGES, totals.spanPages);
    expect('large pages', H_LARGE_PAGES, totals.largePages);
    expect('span bitmap bytes', H_SPAN_HEADER_BYTES, totals.spanHeaderBytes);
    const counted = totals.freePages + totals.spanPages + totals.largePages;
    if (counted !== top - this.v.dataStart) {
      this.report(
        `pages below top: ${top - this.v.dataStart}, but runs account for ${counted} (pages lost or counted twice)`,
      );
    }
    return this.result();
  }

  private result(): AllocatorCheckResult {
    if (this.dropped > 0) this.problems.push(`... and ${this.dropped} more problems`);
    return { ok: this.problems.length === 0, problems: this.problems };
  }

  private report(problem: string): void {
    if (this.problems.length < PROBLEMS_MAX) this.problems.push(problem);
    else this.dropped++;
  }

  private where(page: number): string {
    return `page ${page} (${hex(page * this.v.pageSize)})`;
  }

  /** Walks the runs that tile [dataStart, top), checking each run's own pages and contents. */
  private walkRuns(top: number): {
    classLive: Float64Array;
    largeObjects: number;
    freePages: number;
    spanPages: number;
    largePages: number;
    spanHeaderBytes: number;
  } {
    const { space: sp, sizes } = this.v;
    const t = {
      classLive: new Float64Array(sizes.count),
      largeObjects: 0,
      freePages: 0,
      spanPages: 0,
      largePages: 0,
      spanHeaderBytes: 0,
    };
    let previousFree = false;
    let page = this.v.dataStart;
    while (page < top) {
      const d = this.v.desc(page);
      const kind = sp.readU8(d + D_KIND);
      let length: number;
      if (kind === K_FREE_HEAD) {
        length = sp.readU32(d + D_A);
        if (!this.runFits(page, length, top, 'free run')) return t;
        if (previousFree)
          this.report(`${this.where(page)}: free run follows another free run (not coalesced)`);
        if (page + length === top)
          this.report(`${this.where(page)}: free run ends at top (top should have been lowered)`);
        for (let p = page + 1; p < page + length - 1; p++)
          this.expectKind(p, K_FREE_INNER, 'inside a free run');
        if (length > 1) {
          const tail = page + length - 1;
          this.expectKind(tail, K_FREE_TAIL, 'at the end of a free run');
          const n = sp.readU32(this.v.desc(tail) + D_A);
          if (n !== length)
            this.report(`${this.where(tail)}: free run tail says ${n} pages, its head says ${length}`);
        }
        this.freeRuns.set(page, length);
        t.freePages += length;
        previousFree = true;
      } else if (kind === K_LARGE) {
        length = sp.readU32(d + D_A);
        if (!this.runFits(page, length, top, 'large object')) return t;
        this.expectTails(page, length, K_LARGE_TAIL, 'large object');
        t.largePages += length;
        t.largeObjects++;
        previousFree = false;
      } else if (kind === K_SPAN) {
        const c = sp.readU8(d + D_CLASS);
        if (c >= sizes.count) {
          this.report(`${this.where(page)}: span has size class ${c}, there are only ${sizes.count}`);
          return t;
        }
        length = sizes.spanPages[c]!;
        if (!this.runFits(page, length, top, 'span')) return t;
        this.expectTails(page, length, K_SPAN_TAIL, 'span');
        const used = this.checkSpan(page, c);
        t.spanPages += length;
        t.spanHeaderBytes += sizes.firstBlock[c]!;
        t.classLive[c] += used;
        previousFree = false;
      } else {
        this.report(
          `${this.where(page)}: descriptor kind ${KIND_NAMES[kind] ?? kind} where a run should start; ` +
            'the walk stops here (every page above is unaccounted for)',
        );
        return t;
      }
      page += length;
    }
    return t;
  }

  private runFits(page: number, length: number, top: number, what: string): boolean {
    if (length >= 1 && page + length <= top) return true;
    this.report(
      `${this.where(page)}: ${what} of ${length} pages does not fit below top page ${top}; the walk stops here`,
    );
    return false;
  }

  private expectKind(page: number, kind: number, what: string): void {
    const got = this.v.space.readU8(this.v.desc(page) + D_KIND);
    if (got !== kind)
      this.report(
        `${this.where(page)}: descriptor is ${KIND_NAMES[got] ?? got}, expected ${KIND_NAMES[kind]} ${what}`,
      );
  }

  private expectTails(head: number, length: number, kind: number, what: string): void {
    for (let p = head + 1; p < head + length; p++) {
      const d = this.v.desc(p);
      const got = this.v.space.readU8(d + D_KIND);
      const points = this.v.space.readU32(d + D_A);
      if (got !== kind || points !== head) {
        this.report(
          `${this.where(p)}: descriptor is ${KIND_NAMES[got] ?? got} -> page ${points}, expected ${KIND_NAMES[kind]} -> ${head} inside the ${what} at page ${head}`,
        );
      }
    }
  }

  /** Checks one span's counts, bitmap and free list; returns its used count. */
  private checkSpan(span: number, c: number): number {
    const { space: sp, sizes } = this.v;
    const d = this.v.desc(span);
    const at = `${this.where(span)}: span of ${sizes.blockSize[c]}-byte blocks`;
    const cap = sizes.capacity[c]!;
    const used = sp.readU16(d + D_USED);
    const init = sp.readU16(d + D_INIT);
    const spanAddr = span * this.v.pageSize;
    if (init > cap) this.report(`${at}: ${init} blocks carved, capacity is ${cap}`);
    let set = 0;
    const allocated = new Uint8Array(cap);
    for (let i = 0; i < cap; i++) {
      if ((sp.readU8(spanAddr + (i >>> 3)) >>> (i & 7)) & 1) {
        set++;
        allocated[i] = 1;
        if (i >= init)
          this.report(`${at}: block ${i} is marked allocated but was never carved (init ${init})`);
      }
    }
    for (let i = cap; i < sizes.firstBlock[c]! * 8; i++) {
      if ((sp.readU8(spanAddr + (i >>> 3)) >>> (i & 7)) & 1)
        this.report(`${at}: bitmap bit ${i} is set past the capacity ${cap}`);
    }
    if (set !== used) this.report(`${at}: used count is ${used} but ${set} blocks are marked allocated`);
    let listed = 0;
    const seen = new Uint8Array(cap);
    for (let link = sp.readU16(d + D_FREE); link !== 0;) {
      const i = link - 1;
      if (i >= init || i >= cap) {
        this.report(`${at}: free list links to block ${i}, beyond the ${init} carved blocks`);
        break;
      }
      const address = spanAddr + sizes.firstBlock[c]! + i * sizes.blockSize[c]!;
      if (seen[i]) {
        this.report(`${at}: free list visits block ${i} (${hex(address)}) twice (a cycle)`);
        break;
      }
      seen[i] = 1;
      if (allocated[i])
        this.report(`${at}: block ${i} (${hex(address)}) is on the free list but marked allocated`);
      listed++;
      link = sp.readU32(address);
    }
    if (used <= init && listed + used !== init) {
      this.report(`${at}: ${used} used + ${listed} on the free list != ${init} carved (blocks lost)`);
    }
    if (used < cap) this.openSpans.set(span, c);
    return used;
  }

  private checkBins(top: number): void {
    const sp = this.v.space;
    let listed = 0;
    for (let b = 0; b < NUM_BINS; b++) {
      let prev = 0;
      const seen = new Set<number>();
      for (let run = sp.readU32(this.v.base + H_BIN_HEADS + 4 * b); run !== 0;) {
        if (run < this.v.dataStart || run >= top || seen.has(run)) {
          this.report(
            `free bin ${b}: entry page ${run} is ${seen.has(run) ? 'listed twice (a cycle)' : 'outside the heap pages'}`,
          );
          break;
        }
        seen.add(run);
        const d = this.v.desc(run);
        const length = this.freeRuns.get(run);
        if (length === undefined) {
          this.report(`free bin ${b}: ${this.where(run)} is listed but is not the head of a free run`);
        } else {
          listed++;
          if (binOf(length) !== b)
            this.report(
              `free bin ${b}: ${this.where(run)} holds a run of ${length} pages, which belongs in bin ${binOf(length)}`,
            );
        }
        if (sp.readU32(d + D_PREV) !== prev)
          this.report(
            `free bin ${b}: ${this.where(run)} has back link ${sp.readU32(d + D_PREV)}, expected ${prev}`,
          );
        prev = run;
        run = sp.readU32(d + D_NEXT);
      }
    }
    if (listed !== this.freeRuns.size) {
      for (const [run, length] of this.freeRuns) {
        if (!this.inList(sp.readU32(this.v.base + H_BIN_HEADS + 4 * binOf(length)), run)) {
          this.report(`${this.where(run)}: free run of ${length} pages is in no free bin (leaked)`);
        }
      }
    }
  }

  private checkClassLists(top: number): void {
    const { space: sp, sizes } = this.v;
    let listed = 0;
    for (let c = 0; c < sizes.count; c++) {
      let prev = 0;
      const seen = new Set<number>();
      for (let span = sp.readU32(this.v.base + H_CLASS_HEADS + 4 * c); span !== 0;) {
        if (span < this.v.dataStart || span >= top || seen.has(span)) {
          this.report(
            `class ${c} span list: entry page ${span} is ${seen.has(span) ? 'listed twice (a cycle)' : 'not a valid span'}`,
          );
          break;
        }
        seen.add(span);
        const d = this.v.desc(span);
        const open = this.openSpans.get(span);
        if (open === undefined)
          this.report(
            `class ${c} span list: ${this.where(span)} is listed but is not a span with free blocks`,
          );
        else if (open !== c)
          this.report(`class ${c} span list: ${this.where(span)} is a span of class ${open}`);
        else listed++;
        if (sp.readU32(d + D_PREV) !== prev)
          this.report(
            `class ${c} span list: ${this.where(span)} has back link ${sp.readU32(d + D_PREV)}, expected ${prev}`,
          );
        prev = span;
        span = sp.readU32(d + D_NEXT);
      }
    }
    if (listed !== this.openSpans.size) {
      for (const [span, c] of this.openSpans) {
        if (!this.inList(sp.readU32(this.v.base + H_CLASS_HEADS + 4 * c), span)) {
          this.report(
            `${this.where(span)}: span of class ${c} has free blocks but is not in its class list (unreachable)`,
          );
        }
      }
    }
  }

  private inList(head: number, page: number): boolean {
    const sp = this.v.space;
    for (let at = head, steps = 0; at !== 0 && steps <= this.v.limitPage; steps++) {
      if (at === page) return true;
      if (at < this.v.dataStart || at >= this.v.limitPage) return false; // a broken link, reported by the list walk
      at = sp.readU32(this.v.desc(at) + D_NEXT);
    }
    return false;
  }
}
