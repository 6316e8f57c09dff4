/**
 * Same-page merger: collapse-on-write (seed 000), in the manner of Linux KSM.
 *
 * Algorithm. The merger walks every registered address space leaf by leaf, in bounded
 * batches, keeping a cursor (a space and a page number) between batches. The cursor moves from
 * leaf to leaf through the interior levels of the page table (AddressSpace.nextLeafPage), so
 * holes cost nothing however large the space, and a batch's budget counts the resident pages
 * it visits (at least one per leaf) and the time it takes, never the empty slots it passes.
 * Within a leaf it reads only the groups of slots that the leaf's occupancy summary marks (see
 * LeafArena: one bit per 16 slots, set by whatever maps a frame, cleared here when a group holds
 * none), and the pages' own write epochs only when the leaf's maxEpoch is not quiet already: so
 * 60,000 pages scattered one per leaf over 1 TiB cost what 60,000 dense pages cost, give or take
 * a page-table seek and a cache line of slots per leaf (cache misses, on so sparse a layout).
 *
 * A full scan visits each space once; at its start it advances every space's epoch, so "written
 * within the quiet interval" becomes "written since the previous scan began, or in the
 * `quietEpochs` epochs before" (and, with `quietMs`, "in an epoch that ended less than quietMs
 * ago"). Those are the seed's flagged pages. For each mapped page that is not flagged:
 *
 *   1. all-zero page (an OR over the first 64 bytes rejects most pages at once; then a full
 *      compare with the zero frame): the entry is repointed to the shared zero frame and the
 *      frame is released;
 *   2. otherwise the page is hashed (xxh64, truncated to 52 bits) and looked up in its trust
 *      domain's content index. Every frame in that hash's chain is byte-compared with the
 *      page; the first identical one with fewer than `maxSharing` references becomes the
 *      page's frame (the primary) and the duplicate is released. A hash match alone never
 *      merges.
 *   3. no identical primary: the page's frame joins the index as a primary for later pages.
 *
 * Pages whose frame is already indexed are skipped (they are merged or are a primary). An
 * indexed frame is never written in place: a write with other sharers copies it (a COW break);
 * a write by its only user removes it from the index first (FramePool.unmerge). A released
 * frame leaves the index (FramePool.release -> forget).
 *
 * Leaves shared between forks are scanned once per full scan (leaf scan marks); repointing an
 * entry in a shared leaf is correct for every space sharing it, since the bytes are identical.
 *
 * Settled leaves. A leaf whose resident pages were all indexed at its last visit, and in which
 * nothing was written since (its maxEpoch has not moved), cannot hold a page to merge: it is
 * passed over in one step, its resident count taken from that visit (see `leafClean`). Skipping
 * one wrongly would only delay a merge, never misplace a byte: merging always byte-compares.
 *
 * Background. `start()` runs the scan in timed slices at a share of one core (merger-pace.ts).
 *
 * Per-frame metadata (typed arrays indexed by frame): frameHash (the 52-bit key), next (the
 * chain), frameDomain (which index holds it). Invariant: FRAME_MERGED is set on f exactly when
 * f is on the chain of key frameHash[f] in index frameDomain[f].
 */
import { xxh64 } from '@node-rs/xxhash';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace, SpaceRegistry } from './address-space.js';
import { FIRST_FRAME, FRAME_MERGED, ZERO_FRAME, type FrameIndex, type FramePool } from './frame-pool.js';
import { ContentIndex } from './content-index.js';
import { GROUP_BITS, GROUP_ENTRIES, LEAF_ENTRIES } from './leaf-arena.js';
import {
  CPU_SHARE_DEFAULT,
  ROUND_INTERVAL_MIN_MS,
  RateMeter,
  SLICE_MS_DEFAULT,
  checkCpuShare,
  checkSliceMs,
  sleepAfterMs,
} from './merger-pace.js';
import { grown } from './typed-arrays.js';

/** Like KSM's max_page_sharing: beyond this many references a second primary is made. */
export const MAX_SHARING_DEFAULT = 256;

const HASH_MASK = (1n << 52n) - 1n;
/** Numbers per leaf in the merger's settled-leaf records (round, maxEpoch, resident pages). */
const LEAF_CLEAN_STRIDE = 3;
const ZERO_PROBE_BYTES = 64;
/**
 * A bounded call reads the clock after its first leaf and then once per this many pages of
 * budget: leaves of one page each would otherwise pay a clock read per page (a few percent of
 * the first scan of a scattered layout), and 32 pages take tens of microseconds at most.
 */
