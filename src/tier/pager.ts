/**
 * Pager: address spaces larger than their resident budget (seed 003), with pages moved out
 * to a page store and back, clone-chain swap dedup and a destager in front of the store
 * (seed 004).
 *
 * The pager owns a frame pool whose capacity is the resident budget. When a call needs a
 * frame and none is free, the pool asks the pager to make room (`makeRoom`), and the pager
 * runs CLOCK (second chance) over the leaf entries of the pool: an entry whose accessed bit
 * is set gets the bit cleared and is passed over; one whose bit is clear is evicted. The
 * memory core sets the bit whenever it makes a translation, and the pager drops every cached
 * translation after a sweep, so a page used since the sweep is seen as used again.
 *
 * Evicting a page, cheapest case first:
 *   - its frame already matches a store slot (it was faulted in and not written since): the
 *     entry names that slot, no I/O;
 *   - its bytes are all zero: the entry becomes the zero page, nothing is stored;
 *   - an identical page of the same clone chain is stored (hash, then a byte compare): the
 *     entry shares that slot, no I/O;
 *   - otherwise a new slot is allocated and the bytes are queued to the destager, which copies
 *     them, so the frame is reused at once.
 * The entry keeps its epoch, so a page written since epoch N, evicted and faulted back, is
 * still reported dirty since N.
 *
 * Faults. A read or write that meets a swapped entry fetches it synchronously: the store runs
 * in a worker thread and the caller waits on Atomics.wait (StoreChannel), except on a local swap
 * file, where the faulting thread preads the slot itself (direct-read.ts: the round trip through
 * the worker cost far more than the pread). A fault's other costs, measured on the tier bench's
 * Zipf reads: CLOCK eviction about 1-2 us per fault amortised over an evictBatch once the
 * pages it drops are clean (about 10 us while dirty pages are first written back), the rest of
 * the bookkeeping under a microsecond; the pread of a page cold in the page cache is what
 * remains. Sequential faults
 * read ahead `prefetch` pages in one batch, into frames that are already free (a prefetch
 * never evicts). `space.load(range)` / `readAsync` / `writeAsync` fetch without blocking.
 * Resident pages never take either path.
 *
 * When the store fails. The first failed store operation fails the store for good (see
 * destage-queue.ts). From then on every call answers without waiting on the store beyond one
 * operation already in flight (which the store bounds by its own timeout): a call that needs
 * an eviction throws STORE_FAILED and changes nothing; a fault reads what the store still
 * serves or throws STORE_FAILED; flush() rejects with STORE_FAILED at once; freeing pages
 * (destroy, trim) always succeeds, dropping the discards. close() always releases the worker,
 * the store and its file, and rejects with the failure afterwards. Every STORE_FAILED carries
 * the error underneath as `cause`.
 */
import { tmpdir } from 'node:os';
import { xxh32 } from '@node-rs/xxhash';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { parseSize } from '../size.js';
import { AddressSpace, type AddressSpaceOptions } from '../memory/address-space.js';
import { FIRST_FRAME, FramePool, NO_FRAME, ZERO_FRAME, PAGE_SIZE_DEFAULT } from '../memory/frame-pool.js';
import { grown } from '../memory/typed-arrays.js';
import { LEAF_BITS, LEAF_ENTRIES } from '../memory/leaf-arena.js';
import { swappedEntry, type PagingBackend } from '../memory/paging.js';
import { slotPosition, type StoreSpec } from './page-store.js';
import { StoreChannel, type StoreChannelStats } from './store-channel.js';
import { SwapSlots } from './swap-slots.js';

export const STORE_SIZE_DEFAULT = '64GiB';
export const PREFETCH_DEFAULT = 16;
export const EVICT_BATCH_DEFAULT = 64;
/** Pages an async load keeps in flight at once (each holds a frame outside any page table). */
const LOAD_IN_FLIGHT_MAX = 64;