const CLOCK_CHECK_PAGES = 32;

export interface MergerOptions {
  /**
   * Full scans a page must go through unwritten before it may merge (the merger advances each
   * space's epoch once per full scan). 0: anything written before the scan began; 1 (default,
   * like KSM): a page written before scan k merges in scan k + 1 if nobody wrote it since.
   */
  quietEpochs?: number;
  /** Also require the epoch of the page's last write to have ended at least this long ago. */
  quietMs?: number;
  /** References one primary frame may have before another primary is made. Default 256. */
  maxSharing?: number;
  /** Merge pages across trust domains (a timing side channel between tenants). Default false. */
  crossDomain?: boolean;
  /** Content hash to 52-bit number. For tests (forced collisions); default xxh64. */
  hash?: (page: Uint8Array) => number;
}

export interface ScanBudget {
  /**
   * Stop at the first leaf boundary after visiting this many resident pages (default: no
   * limit). Pages merged already count too, and a leaf costs at least one page however few it
   * maps, so every budget runs out; empty slots and holes cost nothing. Every call visits at
   * least one leaf, so no budget stops the scan for good.
   */
  maxPages?: number;
  /**
   * Stop at a leaf boundary once this much time has passed (default: no limit). The clock is
   * read after the first leaf, then after every leaf that brings the pages visited since the
   * last reading to 32 or more, so a call runs on by at most that many pages.
   */
  maxMs?: number;
}

export interface BackgroundOptions {
  /** Share of one core to use, from 0.001 to 1 (default 0.1: a tenth of a core). */
  cpuShare?: number;
  /** Longest one slice holds the event loop, in ms (default 5). */
  sliceMs?: number;
}

export interface ScanResult {
  /** Mapped pages examined that were not merged already. */
  pagesScanned: number;
  pagesMerged: number;
  zeroPagesMerged: number;
  /** Full scans completed during this call. */
  fullScansCompleted: number;
}

export interface MergerStats {
  /** Primary frames that at least one other page now shares (KSM pages_shared). */
  pagesShared: number;
  /** Extra references to those primaries: pages saved by sharing (KSM pages_sharing). */
  pagesSharing: number;
  /** Indexed frames nobody shares yet (KSM pages_unshared). */
  pagesUnshared: number;
  /** Pages skipped as recently written during the last complete full scan (KSM pages_volatile). */
  pagesVolatile: number;
  /** Page-table entries mapped to the shared zero frame (KSM ksm_zero_pages). */
  zeroPages: number;
  /** Completed full scans (KSM full_scans). */
  fullScans: number;
  pagesScanned: number;
  /** Pages repointed to an identical primary, since creation. */
  pagesMerged: number;
  /** Pages repointed to the zero frame, since creation. */
  zeroPagesMerged: number;
  /** Writes that had to copy a merged frame (copy-on-write breaks of merged pages). */
  cowBreaks: number;
  /** Bytes the merger's own tables use. */
  metadataBytes: number;
  /** Gross saving: (pagesSharing + zeroPages) * pageSize. Never negative. */
  bytesSaved: number;
  /** bytesSaved - metadataBytes: negative while the tables cost more than sharing saves. */
  bytesSavedNet: number;
  /** Resident pages visited since creation, merged already or not (what the scan rate counts). */
  pagesVisited: number;
  /** Position of the scan: index of the space in the current full scan (0 between scans). */
  scanSpace: number;
  /** Spaces the current full scan covers (0 between scans). */
  scanSpaces: number;
  /** Position of the scan: the page of space `scanSpace` it continues from. */
  scanPage: number;
  /** How far the current full scan is, by address: (scanSpace + scanPage / pages) / scanSpaces. */
  scanFraction: number;
  /** Wall time the last complete full scan took from start to end, in ms (0 before the first). */
  lastFullScanMs: number;
  /** Time spent scanning since creation, in ms (its rate is the share of a core used). */
  scanMs: number;
  /** Resident pages visited per second, over the last 5 to 10 seconds. */
  pagesVisitedPerSecond: number;
  /** Time spent scanning over wall time, over the last 5 to 10 seconds: the share of a core used. */
  cpuShare: number;
  /** The share of a core the background merger is set to use (0 when it is not running). */
  cpuShareTarget: number;
}