export interface PagerOptions {
  /** Resident memory: the most bytes of pages kept in frames at once ("512MiB"). */
  budget: number | string;
  pageSize?: number;
  /**
   * Where evicted pages go. Default: a temporary swap file in the OS temp directory, unlinked
   * as soon as it is open (so it never outlives the process).
   */
  store?: StoreSpec;
  /** The most bytes the store may hold (its slot count times the page size). Default 64 GiB. */
  storeSize?: number | string;
  /** Pages read ahead on a sequential fault (0 = off). Default 16. */
  prefetch?: number;
  /** Pages evicted per CLOCK run, so one run serves many allocations. Default 64. */
  evictBatch?: number;
  /** Entries in the destage queue (each holds one page). Default 256. */
  queueEntries?: number;
  /** Share identical evicted pages within a clone chain (seed 004). Default true. */
  dedup?: boolean;
  /** Page-content hash (tests force collisions with it). Default xxh32. */
  hash?: (page: Uint8Array) => number;
  /**
   * Keep a checksum (xxh32) of every slot's bytes and verify it whenever a slot is read back:
   * a page that does not match fails the read with HEAP_CORRUPT instead of handing out wrong
   * bytes. The heap turns this on: its image outlives the process, and a flipped byte on disk
   * must be found. Default false (swap is scratch and lives no longer than the process).
   */
  checksums?: boolean;
}

export interface PagerStats {
  /** Resident budget in bytes, and the bytes of frames in use now. */
  budgetBytes: number;
  residentBytes: number;
  /** Translations that found their page resident (TLB hits are free and not counted). */
  hits: number;
  /** Pages fetched synchronously (reads and writes that met a swapped page). */
  faults: number;
  /** Pages fetched by load / readAsync / writeAsync. */
  asyncLoads: number;
  /** Pages read ahead by sequential prefetch. */
  prefetched: number;
  /** Pages moved out of memory, and how: */
  evictions: number;
  /** written to a new slot of the store */
  writeBacks: number;
  /** dropped without I/O because the store already held their bytes */
  cleanDrops: number;
  /** found all zeros: became the zero page, nothing stored */
  zeroDrops: number;
  /** shared an identical page of the same clone chain already in the store */
  dedupHits: number;
  /** Store slots holding a page now. */
  slotsInUse: number;
  /** Swapped pages across all spaces (each shared leaf entry counted once). */
  swappedPages: number;
  /** Bytes the store would hold without swap dedup, minus what it holds. */
  dedupSavedBytes: number;
  /** The store's own counters (reads, writes, bytes, destage queue). */
  store: StoreChannelStats;
}

export class Pager implements PagingBackend {
  readonly pool: FramePool;
  readonly pageSize: number;
  readonly prefetch: number;
  readonly evictBatch: number;
  private readonly channel: StoreChannel;
  private readonly slots: SwapSlots;
  private readonly dedup: boolean;
  private readonly hash: (page: Uint8Array) => number;
  /** Where the CLOCK hand stands: an index into the leaf arena's entries. */
  private hand = LEAF_ENTRIES;
  /** A page-sized buffer the worker can fill (verifying a dedup candidate not resident). */
  private readonly scratch: Uint8Array;
  private readonly scratchSegment: number;
  private readonly zeroPage: Buffer;
  /** The page after the last one a fault installed, and its space: a fault there is sequential. */
  private seqSpace: AddressSpace | undefined;
  private seqNext = -1;
  private readonly batchSlots: Int32Array;
  private readonly batchSegments: Int32Array;
  private readonly batchOffsets: Float64Array;
  private readonly batchEntries: Float64Array;
  private readonly batchFrames: Int32Array;
  private closed = false;
  private readonly checksums: boolean;
  private readonly storeName: string;
  private readonly storeSpec: StoreSpec;
  /** Pages stagePage had to queue for writing (the rest were in the store already). */
  stagedWrites = 0;
  /** With checksums: xxh32 of each slot's bytes, valid where `sumKnown` is 1. */
  private slotSums = new Uint32Array(0);
  private sumKnown = new Uint8Array(0);
  private counters = {
    faults: 0,
    asyncLoads: 0,
    prefetched: 0,
    evictions: 0,
    writeBacks: 0,
    cleanDrops: 0,
    zeroDrops: 0,
    dedupHits: 0,
  };

  /** Starts the store's I/O worker and returns a pager over a fresh pool of `budget` bytes. */
  static async open(options: PagerOptions): Promise<Pager> {
    const pageSize = options.pageSize ?? PAGE_SIZE_DEFAULT;
    const budget = parseSize(options.budget, 'budget');
    const storeSize = parseSize(options.storeSize ?? STORE_SIZE_DEFAULT, 'storeSize');
    const prefetch = options.prefetch ?? PREFETCH_DEFAULT;
    const evictBatch = options.evictBatch ?? EVICT_BATCH_DEFAULT;
    if (!Number.isInteger(prefetch) || prefetch < 0 || prefetch > 1024) {
      throw invalidArgument(`prefetch ${prefetch} must be a whole number of pages from 0 to 1024`);
    }
    if (!Number.isInteger(evictBatch) || evictBatch < 1) {
      throw invalidArgument(`evictBatch ${evictBatch} must be a whole number of pages, at least 1`);
    }
    const pool = new FramePool({ pageSize, capacity: budget, shared: true });
    if (pool.capacity < 4) {
      throw invalidArgument(
        `budget ${budget} bytes holds fewer than 4 pages of ${pageSize} bytes; give more`,
      );
    }
    const capacity = Math.floor(storeSize / pageSize);
    if (capacity < 1 || capacity > 2 ** 31 - 1) {
      throw invalidArgument(`storeSize ${storeSize} must hold 1 to 2^31 - 1 pages of ${pageSize} bytes`);
    }
    const store: StoreSpec = options.store ?? { kind: 'file', directory: tmpdir() };
    const scratch = new SharedArrayBuffer(pageSize);
    const segments = pool.segments.map((segment) => segment.buffer as SharedArrayBuffer);
    const channel = await StoreChannel.open({
      spec: store,
      pageSize,
      capacity,
      segments: [...segments, scratch],
      ...(options.queueEntries === undefined ? {} : { queueEntries: options.queueEntries }),
    });
    return new Pager(pool, channel, capacity, segments.length, new Uint8Array(scratch), options);
  }

  private constructor(
    pool: FramePool,
    channel: StoreChannel,
    capacity: number,
    scratchSegment: number,
    scratch: Uint8Array,
    options: PagerOptions,
  ) {
    this.pool = pool;
    this.pageSize = pool.pageSize;
    this.channel = channel;
    this.storeName = describeStore(options.store);
    this.storeSpec = options.store ?? { kind: 'file', directory: tmpdir() };
    this.slots = new SwapSlots(capacity, this.storeName);
    this.prefetch = options.prefetch ?? PREFETCH_DEFAULT;
    this.evictBatch = Math.min(options.evictBatch ?? EVICT_BATCH_DEFAULT, Math.max(1, pool.capacity >> 2));
    this.dedup = options.dedup ?? true;
    this.hash = options.hash ?? defaultHash;
    this.scratch = scratch;
    this.scratchSegment = scratchSegment;
    this.zeroPage = Buffer.alloc(pool.pageSize);
    const batch = Math.max(1, this.prefetch + 1);
    this.batchSlots = new Int32Array(batch);
    this.batchSegments = new Int32Array(batch);
    this.batchOffsets = new Float64Array(batch);
    this.batchEntries = new Float64Array(batch);
    this.batchFrames = new Int32Array(batch);
    this.checksums = options.checksums ?? false;
    pool.attachPaging(this);
  }

  /** A new address space over this pager's pool (its forks share the pool and the budget). */
  createSpace(options: AddressSpaceOptions): AddressSpace {
    this.assertOpen();
    return new AddressSpace(this.pool, options);
  }