export class SamePageMerger implements FrameIndex, SpaceRegistry {
  readonly pool: FramePool;
  private readonly quietEpochs: number;
  private readonly quietMs: number;
  private readonly maxSharing: number;
  private readonly crossDomain: boolean;
  private readonly hash: (segment: Buffer, offset: number) => number;

  private readonly spaces = new Set<AddressSpace>();
  private readonly indexes = new Map<string, ContentIndex>();
  /** Domain name of index i is domainNames[i]; frameDomain[f] holds i. */
  private readonly domainNames: string[] = [];
  private readonly domainIds = new Map<string, number>();
  /** The index and id of the trust domain scanned last (leaves of one page look it up per page). */
  private lastDomain: string | undefined;
  private lastIndex: ContentIndex | undefined;
  private lastDomainId = 0;

  private frameHash = new Float64Array(0);
  private next = new Int32Array(0);
  private frameDomain = new Uint16Array(0);

  // Cursor: the spaces of this full scan, the one being scanned, and the next page to seek a
  // leaf from (a page number, so the cursor stays right however the table changes in between).
  private round = 0;
  private leavesThisRound = 0;
  private roundSpaces: AddressSpace[] = [];
  private spaceCursor = 0;
  private pageCursor = 0;
  private volatileThisRound = 0;
  private roundStartedAt = Number.NEGATIVE_INFINITY;
  private lastFullScanMs = 0;
  /** Set by scanLeaf when it changed an entry: translations must be flushed. */
  private changed = false;
  /** Resident pages scanLeaf saw in the leaf it just scanned. */
  private leafResident = 0;
  /**
   * Settled leaves, LEAF_CLEAN_STRIDE numbers per leaf id: the round of the visit that found
   * every resident page of the leaf indexed already (merged, or a primary), the leaf's maxEpoch
   * then, and its resident pages then. A later visit skips the leaf's slots while the record
   * holds: the leaf's scanMark still names that round (it was not freed and handed out again,
   * which resets scanMark, nor visited since without being found settled) and its maxEpoch has
   * not moved (nothing was written or trimmed in it: every write records the current epoch,
   * and a leaf is recorded only when its maxEpoch is below the current epoch). Not used with a
   * pager, which brings pages back (new, unindexed frames) without recording an epoch.
   */
  private leafClean = new Uint32Array(0);

  private readonly totals = {
    fullScans: 0,
    pagesScanned: 0,
    pagesMerged: 0,
    zeroPagesMerged: 0,
    pagesVolatile: 0,
    pagesVisited: 0,
    scanMs: 0,
  };
  private readonly meter = new RateMeter();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private cpuShareTarget = 0;
  private destroyed = false;

  constructor(pool: FramePool, options: MergerOptions = {}) {
    const quietEpochs = options.quietEpochs ?? 1;
    const maxSharing = options.maxSharing ?? MAX_SHARING_DEFAULT;
    if (!Number.isInteger(quietEpochs) || quietEpochs < 0) {
      throw invalidArgument(`quietEpochs ${quietEpochs} must be a whole number >= 0`);
    }
    if (!Number.isInteger(maxSharing) || maxSharing < 2) {
      throw invalidArgument(`maxSharing ${maxSharing} must be a whole number >= 2`);
    }
    if (options.quietMs !== undefined && !(options.quietMs >= 0)) {
      throw invalidArgument(`quietMs ${options.quietMs} must be >= 0`);
    }
    this.pool = pool;
    this.quietEpochs = quietEpochs;
    this.quietMs = options.quietMs ?? 0;
    this.maxSharing = maxSharing;
    this.crossDomain = options.crossDomain ?? false;
    const custom = options.hash;
    const pageSize = pool.pageSize;
    this.hash = custom
      ? (segment, offset) => custom(segment.subarray(offset, offset + pageSize))
      : (segment, offset) => Number(xxh64(segment.subarray(offset, offset + pageSize)) & HASH_MASK);
    pool.attachIndex(this);
  }

  /** Adds a space (and, automatically, its future forks) to the scan. */
  register(space: AddressSpace): void {
    this.assertLive();
    if (space.pool !== this.pool) throw invalidArgument('the space belongs to another frame pool');
    if (space.isDestroyed) return;
    this.spaces.add(space);
    space.registry = this;
  }