  // ---------------------------------------------------------------------------------------
  // PagingBackend: called by the memory core

  makeRoom(count: number): void {
    this.assertOpen();
    const pool = this.pool;
    const arena = pool.leaves;
    const target = Math.min(pool.capacity, Math.max(count, this.evictBatch));
    const entries = arena.entries;
    const accessed = arena.accessed;
    const refs = arena.refs;
    const end = arena.highWater * LEAF_ENTRIES;
    // Two full turns of the hand: the first may only clear accessed bits.
    let budget = 2 * end;
    let hand = this.hand;
    try {
      while (pool.free < target && budget > 0) {
        if (hand >= end) hand = LEAF_ENTRIES;
        if (refs[hand >>> LEAF_BITS] === 0) {
          // A free leaf: skip all of it.
          const next = ((hand >>> LEAF_BITS) + 1) * LEAF_ENTRIES;
          budget -= next - hand;
          hand = next;
          continue;
        }
        const frame = entries[hand]!;
        if (frame >= FIRST_FRAME) {
          if (accessed[hand] !== 0) accessed[hand] = 0;
          else this.evict(hand, frame);
        }
        hand++;
        budget--;
      }
    } finally {
      this.hand = hand;
      // Frames just freed may be cached as translations, and pages passed over must set their
      // accessed bits again when next used.
      pool.flushAllTranslations();
    }
  }

  fetch(space: AddressSpace, page: number, slot: number, frame: number): void {
    this.assertOpen();
    const pool = this.pool;
    this.counters.faults++;
    let count = 1;
    this.batchSlots[0] = slot;
    this.batchSegments[0] = frame >>> pool.segmentShift;
    this.batchOffsets[0] = pool.frameOffset(frame);
    if (this.prefetch > 0 && space === this.seqSpace && page === this.seqNext) {
      count = this.gatherPrefetch(space, page, count);
    }
    try {
      if (count === 1) this.channel.readSync(slot, this.batchSegments[0]!, this.batchOffsets[0]!);
      else this.channel.readBatchSync(this.batchSlots, this.batchSegments, this.batchOffsets, count);
    } catch (error) {
      for (let i = 1; i < count; i++) pool.release(this.batchFrames[i]!);
      throw error;
    }
    if (this.checksums) {
      const bad = this.mismatch(slot, frame);
      if (bad !== undefined) {
        for (let j = 1; j < count; j++) pool.release(this.batchFrames[j]!);
        throw bad;
      }
    }
    const arena = pool.leaves;
    let installed = 0;
    for (let i = 1; i < count; i++) {
      const prefetchedFrame = this.batchFrames[i]!;
      // A damaged page read ahead is dropped, not reported: the page asked for is intact, and
      // the damaged one stays swapped, so a read of it fails with its own HEAP_CORRUPT.
      if (this.checksums && this.mismatch(this.batchSlots[i]!, prefetchedFrame) !== undefined) {
        pool.release(prefetchedFrame);
        continue;
      }
      // The entry's slot reference becomes the frame's "copy in the store".
      arena.map(this.batchEntries[i]!, prefetchedFrame);
      pool.frameSlot[prefetchedFrame] = this.batchSlots[i]! + 1;
      installed++;
    }
    this.counters.prefetched += installed;
    this.seqSpace = space;
    this.seqNext = page + count;
  }

  retainSlot(slot: number): void {
    this.slots.retain(slot);
  }

  releaseSlot(slot: number): void {
    // After close the store is gone: spaces destroyed late just drop their references. The
    // channel never throws for the store's state here (a failed store drops the discard), so
    // freeing memory always works.
    if (this.slots.release(slot) && !this.closed) this.channel.enqueueDiscard(slot);
  }

  async load(space: AddressSpace, first: number, last: number): Promise<void> {
    this.assertOpen();
    const pool = this.pool;
    const arena = pool.leaves;
    const inFlight: Promise<void>[] = [];
    const limit = Math.max(1, Math.min(LOAD_IN_FLIGHT_MAX, pool.capacity >> 2));
    let failure: unknown;
    for (let page = first; page <= last && failure === undefined; page++) {
      const at = space.entryIndexAt(page);
      if (at < 0) {
        page = Math.floor(page / LEAF_ENTRIES) * LEAF_ENTRIES + LEAF_ENTRIES - 1; // no leaf: skip it
        continue;
      }
      if (arena.entries[at]! >= 0) continue;
      if (pool.free === 0) pool.reserve(1);
      // Making room may not evict this page (it is not resident), but read the entry again.
      const entry = space.entryIndexAt(page);
      const swapped = arena.entries[entry]!;
      if (swapped >= 0) continue;
      const slot = -1 - swapped;
      const frame = pool.allocate();
      // Hold the slot while the read is in flight, so it cannot be freed and reused meanwhile.
      this.slots.retain(slot);
      const read = this.channel
        .readAsync(slot, frame >>> pool.segmentShift, pool.frameOffset(frame))
        .then(
          () => {
            const bad = this.checksums ? this.mismatch(slot, frame) : undefined;
            if (bad === undefined) {
              this.installLoaded(space, page, swapped, frame);
            } else {
              pool.release(frame);
              failure ??= bad;
            }
          },
          (error: unknown) => {
            pool.release(frame);
            failure ??= error;
          },
        )
        .finally(() => this.releaseSlot(slot));
      inFlight.push(read);
      if (inFlight.length >= limit) {
        await Promise.all(inFlight);
        inFlight.length = 0;
      }
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
  }

  // ---------------------------------------------------------------------------------------
  // Public controls

  /**
   * Evicts pages until at most `residentBytes` of frames are in use (or nothing more can
   * go): hands memory back under pressure, or pushes a working set out on purpose.
   */
  shrink(residentBytes = 0): void {
    this.assertOpen();
    const keep = Math.floor(parseSize(residentBytes, 'residentBytes') / this.pageSize);
    const pool = this.pool;
    if (pool.used <= keep) return;
    this.makeRoom(pool.capacity - keep);
  }

  /** Waits until every page queued for the store is written and the store has flushed. */
  async flush(): Promise<void> {
    this.assertOpen();
    await this.channel.flush();
  }

  stats(): PagerStats {
    const arena = this.pool.leaves;
    let swappedPages = 0;
    const end = arena.highWater * LEAF_ENTRIES;
    for (let i = LEAF_ENTRIES; i < end; i++) if (arena.entries[i]! < 0) swappedPages++;
    return {
      budgetBytes: this.pool.capacity * this.pageSize,
      residentBytes: this.pool.used * this.pageSize,
      hits: this.pool.translations,
      ...this.counters,
      slotsInUse: this.slots.inUse,
      swappedPages,
      dedupSavedBytes: Math.max(0, swappedPages - this.slots.inUse) * this.pageSize,
      store: this.channel.stats(),
    };
  }

  // ---------------------------------------------------------------------------------------
  // Slot-level access, for the heap: its image is this pager's store, and it keeps its own
  // references on the slots a checkpoint names (see src/heap/checkpoint.ts).

  /**
   * While opening a store that already holds pages (a heap image): takes a reference on
   * `slot` and records its checksum. Call `sealAdopted()` once every slot is adopted.
   */
  adoptSlot(slot: number, checksum?: number): void {
    this.assertOpen();
    this.slots.adopt(slot);
    if (this.checksums && checksum !== undefined) this.recordSum(slot, checksum);
  }

  /**
   * adoptSlot for a whole page map at once: `times` references on every slot word
   * `words[2·i]` >= `first` (i below `count`), each with the checksum `words[2·i + 1]`.
   */
  adoptMapped(words: Uint32Array, count: number, first: number, times: number): void {
    this.assertOpen();
    this.slots.adoptMany(words, 2, count, first, times);
    if (!this.checksums) return;
    for (let i = 0; i < count; i++) {
      const slot = words[2 * i]!;
      if (slot < first) continue;
      if (slot >= this.slotSums.length) this.recordSum(slot, words[2 * i + 1]!);
      else {
        this.slotSums[slot] = words[2 * i + 1]!;
        this.sumKnown[slot] = 1;
      }
    }
  }

  /** One reference on each slot in [first, end): a fork's base slots, never to be handed out. */
  adoptRange(first: number, end: number): void {
    this.assertOpen();
    this.slots.adoptRange(first, end);
  }

  /** Ends adoption: every slot nothing adopted is free for new pages. */
  sealAdopted(): void {
    this.slots.sealAdopted();
  }

  /**
   * Makes sure a slot holds the current bytes of `page` of `space` without evicting it, and
   * returns the slot with one new reference for the caller (or -1 for a hole, -2 for a zero
   * page: nothing to store). A resident page already copied to a slot costs nothing; another
   * resident page is queued to a new slot, and its frame remembers that slot (so a later
   * eviction costs no I/O). Resolves once the bytes are in the destage queue: durable after
   * `flush()`. The page must not change meanwhile (the heap passes a frozen fork).
   */
  async stagePage(space: AddressSpace, page: number): Promise<number> {
    this.assertOpen();
    const pool = this.pool;
    const at = space.entryIndexAt(page);
    if (at < 0) return -1;
    const entry = pool.leaves.entries[at]!;
    if (entry === NO_FRAME) return -1;
    if (entry === ZERO_FRAME) return -2;
    if (entry < 0) {
      const slot = -1 - entry;
      this.slots.retain(slot);
      return slot;
    }
    const copy = pool.frameSlot[entry]!;
    if (copy !== 0) {
      this.slots.retain(copy - 1);
      return copy - 1;
    }
    const bytes = pool.frameBytes(entry);
    if (bytes.equals(this.zeroPage)) return -2;
    // Hold the frame while the copy is queued: an eviction meanwhile drops only the entry's
    // reference, so the frame (and its bytes) cannot be reused under the queued copy.
    pool.refcount[entry]!++;
    const slot = this.slots.allocate();
    try {
      await this.channel.enqueueWriteAsync(slot, bytes);
    } catch (error) {
      this.slots.unallocate(slot);
      pool.release(entry);
      throw error;
    }
    if (this.checksums) this.recordSum(slot, xxh32(bytes, 0) >>> 0);
    this.stagedWrites++;
    this.slots.retain(slot); // the caller's reference; the allocation's is the frame's copy
    if (pool.frameSlot[entry] === 0) pool.frameSlot[entry] = slot + 1;
    else this.slots.release(slot); // a concurrent eviction already copied it elsewhere
    pool.release(entry);
    return slot;
  }

  /** Writes `bytes` (one page) to a new slot and returns it with one reference for the caller. */
  async storeBytes(bytes: Uint8Array): Promise<number> {
    this.assertOpen();
    const slot = this.slots.allocate();
    try {
      await this.channel.enqueueWriteAsync(slot, bytes);
    } catch (error) {
      this.slots.unallocate(slot);
      throw error;
    }
    if (this.checksums) this.recordSum(slot, xxh32(bytes, 0) >>> 0);
    return slot;
  }

  /**
   * Overwrites a slot the caller owns outright (a heap's superblock slots, adopted and never
   * released). Resolves once queued; durable after `flush()`.
   */
  async overwriteSlot(slot: number, bytes: Uint8Array): Promise<void> {
    this.assertOpen();
    await this.channel.enqueueWriteAsync(slot, bytes);
    if (this.checksums) this.recordSum(slot, xxh32(bytes, 0) >>> 0);
  }

  /** Reads slot `slot` into `dst` (one page) without blocking; no checksum check (the caller checks). */
  async readSlot(slot: number, dst: Uint8Array): Promise<void> {
    this.assertOpen();
    const pool = this.pool;
    if (pool.free === 0) pool.reserve(1);
    const frame = pool.allocate();
    try {
      await this.channel.readAsync(slot, frame >>> pool.segmentShift, pool.frameOffset(frame));
      const offset = pool.frameOffset(frame);
      dst.set(pool.frameSegment(frame).subarray(offset, offset + this.pageSize));
    } finally {
      pool.release(frame);
    }
  }

  /** The checksum recorded for `slot` (with `checksums` on), or undefined. */
  slotChecksum(slot: number): number | undefined {
    return slot < this.sumKnown.length && this.sumKnown[slot] === 1 ? this.slotSums[slot] : undefined;
  }

  /** Slots below the highest one ever used: the store's extent, in slots. */
  get slotHighWater(): number {
    return this.slots.highWater;
  }

  /** @internal References held on `slot` (entries plus frames whose bytes it holds): for tests. */
  slotReferences(slot: number): number {
    return this.slots.references(slot);
  }

  /**
   * Flushes and closes the store and stops its worker. Destroy the spaces first: a space
   * whose pages are out in the store cannot fetch them once the pager is closed. Always
   * releases the worker, the store and its file; rejects afterwards with the store's failure
   * (STORE_FAILED) if it had one. Every call answers the same (the first close's outcome).
   */
  close(): Promise<void> {
    this.closed = true;
    return this.channel.close();
  }

  /** @internal Whether the store's I/O worker still runs (tests check close ended it). */
  get storeWorkerRunning(): boolean {
    return this.channel.workerRunning;
  }

  // ---------------------------------------------------------------------------------------
  // Private machinery

  /** Moves the page in leaf entry `entry` (mapping `frame`) out of memory; see the overview. */
  private evict(entry: number, frame: number): void {
    const pool = this.pool;
    const arena = pool.leaves;
    const shared = pool.refcount[frame]! > 1;
    const copy = pool.frameSlot[frame]!;
    let slot: number;
    if (copy !== 0) {
      slot = copy - 1;
      this.slots.retain(slot);
      this.counters.cleanDrops++;
    } else {
      // One view per evicted page: eviction is not the resident path, and xxh32 needs a view.
      const bytes = pool.frameBytes(frame);
      if (bytes.equals(this.zeroPage)) {
        arena.entries[entry] = ZERO_FRAME;
        pool.zeroEntries++;
        pool.release(frame);
        this.counters.zeroDrops++;
        this.counters.evictions++;
        return;
      }
      const chain = arena.chain[entry >>> LEAF_BITS]!;
      const hash = this.dedup ? this.hash(bytes) >>> 0 : 0;
      const sum = this.checksums
        ? this.dedup && this.hash === defaultHash
          ? hash
          : xxh32(bytes, 0) >>> 0
        : 0;
      slot = this.dedup ? this.findStored(chain, hash, bytes) : -1;
      if (slot >= 0) {
        this.slots.retain(slot);
        this.counters.dedupHits++;
      } else {
        slot = this.slots.allocate();
        try {
          this.channel.enqueueWrite(slot, bytes);
        } catch (error) {
          this.slots.unallocate(slot);
          throw error;
        }
        if (this.checksums) this.recordSum(slot, sum);
        if (this.dedup) this.slots.index(slot, chain, hash);
        this.counters.writeBacks++;
      }
      if (shared) {
        // Other entries still map the frame: remember that the store now holds its bytes.
        this.slots.retain(slot);
        pool.frameSlot[frame] = slot + 1;
      }
    }
    arena.entries[entry] = swappedEntry(slot);
    pool.release(frame);
    this.counters.evictions++;
  }

  /** A slot of clone chain `chain` holding exactly `bytes`, or -1. */
  private findStored(chain: number, hash: number, bytes: Uint8Array): number {
    for (let slot = this.slots.first(chain, hash); slot >= 0; slot = this.slots.following(slot)) {
      this.channel.readSync(slot, this.scratchSegment, 0);
      if (Buffer.compare(this.scratch, bytes) === 0) return slot;
    }
    return -1;
  }

  /**
   * Adds the swapped pages after `page` to the fault's read batch, as long as they are
   * swapped and free frames remain (prefetch never evicts). Returns the batch size.
   */
  private gatherPrefetch(space: AddressSpace, page: number, count: number): number {
    const pool = this.pool;
    const entries = pool.leaves.entries;
    const lastPage = space.pages - 1;
    for (let next = page + 1; next <= lastPage && count <= this.prefetch; next++) {
      if (pool.free === 0) break;
      const entry = space.entryIndexAt(next);
      if (entry < 0 || entries[entry]! >= 0) break;
      const frame = pool.allocate();
      this.batchSlots[count] = -1 - entries[entry]!;
      this.batchSegments[count] = frame >>> pool.segmentShift;
      this.batchOffsets[count] = pool.frameOffset(frame);
      this.batchEntries[count] = entry;
      this.batchFrames[count] = frame;
      count++;
    }
    return count;
  }

  /** An async read finished: install the frame if the page is still the same swapped page. */
  private installLoaded(space: AddressSpace, page: number, swapped: number, frame: number): void {
    const pool = this.pool;
    const entry = space.isDestroyed ? -1 : space.entryIndexAt(page);
    if (entry < 0 || pool.leaves.entries[entry] !== swapped) {
      pool.release(frame); // faulted in meanwhile, rewritten, trimmed or destroyed
      return;
    }
    pool.leaves.map(entry, frame);
    pool.leaves.accessed[entry] = 1;
    pool.frameSlot[frame] = -swapped;
    this.counters.asyncLoads++;
  }

  private recordSum(slot: number, sum: number): void {
    if (slot >= this.slotSums.length) {
      let length = Math.max(1024, this.slotSums.length);
      while (length <= slot) length *= 2;
      this.slotSums = grown(this.slotSums, length);
      this.sumKnown = grown(this.sumKnown, length);
    }
    this.slotSums[slot] = sum;
    this.sumKnown[slot] = 1;
  }

  /** HEAP_CORRUPT when frame `frame` (just read from `slot`) does not match the slot's checksum. */
  private mismatch(slot: number, frame: number): MemfabricError | undefined {
    const expected = this.slotChecksum(slot);
    if (expected === undefined) return undefined;
    const found = xxh32(this.pool.frameBytes(frame), 0) >>> 0;
    if (found === expected) return undefined;
    // The byte the user should look at comes from the store's own layout (a swap file's slot s
    // is at (s + 1) · pageSize, after its header), not from slot · pageSize.
    const at = slotPosition(this.storeSpec, slot, this.pageSize);
    const where =
      at === undefined ? '' : ` (byte ${at.byte}${at.base === undefined ? '' : ` of base image ${at.base}`})`;
    return new MemfabricError(
      ErrorCodes.HEAP_CORRUPT,
      `page store ${this.storeName}: slot ${slot}${where} does not match its ` +
        `checksum (found ${hex(found)}, recorded ${hex(expected)}): the image was changed or damaged ` +
        'outside memfabric; run `memfabric heap check` on it and restore it from a copy',
    );
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new MemfabricError(
        ErrorCodes.STORE_CLOSED,
        'this pager was closed; open a new one (and destroy spaces before closing their pager)',
      );
    }
  }
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(8, '0')}`;
}

function defaultHash(page: Uint8Array): number {
  return xxh32(page, 0);
}

function describeStore(spec: StoreSpec | undefined): string {
  if (!spec) return 'temporary swap file';
  if (spec.kind === 'file')
    return spec.path === undefined ? `temporary swap file in ${spec.directory}` : `file ${spec.path}`;
  if (spec.kind === 'image') return `heap image ${spec.path}`;
  if (spec.kind === 'nbd') return `nbd export ${spec.url}`;
  if (spec.kind === 'fabric') return `fabric region on ${spec.appliances.join(', ')}`;
  return spec.kind;
}