  /** Removes a space from the scan (its merged pages stay merged). */
  unregister(space: AddressSpace): void {
    this.spaces.delete(space);
    if (space.registry === this) space.registry = undefined;
  }

  get registeredSpaces(): number {
    return this.spaces.size;
  }

  /**
   * Scans up to the budget, continuing where the last call stopped. Without a budget the call
   * ends with the current full scan (or does one whole scan when none is under way).
   */
  scan(budget: ScanBudget = {}): ScanResult {
    this.assertLive();
    const maxPages = budget.maxPages ?? Number.POSITIVE_INFINITY;
    const began = performance.now();
    const deadline = budget.maxMs === undefined ? Number.POSITIVE_INFINITY : began + budget.maxMs;
    const unbounded = maxPages === Number.POSITIVE_INFINITY && budget.maxMs === undefined;
    return this.run(maxPages, deadline, unbounded, false, began);
  }

  /**
   * Scans in the background, in slices of at most `sliceMs`, sleeping after each so that the
   * merger uses `cpuShare` of one core (see merger-pace.ts). Throws MF_INVALID_ARGUMENT for a
   * share outside [0.001, 1] or a slice outside [0.1, 1000] ms. Already running: changes nothing.
   */
  start(options: BackgroundOptions = {}): void {
    this.assertLive();
    const share = checkCpuShare(options.cpuShare ?? CPU_SHARE_DEFAULT);
    const sliceMs = checkSliceMs(options.sliceMs ?? SLICE_MS_DEFAULT);
    if (this.timer) return;
    this.cpuShareTarget = share;
    const tick = (): void => {
      const began = performance.now();
      this.run(Number.POSITIVE_INFINITY, began + sliceMs, false, true, began);
      const now = performance.now();
      let sleep = sleepAfterMs(now - began, share);
      // Between full scans (or with nothing registered): wait until the next one is due
      // rather than spin on empty rounds.
      if (this.roundSpaces.length === 0) {
        const due = this.spaces.size === 0 ? now : this.roundStartedAt;
        sleep = Math.max(sleep, due + ROUND_INTERVAL_MIN_MS - now);
      }
      this.timer = setTimeout(tick, sleep);
      this.timer.unref();
    };
    this.timer = setTimeout(tick, 0);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.cpuShareTarget = 0;
  }

  get running(): boolean {
    return this.timer !== undefined;
  }

  /** @internal The space the scan is in now (the appliance names its region), if any. */
  get scanningSpace(): AddressSpace | undefined {
    return this.roundSpaces[this.spaceCursor];
  }

  stats(): MergerStats {
    const pool = this.pool;
    let pagesShared = 0;
    let pagesSharing = 0;
    let pagesUnshared = 0;
    const flags = pool.flags;
    const refcount = pool.refcount;
    for (let f = FIRST_FRAME; f < flags.length; f++) {
      if ((flags[f]! & FRAME_MERGED) === 0) continue;
      const refs = refcount[f]!;
      if (refs > 1) {
        pagesShared++;
        pagesSharing += refs - 1;
      } else {
        pagesUnshared++;
      }
    }
    const metadataBytes = this.metadataBytes;
    const bytesSaved = (pagesSharing + pool.zeroEntries) * pool.pageSize;
    const spaces = this.roundSpaces.length;
    const space = this.roundSpaces[this.spaceCursor];
    const scanPage = space ? Math.min(this.pageCursor, space.pages) : 0;
    const now = performance.now();
    return {
      pagesShared,
      pagesSharing,
      pagesUnshared,
      pagesVolatile: this.totals.pagesVolatile,
      zeroPages: pool.zeroEntries,
      fullScans: this.totals.fullScans,
      pagesScanned: this.totals.pagesScanned,
      pagesMerged: this.totals.pagesMerged,
      zeroPagesMerged: this.totals.zeroPagesMerged,
      cowBreaks: pool.mergedCowBreaks,
      metadataBytes,
      bytesSaved,
      bytesSavedNet: bytesSaved - metadataBytes,
      pagesVisited: this.totals.pagesVisited,
      scanSpace: space ? this.spaceCursor : 0,
      scanSpaces: spaces,
      scanPage,
      scanFraction: space && space.pages > 0 ? (this.spaceCursor + scanPage / space.pages) / spaces : 0,
      lastFullScanMs: this.lastFullScanMs,
      scanMs: this.totals.scanMs,
      pagesVisitedPerSecond: this.meter.pagesPerSecond(now),
      cpuShare: this.meter.cpuShare(now),
      cpuShareTarget: this.cpuShareTarget,
    };
  }

  get metadataBytes(): number {
    let bytes =
      this.frameHash.byteLength +
      this.next.byteLength +
      this.frameDomain.byteLength +
      this.leafClean.byteLength;
    for (const index of this.indexes.values()) bytes += index.byteLength;
    return bytes;
  }

  /** FrameIndex: frame f is freed or about to be written in place; unlink it from its chain. */
  forget(frame: number): void {
    const index = this.indexes.get(this.domainNames[this.frameDomain[frame]!]!)!;
    const key = this.frameHash[frame]!;
    const head = index.get(key);
    if (head === frame) {
      const after = this.next[frame]!;
      if (after === 0) index.delete(key);
      else index.set(key, after);
    } else {
      let previous = head;
      while (previous !== 0 && this.next[previous] !== frame) previous = this.next[previous]!;
      if (previous !== 0) this.next[previous] = this.next[frame]!;
    }
    this.next[frame] = 0;
    this.pool.flags[frame]! &= ~FRAME_MERGED;
  }

  /** Stops scanning and detaches from the pool; merged pages stay merged. */
  destroy(): void {
    if (this.destroyed) return;
    this.stop();
    for (const space of [...this.spaces]) this.unregister(space);
    // Frames stay shared, but nothing indexes them any more.
    const flags = this.pool.flags;
    for (let f = FIRST_FRAME; f < flags.length; f++) flags[f]! &= ~FRAME_MERGED;
    // Scan marks name this merger's rounds: a later merger of the pool counts rounds from 1
    // again, and would take leaves marked here for leaves it had visited already.
    this.pool.leaves.scanMark.fill(0);
    this.indexes.clear();
    this.lastDomain = undefined;
    this.pool.attachIndex(undefined);
    this.destroyed = true;
  }

  // ---------------------------------------------------------------------------------------

  /**
   * The scan loop behind scan() and the background slices. Visits leaf after leaf until the
   * page budget or the deadline (see CLOCK_CHECK_PAGES) runs out. `stopAtRoundEnd`: end the
   * call when a full scan completes. `paced`: do not begin a full scan sooner than
   * ROUND_INTERVAL_MIN_MS after the previous one began. A round with nothing to scan ends the
   * call too, or a page budget would never run out.
   */
  private run(
    maxPages: number,
    deadline: number,
    stopAtRoundEnd: boolean,
    paced: boolean,
    began: number,
  ): ScanResult {
    const result: ScanResult = { pagesScanned: 0, pagesMerged: 0, zeroPagesMerged: 0, fullScansCompleted: 0 };
    if (this.spaces.size === 0) return result;
    this.growFrameMetadata();
    this.changed = false;
    let cost = 0;
    let visited = 0;
    let clockAt = 0;
    const timed = deadline !== Number.POSITIVE_INFINITY;
    // Every call visits at least one leaf, so no budget, however small, stops the scan for good.
    for (;;) {
      if (this.spaceCursor >= this.roundSpaces.length) {
        if (this.roundSpaces.length > 0) {
          const emptyRound = this.leavesThisRound === 0;
          this.finishRound();
          result.fullScansCompleted++;
          if (emptyRound || stopAtRoundEnd) break;
        }
        if (paced && performance.now() < this.roundStartedAt + ROUND_INTERVAL_MIN_MS) break;
        this.startRound();
        if (this.roundSpaces.length === 0) break;
      }
      const space = this.roundSpaces[this.spaceCursor]!;
      const firstPage = space.nextLeafPage(this.pageCursor);
      if (firstPage < 0) {
        this.spaceCursor++;
        this.pageCursor = 0;
        continue;
      }
      this.pageCursor = firstPage + LEAF_ENTRIES;
      this.leavesThisRound++;
      this.scanLeaf(space, firstPage, result);
      visited += this.leafResident;
      cost += Math.max(1, this.leafResident);
      if (cost >= maxPages) break;
      if (timed && cost >= clockAt) {
        if (performance.now() >= deadline) break;
        clockAt = cost + CLOCK_CHECK_PAGES;
      }
    }
    if (this.changed) this.pool.flushAllTranslations();
    const workMs = performance.now() - began;
    this.totals.pagesVisited += visited;
    this.totals.scanMs += workMs;
    this.meter.record(workMs, visited);
    return result;
  }

  private startRound(): void {
    this.round++;
    this.roundSpaces = [...this.spaces].filter((space) => !space.isDestroyed);
    this.spaceCursor = 0;
    this.pageCursor = 0;
    this.volatileThisRound = 0;
    this.leavesThisRound = 0;
    this.roundStartedAt = performance.now();
    for (const space of this.roundSpaces) space.advanceEpoch();
  }

  private finishRound(): void {
    this.totals.fullScans++;
    this.totals.pagesVolatile = this.volatileThisRound;
    this.lastFullScanMs = performance.now() - this.roundStartedAt;
    this.roundSpaces = [];
    this.spaceCursor = 0;
    this.pageCursor = 0;
  }

  /**
   * Scans the leaf that maps `firstPage` (found by the cursor just now). Sets `leafResident` to
   * the resident pages it saw (0 for a leaf already scanned this round through another space)
   * and `changed` when it repointed an entry.
   */
  private scanLeaf(space: AddressSpace, firstPage: number, result: ScanResult): void {
    const pool = this.pool;
    const arena = pool.leaves;
    this.leafResident = 0;
    const leaf = space.leafAt(firstPage);
    if (leaf === 0) return;
    const mark = arena.scanMark[leaf]!;
    if (mark === this.round) return;
    arena.scanMark[leaf] = this.round;
    const settled = pool.paging === undefined;
    if (settled && leaf * LEAF_CLEAN_STRIDE >= this.leafClean.length) this.growLeafClean();
    const record = leaf * LEAF_CLEAN_STRIDE;
    const clean = this.leafClean;
    if (settled && mark !== 0 && clean[record] === mark && clean[record + 1] === arena.maxEpoch[leaf]) {
      // Settled, and nothing written since: its pages are what they were, all indexed.
      clean[record] = this.round;
      this.leafResident = clean[record + 2]!;
      return;
    }
    const volatileBefore = this.volatileThisRound;
    // The content index is looked up once a leaf has a page to hash (most leaves of a settled
    // space have none).
    let index: ContentIndex | undefined;
    let domainId = 0;
    const base = leaf * LEAF_ENTRIES;
    const limit = Math.min(LEAF_ENTRIES, space.pages - firstPage);
    // The epoch advanced when this full scan began, so `epoch - 1` is the one that just ended
    // (writes since the previous scan). Quiet: not written in it nor in `quietEpochs` before it.
    const quietBefore = space.epoch - 1 - this.quietEpochs;
    const now = this.quietMs > 0 ? performance.now() : 0;
    // No slot of the leaf was written after its maxEpoch: if that is quiet, every page is, and
    // the pages' own epochs (a cache miss each, on a sparse layout) need not be read.
    const maxEpoch = arena.maxEpoch[leaf]!;
    const leafQuiet =
      maxEpoch <= quietBefore && (this.quietMs === 0 || this.quietLongEnough(space, maxEpoch, now));
    const zeroSegment = pool.segments[0]!;
    const zeroOffset = pool.frameOffset(ZERO_FRAME);
    const pageSize = pool.pageSize;
    const entries = arena.entries;
    let resident = 0;
    let zeroed = 0;
    let changed = false;
    // Only the groups of slots the occupancy summary marks can hold resident frames; lowest
    // first, so pages are met in page order. A group found holding none loses its bit.
    let groups = arena.occupancy[leaf]!;
    for (let pending = groups; pending !== 0; pending &= pending - 1) {
      const group = 31 - Math.clz32(pending & -pending);
      const first = group << GROUP_BITS;
      const end = Math.min(first + GROUP_ENTRIES, limit);
      let kept = 0;
      for (let i = first; i < end; i++) {
        const entry = base + i;
        const frame = entries[entry]!;
        if (frame < FIRST_FRAME) continue;
        resident++;
        kept++;
        if (pool.flags[frame]! & FRAME_MERGED) continue;
        result.pagesScanned++;
        this.totals.pagesScanned++;
        if (!leafQuiet) {
          const written = arena.epochs[entry]!;
          if (written > quietBefore || (this.quietMs > 0 && !this.quietLongEnough(space, written, now))) {
            this.volatileThisRound++;
            continue;
          }
        }
        const segment = pool.frameSegment(frame);
        const offset = pool.frameOffset(frame);
        if (isZeroPage(segment, offset, pageSize, zeroSegment, zeroOffset)) {
          entries[entry] = ZERO_FRAME;
          pool.zeroEntries++;
          pool.release(frame);
          result.zeroPagesMerged++;
          this.totals.zeroPagesMerged++;
          zeroed++;
          kept--;
          changed = true;
          continue;
        }
        if (index === undefined) {
          if (space.domain !== this.lastDomain) this.lookUpDomain(space.domain);
          index = this.lastIndex!;
          domainId = this.lastDomainId;
        }
        const key = this.hash(segment, offset);
        const head = index.get(key);
        let primary = 0;
        for (let candidate = head; candidate !== 0; candidate = this.next[candidate]!) {
          if (this.frameHash[candidate] !== key || pool.refcount[candidate]! >= this.maxSharing) continue;
          const candidateOffset = pool.frameOffset(candidate);
          if (
            pool
              .frameSegment(candidate)
              .compare(segment, offset, offset + pageSize, candidateOffset, candidateOffset + pageSize) === 0
          ) {
            primary = candidate;
            break;
          }
        }
        if (primary !== 0) {
          entries[entry] = primary;
          pool.refcount[primary]!++;
          pool.release(frame);
          result.pagesMerged++;
          this.totals.pagesMerged++;
          changed = true;
        } else {
          this.frameHash[frame] = key;
          this.frameDomain[frame] = domainId;
          this.next[frame] = head;
          index.set(key, frame);
          pool.flags[frame]! |= FRAME_MERGED;
        }
      }
      if (kept === 0) groups &= ~(1 << group);
    }
    arena.occupancy[leaf] = groups;
    this.leafResident = resident;
    if (changed) this.changed = true;
    if (settled) {
      // Settled: no page left volatile (every resident one is indexed now), and no write in the
      // current epoch, so any later write raises maxEpoch above the one recorded.
      const isClean = this.volatileThisRound === volatileBefore && arena.maxEpoch[leaf]! < space.epoch;
      clean[record] = isClean ? this.round : 0;
      clean[record + 1] = arena.maxEpoch[leaf]!;
      clean[record + 2] = resident - zeroed;
    }
  }

  /** With quietMs: the epoch after `written` began at least quietMs ago. */
  private quietLongEnough(space: AddressSpace, written: number, now: number): boolean {
    const ended = space.epochStartTime(written + 1);
    // Epochs too old to be remembered ended long ago.
    return ended === undefined ? written + 1 <= space.epoch : now - ended >= this.quietMs;
  }

  private lookUpDomain(domain: string): void {
    this.lastIndex = this.indexFor(domain);
    this.lastDomainId = this.domainIds.get(this.crossDomain ? '*' : domain)!;
    this.lastDomain = domain;
  }

  private indexFor(domain: string): ContentIndex {
    const name = this.crossDomain ? '*' : domain;
    let index = this.indexes.get(name);
    if (!index) {
      if (this.domainNames.length >= 0xffff) {
        throw new MemfabricError(
          ErrorCodes.INVALID_ARGUMENT,
          'too many trust domains (65535) for one merger',
        );
      }
      index = new ContentIndex();
      this.indexes.set(name, index);
      this.domainIds.set(name, this.domainNames.length);
      this.domainNames.push(name);
    }
    return index;
  }

  private growLeafClean(): void {
    this.leafClean = grown(this.leafClean, this.pool.leaves.refs.length * LEAF_CLEAN_STRIDE);
  }

  private growFrameMetadata(): void {
    const frames = this.pool.refcount.length;
    if (this.frameHash.length >= frames) return;
    this.frameHash = grown(this.frameHash, frames);
    this.next = grown(this.next, frames);
    this.frameDomain = grown(this.frameDomain, frames);
  }

  private assertLive(): void {
    if (this.destroyed) {
      throw new MemfabricError(
        ErrorCodes.DESTROYED,
        'this merger was destroyed; create a new SamePageMerger',
      );
    }
  }
}

/** True when a page is all zeros: a cheap probe of the first bytes, then a full compare. */
function isZeroPage(
  segment: Buffer,
  offset: number,
  pageSize: number,
  zeros: Buffer,
  zeroOffset: number,
): boolean {
  let probe = 0;
  for (let i = 0; i < ZERO_PROBE_BYTES; i++) probe |= segment[offset + i]!;
  if (probe !== 0) return false;
  return segment.compare(zeros, zeroOffset, zeroOffset + pageSize, offset, offset + pageSize) === 0;
}
