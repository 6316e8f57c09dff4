/**
 * A heap image: an address space whose persistent state and paging store are one file (seed
 * 003: "one image, two roles"). The image is the pager's page store, so a space 10× or 100×
 * its resident budget pages in and out of the same slots its checkpoints name; there is no
 * second copy of the data.
 *
 * Design: shadow paging with two alternating superblocks (LMDB's two meta pages) and a
 * checksummed page map (page-map.ts), on top of the pager's reference-counted slots.
 *
 *   Invariant: no slot named by the committed checkpoint is ever written. The committed page
 *   map holds one reference on every slot it names (data pages and map pages alike), so the
 *   pager never hands such a slot out for an eviction or a new checkpoint; a page written
 *   since the checkpoint goes to a fresh slot. Superblock slots 0 and 1 are never handed out.
 *
 * A checkpoint:
 *   1. (the only pause) forks the space — O(page-table leaves), no page copied — and starts a
 *      new epoch. The fork is frozen: writes after this point copy-on-write away from it.
 *   2. (in the background, the program running) for every page of the fork dirty since the
 *      last checkpoint (dirty epochs: cost follows the dirty pages, not the heap's size), makes
 *      sure a fresh slot holds its bytes — a page already evicted since its last write is
 *      already in one; a resident one is queued to a new slot — and records (slot, xxh32) in
 *      the page map; then writes the map pages that changed, each to a new slot.
 *   3. flushes (fdatasync), writes the *other* superblock (generation + 1, the map root and its
 *      checksum), flushes again: this is the commit. Then the slots the previous checkpoint
 *      named and this one replaced are released, and the fork is destroyed.
 * A crash at any instant leaves the previous superblock and everything it names intact, and
 * the new superblock either whole (committed) or failing its checksum (ignored): opening
 * yields exactly one checkpoint, never a mix. A torn data or map page is never named by a
 * committed superblock, and a page damaged later fails its checksum when read.
 *
 * Opening reads the two superblocks and the page map (8 bytes per heap page), verifying the
 * map's checksums, and maps every stored page as a swapped entry: no data page is read until
 * the program touches it, and each is checked against its checksum when it is.
 */
import { open as openFile, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { parseSize } from '../size.js';
import type { AddressSpace } from '../memory/address-space.js';
import { PAGE_SIZE_DEFAULT, ZERO_FRAME } from '../memory/frame-pool.js';
import { swappedEntry } from '../memory/paging.js';
import { filePathError } from '../paths.js';
import { Pager } from '../tier/pager.js';
import type { NbdStoreTls, StoreSpec } from '../tier/page-store.js';
import { NbdPageStore, inspectNbdStore, readSlots, type NbdStoreSpec } from '../tier/nbd-store.js';
import { STORE_SLOTS_MAX } from '../tier/store-guard.js';
import { PageMap, SLOT_HOLE, SLOT_ZERO } from './page-map.js';
import {
  BASE_PATH_MAX,
  HEAP_FORMAT_VERSION,
  PINS_MAX,
  SUPERBLOCK_BYTES,
  chooseSuperblock,
  decodeSuperblock,
  encodeSuperblock,
  type Superblock,
} from './superblock.js';

export const HEAP_SIZE_DEFAULT = '1TiB';
export const HEAP_BUDGET_DEFAULT = '64MiB';
/** verify() and compact() report progress this many pages apart. */
const PROGRESS_PAGES = 256;
/**
 * Pages a checkpoint stages between yields to the event loop: each costs a zero check, a hash
 * and a copy into the destage queue, so 64 keep the program's pauses to about a millisecond.
 */
const STAGE_BATCH = 64;

export interface HeapImageOptions {
  /**
   * The image: a local file, or an NBD export by URL (`nbd://host:port/export`, `nbds://…` with
   * `tls`), such as a region of a memfabric appliance. Forks and compaction need a file.
   */
  path: string;
  /** TLS credentials for an `nbds://` image (see the 'nbd' page store). */
  tls?: NbdStoreTls;
  /** Resident memory: the most bytes of the heap kept in memory at once. Default 64 MiB. */
  budget?: number | string;
  /** Create only: the heap's address-space size. Default 1 TiB (sparse: unused space costs nothing). */
  size?: number | string;
  /** Create only: page size, a power of two from 1024 to 65536. Default 4096. */
  pageSize?: number;
  /** Pages read ahead on a sequential fault. Default 16. */
  prefetch?: number;
  /** Open without writing anything (no checkpoints): for inspection. */
  readOnly?: boolean;
  /** Test double (crash tests): lose power at a chosen flush. */
  powerLoss?: { crashAtSync: number; seed: number };
  /** Test double: image writes after the first this many fail with EIO. */
  failWritesAfter?: number;
}

export interface CheckpointReport {
  generation: number;
  /** Pages written, trimmed or zeroed since the previous checkpoint. */
  dirtyPages: number;
  /** Pages this checkpoint had to queue for writing (the rest were already in the image). */
  writtenPages: number;
  /** Map pages rewritten. */
  mapPages: number;
  /** How long the program was paused (the fork), in milliseconds. */
  pauseMs: number;
  /** From the call to the commit, in milliseconds. */
  durationMs: number;
}

export interface CompactReport {
  beforeBytes: number;
  afterBytes: number;
  /** Stored pages copied. */
  pages: number;
}

export interface HeapImageStats {
  path: string;
  pageSize: number;
  size: number;
  generation: number;
  /** Pages the committed page map names (data or zero pages). */
  storedPages: number;
  /** Highest image slot ever used, times the page size: the image's extent. */
  imageBytes: number;
  budgetBytes: number;
  residentBytes: number;
  faults: number;
  evictions: number;
}

/** How the image is read before any pager exists: the first superblock tells the page size. */
interface Probe {
  block: Superblock;
  slot: 0 | 1;
}

export class HeapImage {
  readonly path: string;
  readonly pageSize: number;
  readonly size: number;
  readonly space: AddressSpace;
  readonly pager: Pager;
  readonly readOnly: boolean;
  private map: PageMap;
  private block: Superblock;
  /** The epoch at which the committed checkpoint's fork was taken: pages written at or after it are dirty. */
  private since: number;
  /** Where the next superblock goes, and its generation. */
  private nextSlot: 0 | 1;
  private nextGeneration: number;
  /** Slots each pin holds (one reference each), by the pinned checkpoint's generation. */
  private readonly pinned = new Map<number, Uint32Array>();
  /** The checkpoint running or queued last, if any (settles, never rejects). */
  private busy: Promise<void> | undefined;
  private closed = false;
  private failure: MemfabricError | undefined;

  private constructor(
    path: string,
    pager: Pager,
    space: AddressSpace,
    map: PageMap,
    probe: Probe,
    readOnly: boolean,
  ) {
    this.path = path;
    this.pager = pager;
    this.space = space;
    this.map = map;
    this.block = probe.block;
    this.pageSize = probe.block.pageSize;
    this.size = probe.block.size;
    this.readOnly = readOnly;
    this.since = space.epoch;
    this.nextSlot = probe.slot === 0 ? 1 : 0;
    this.nextGeneration = probe.block.generation + 1;
  }

  /**
   * Creates a new image at `path` (refusing, with HEAP_EXISTS, to touch a file already there)
   * and opens it: an empty heap at generation 0.
   */
  static async create(options: HeapImageOptions): Promise<HeapImage> {
    checkPath(options.path);
    const pageSize = options.pageSize ?? PAGE_SIZE_DEFAULT;
    const size = parseSize(options.size ?? HEAP_SIZE_DEFAULT, 'size');
    if (
      !Number.isInteger(pageSize) ||
      pageSize < SUPERBLOCK_BYTES ||
      pageSize > 65536 ||
      (pageSize & (pageSize - 1)) !== 0
    ) {
      // A superblock fills 1 KiB: a heap's pages are at least that.
      throw invalidArgument(
        `a heap's pageSize ${pageSize} must be a power of two from ${SUPERBLOCK_BYTES} to 65536`,
      );
    }
    if (size < 2 * pageSize || size > 2 ** 52) {
      throw invalidArgument(`size ${size} must be from two pages to 4 PiB (2^52 bytes)`);
    }
    const block: Superblock = {
      pageSize,
      generation: 0,
      size,
      root: { slot: SLOT_HOLE, checksum: 0, levels: 0 },
      pages: 0,
      baseSlots: 0,
      basePath: '',
      baseGeneration: 0,
      time: Date.now(),
      usedBytes: 0,
      pins: [],
    };
    if (isNbdUrl(options.path)) {
      await createOnExport(nbdSpec(options), block);
      return HeapImage.open(options);
    }
    const handle = await createExclusive(options.path);
    try {
      // Both superblock slots, the second all zeros: the image is two pages long from the start.
      const first = encodeSuperblock(block, pageSize);
      const both = Buffer.alloc(2 * pageSize);
      both.set(first, 0);
      await handle.write(both, 0, both.length, 0);
      await handle.datasync();
    } finally {
      await handle.close();
    }
    await syncDirectory(dirname(options.path));
    return HeapImage.open(options);
  }

  /** Opens an existing image at its last committed checkpoint. */
  static async open(options: HeapImageOptions): Promise<HeapImage> {
    checkPath(options.path);
    const url = isNbdUrl(options.path);
    const probe = url ? await probeExport(nbdSpec(options)) : await probeImage(options.path);
    const { block } = probe;
    if (options.pageSize !== undefined && options.pageSize !== block.pageSize) {
      throw invalidArgument(`${options.path} has ${block.pageSize}-byte pages, not ${options.pageSize}`);
    }
    const pageSize = block.pageSize;
    let capacity = Math.min(
      STORE_SLOTS_MAX - 1,
      block.baseSlots + Math.max(1024, 2 * Math.ceil(block.size / pageSize) + 2),
    );
    if (url) capacity = Math.min(capacity, (await inspectNbdStore(nbdSpec(options), pageSize)).capacity);
    const store: StoreSpec = url
      ? nbdSpec(options)
      : {
          kind: 'image',
          path: options.path,
          ...(options.readOnly ? { readOnly: true } : {}),
          ...(options.powerLoss ? { powerLoss: options.powerLoss } : {}),
          ...(options.failWritesAfter === undefined ? {} : { failWritesAfter: options.failWritesAfter }),
          ...(block.baseSlots > 0 ? { base: { path: block.basePath, slots: block.baseSlots } } : {}),
        };
    const pager = await Pager.open({
      budget: options.budget ?? HEAP_BUDGET_DEFAULT,
      pageSize,
      store,
      storeSize: capacity * pageSize,
      checksums: true,
      dedup: false,
      ...(options.prefetch === undefined ? {} : { prefetch: options.prefetch }),
    });
    let space: AddressSpace | undefined;
    try {
      // The pager's store reads the superblocks again: a power-loss test layer sees what it holds.
      const a = new Uint8Array(pageSize);
      const b = new Uint8Array(pageSize);
      await pager.readSlot(0, a);
      await pager.readSlot(1, b);
      const chosen = chooseSuperblock(options.path, decodeSuperblock(a), decodeSuperblock(b));
      const map = await PageMap.read(
        pageSize,
        chosen.block.root,
        chosen.block.pages,
        (slot, dst) => pager.readSlot(slot, dst),
        options.path,
      );
      const pins: PageMap[] = [];
      for (const pin of chosen.block.pins) {
        pins.push(
          await PageMap.read(
            pageSize,
            pin,
            pin.pages,
            (slot, dst) => pager.readSlot(slot, dst),
            options.path,
          ),
        );
      }
      space = pager.createSpace({ size: chosen.block.size });
      adoptCheckpoint(pager, space, map, pins, chosen.block, capacity, options.path);
      const image = new HeapImage(options.path, pager, space, map, chosen, options.readOnly ?? false);
      chosen.block.pins.forEach((pin, i) => image.pinned.set(pin.generation, slotsNamed(pins[i]!)));
      return image;
    } catch (error) {
      space?.destroy();
      await pager.close().catch(() => undefined);
      throw error;
    }
  }

  /**
   * Rewrites the image at `path` compactly and gives the freed space back to the file system:
   * a new image in the same directory receives every stored page, in order, then replaces the
   * old one by an atomic rename (a crash before it leaves the old image intact; the stray
   * `.compact` file can be deleted). A fork's compacted image holds all of its pages and no
   * longer needs its base. Refuses an image whose pages forks still read (release them first).
   */
  static async compact(options: {
    path: string;
    budget?: number | string;
    /** Told the bytes copied so far of the total, every PROGRESS_PAGES pages (for a progress bar). */
    onProgress?: (bytesDone: number, bytesTotal: number) => void;
  }): Promise<CompactReport> {
    checkPath(options.path);
    if (isNbdUrl(options.path)) {
      throw invalidArgument(
        `compaction rewrites a file; ${options.path} is an NBD export (its size is the export's)`,
      );
    }
    const budget = options.budget ?? HEAP_BUDGET_DEFAULT;
    const beforeBytes = (await stat(options.path)).size;
    const source = await HeapImage.open({ path: options.path, budget, readOnly: true });
    const temporary = `${options.path}.compact`;
    let target: HeapImage | undefined;
    try {
      if (source.block.pins.length > 0) {
        throw invalidArgument(
          `${options.path} has ${source.block.pins.length} fork(s) reading its pages; release them (releaseFork) before compacting`,
        );
      }
      await unlink(temporary).catch(() => undefined);
      target = await HeapImage.create({
        path: temporary,
        budget,
        size: source.size,
        pageSize: source.pageSize,
      });
      const page = new Uint8Array(source.pageSize);
      const pages: number[] = [];
      source.map.forEachEntry((heapPage) => pages.push(heapPage));
      for (let i = 0; i < pages.length; i++) {
        if (options.onProgress && i % PROGRESS_PAGES === 0) {
          options.onProgress(i * source.pageSize, pages.length * source.pageSize);
        }
        const heapPage = pages[i]!;
        const at = heapPage * source.pageSize;
        if (source.map.slotWord(heapPage) === SLOT_ZERO) {
          target.space.writeZeroes(at, source.pageSize);
        } else {
          await source.space.readAsync(at, page);
          await target.space.writeAsync(at, page);
        }
      }
      await target.checkpoint(source.block.usedBytes);
      await target.close({ checkpoint: false });
      target = undefined;
      await source.close();
      await rename(temporary, options.path);
      await syncDirectory(dirname(options.path));
      return { beforeBytes, afterBytes: (await stat(options.path)).size, pages: pages.length };
    } catch (error) {
      await target?.close({ checkpoint: false }).catch(() => undefined);
      await unlink(temporary).catch(() => undefined);
      if (!source.isClosed) await source.close().catch(() => undefined);
      throw error;
    }
  }

  /** The committed checkpoint's generation (0: never checkpointed). */
  get generation(): number {
    return this.block.generation;
  }

  /** When the committed checkpoint was taken (ms since the epoch). */
  get checkpointTime(): number {
    return this.block.time;
  }

  /** Pages written since the committed checkpoint. O(page-table leaves + dirty pages). */
  dirtyPageCount(): number {
    let count = 0;
    this.space.forEachDirtyPage(this.since, () => count++);
    return count;
  }

  /**
   * Commits the space's current contents as the new checkpoint (see the overview). Calls made
   * while one runs queue behind it, so each call's checkpoint includes every write before it.
   * On failure rejects with CHECKPOINT_FAILED; the previous checkpoint stays the recoverable
   * state.
   */
  checkpoint(usedBytes = this.block.usedBytes, change: PinChange = {}): Promise<CheckpointReport> {
    // When none is running, fork now (runCheckpoint forks before its first await): the
    // checkpoint is exactly the state at this call. Otherwise queue behind the running one.
    const start = (): Promise<CheckpointReport> => this.runCheckpoint(usedBytes, change);
    const run = this.busy ? this.busy.then(start) : start();
    const tracked: Promise<void> = run.then(
      () => this.settled(tracked),
      () => this.settled(tracked),
    );
    this.busy = tracked;
    return run;
  }

  private settled(tracked: Promise<void>): void {
    if (this.busy === tracked) this.busy = undefined;
  }

  private async runCheckpoint(usedBytes: number, change: PinChange): Promise<CheckpointReport> {
    this.assertOpen();
    if (this.readOnly) {
      throw new MemfabricError(
        ErrorCodes.READ_ONLY,
        `${this.path} was opened read-only; open it writable to checkpoint`,
      );
    }
    if (this.failure) throw this.failure;
    const started = performance.now();
    // 1. The pause: freeze the contents.
    const frozen = this.space.fork();
    const since = this.since;
    const epoch = this.space.advanceEpoch();
    const pauseMs = performance.now() - started;
    const pager = this.pager;
    const map = this.map;
    const undo: number[] = [];
    const taken: number[] = [];
    const released: number[] = [];
    const savedNodes = map.snapshotNodes();
    const savedPages = map.pages;
    const stagedBefore = pager.stagedWrites;
    let submitted = false;
    try {
      // 2. Stage every dirty page in a slot the committed checkpoint does not name.
      const dirty = frozen.dirtyPages(since);
      if (
        dirty.length === 0 &&
        usedBytes === this.block.usedBytes &&
        !change.addPin &&
        change.dropPin === undefined
      ) {
        // Nothing changed since the committed checkpoint: it already is this checkpoint.
        this.since = epoch;
        return {
          generation: this.block.generation,
          dirtyPages: 0,
          writtenPages: 0,
          mapPages: 0,
          pauseMs,
          durationMs: performance.now() - started,
        };
      }
      for (let first = 0; first < dirty.length; first += STAGE_BATCH) {
        const batch = dirty.subarray(first, first + STAGE_BATCH);
        const slots = await Promise.all(Array.from(batch, (page) => pager.stagePage(frozen, page)));
        for (let i = 0; i < batch.length; i++) {
          const page = batch[i]!;
          const slot = slots[i]!;
          let word = SLOT_HOLE;
          let sum = 0;
          if (slot === -2) word = SLOT_ZERO;
          else if (slot >= 0) {
            word = slot;
            taken.push(slot);
            sum = pager.slotChecksum(slot) ?? 0;
          }
          const old = map.slotWord(page);
          undo.push(page, old, map.checksum(page));
          if (old >= 2) released.push(old);
          map.set(page, word, sum);
        }
        if (first + STAGE_BATCH < dirty.length) await yieldToEventLoop();
      }
      const mapWrite = await map.write((bytes) => pager.storeBytes(bytes));
      taken.push(...mapWrite.written);
      released.push(...mapWrite.replaced);
      await pager.flush();
      // 3. The commit.
      const generation = this.nextGeneration;
      let pins = this.block.pins.filter((pin) => pin.generation !== change.dropPin);
      if (change.addPin) pins = [...pins, { ...mapWrite.root, pages: map.pages, generation }];
      const block: Superblock = {
        ...this.block,
        generation,
        root: mapWrite.root,
        pages: map.pages,
        time: Date.now(),
        usedBytes,
        pins,
      };
      submitted = true;
      await pager.overwriteSlot(this.nextSlot, encodeSuperblock(block, this.pageSize));
      await pager.flush();
      this.block = block;
      this.nextSlot = this.nextSlot === 0 ? 1 : 0;
      this.nextGeneration = block.generation + 1;
      this.since = epoch;
      // A new pin holds every slot the committed map names; a dropped one lets go of its own.
      if (change.addPin) {
        const slots = slotsNamed(map);
        for (const slot of slots) pager.retainSlot(slot);
        this.pinned.set(generation, slots);
        change.pinnedMap = map.cloneForWrite();
      }
      if (change.dropPin !== undefined) {
        for (const slot of this.pinned.get(change.dropPin) ?? []) pager.releaseSlot(slot);
        this.pinned.delete(change.dropPin);
      }
      for (const slot of released) pager.releaseSlot(slot);
      return {
        generation: block.generation,
        dirtyPages: dirty.length,
        writtenPages: pager.stagedWrites - stagedBefore,
        mapPages: mapWrite.written.length,
        pauseMs,
        durationMs: performance.now() - started,
      };
    } catch (error) {
      if (!submitted) {
        // Nothing the committed superblock names changed: undo the map, drop the new slots.
        for (let i = undo.length - 3; i >= 0; i -= 3) map.set(undo[i]!, undo[i + 1]!, undo[i + 2]!);
        map.pages = savedPages;
        map.restoreNodes(savedNodes);
        for (const slot of taken) pager.releaseSlot(slot);
      } else {
        // The new superblock may or may not be on disk. Keep every slot either one names (a
        // leak until the next open, which counts references afresh), write the next
        // superblock over the same slot (never over the committed one), with a higher
        // generation than the one that may have landed.
        this.nextGeneration++;
      }
      // `since` moves only at a commit: every page dirty before this attempt stays dirty.
      throw new MemfabricError(
        ErrorCodes.CHECKPOINT_FAILED,
        `checkpoint of ${this.path} failed: ${error instanceof Error ? error.message : String(error)}; ` +
          `generation ${this.block.generation} is still the recoverable state. Fix the cause and checkpoint again.`,
        { cause: error },
      );
    } finally {
      frozen.destroy();
    }
  }

  /**
   * Forks the heap into a new image at `path` (seed 001): the fork holds this heap's contents
   * as of now, at the same addresses, and shares this image's pages instead of copying them:
   * it reads them from here, and writes only to its own file. This image pins those pages (a
   * checkpoint records the pin, so it survives a restart) and never reuses their slots until
   * `releaseFork`. After the fork, each side sees only its own writes, and each checkpoints on
   * its own; the fork may be opened by another process while this one keeps writing.
   */
  async fork(path: string, usedBytes = this.block.usedBytes): Promise<void> {
    this.assertOpen();
    checkPath(path);
    if (this.readOnly) {
      throw new MemfabricError(
        ErrorCodes.READ_ONLY,
        `${this.path} was opened read-only; open it writable to fork it`,
      );
    }
    if (this.block.baseSlots > 0) {
      throw invalidArgument(
        `${this.path} is itself a fork (of ${this.block.basePath}); fork the original, or compact this one first ` +
          '(a compacted fork holds all of its pages)',
      );
    }
    if (this.block.pins.length >= PINS_MAX) {
      throw invalidArgument(
        `${this.path} already has ${PINS_MAX} forks; release one (releaseFork) before forking again`,
      );
    }
    const basePath = resolve(this.path);
    if (Buffer.byteLength(basePath, 'utf8') > BASE_PATH_MAX) {
      throw invalidArgument(
        `the image path ${basePath} is longer than ${BASE_PATH_MAX} bytes; a fork could not name it`,
      );
    }
    // The fork's file first: a bad path or an existing file fails before anything is pinned.
    const handle = await createExclusive(path);
    let pinned: number | undefined;
    try {
      const change: PinChange = { addPin: true };
      const report = await this.checkpoint(usedBytes, change);
      pinned = report.generation;
      const map = change.pinnedMap!;
      const pageSize = this.pageSize;
      // The fork's own slots start above every slot this image has used: none is in the base.
      const baseSlots = this.pager.slotHighWater;
      let next = baseSlots;
      const mapWrite = await map.write(async (bytes) => {
        const slot = next++;
        await handle.write(bytes, 0, bytes.length, slot * pageSize);
        return slot;
      });
      const block: Superblock = {
        pageSize,
        size: this.size,
        generation: 1,
        root: mapWrite.root,
        pages: map.pages,
        baseSlots,
        basePath,
        baseGeneration: report.generation,
        time: Date.now(),
        usedBytes,
        pins: [],
      };
      const both = Buffer.alloc(2 * pageSize);
      both.set(encodeSuperblock(block, pageSize), 0);
      await handle.write(both, 0, both.length, 0);
      await handle.datasync();
      await handle.close();
      await syncDirectory(dirname(path));
    } catch (error) {
      await handle.close().catch(() => undefined);
      await unlink(path).catch(() => undefined);
      if (pinned !== undefined) await this.releaseFork(pinned).catch(() => undefined);
      throw error;
    }
  }

  /**
   * Lets go of a fork's pages (give the fork's path, or the generation it was forked at): this
   * image may reuse them from the next checkpoint on. The fork must no longer be used, unless
   * it was compacted (then it holds all of its pages).
   */
  async releaseFork(fork: string | number, usedBytes = this.block.usedBytes): Promise<void> {
    this.assertOpen();
    let generation: number;
    if (typeof fork === 'number') {
      generation = fork;
    } else {
      const { block } = await probeImage(fork);
      if (block.baseSlots === 0 || resolve(block.basePath) !== resolve(this.path)) {
        throw invalidArgument(`${fork} is not a fork of ${this.path}`);
      }
      generation = block.baseGeneration;
    }
    if (!this.block.pins.some((pin) => pin.generation === generation)) {
      throw new MemfabricError(
        ErrorCodes.NOT_FOUND,
        `${this.path} holds no fork taken at generation ${generation} (it was released already?)`,
      );
    }
    await this.checkpoint(usedBytes, { dropPin: generation });
  }

  /** The forks this image pins: the generation each was taken at. */
  forks(): number[] {
    return this.block.pins.map((pin) => pin.generation);
  }

  /** A fork's base image, if this image is a fork. */
  get base(): { path: string; generation: number } | undefined {
    return this.block.baseSlots > 0
      ? { path: this.block.basePath, generation: this.block.baseGeneration }
      : undefined;
  }

  /**
   * Reads every stored page and map page back and checks it against its checksum. Returns the
   * problems found (empty when the image is sound). Reads the whole image: for `heap check`.
   */
  async verify(onProgress?: (bytesDone: number, bytesTotal: number) => void): Promise<string[]> {
    this.assertOpen();
    const problems: string[] = [];
    const page = new Uint8Array(this.pageSize);
    const { xxh32 } = await import('@node-rs/xxhash');
    const checks: [number, number, number][] = [];
    this.map.forEachEntry((heapPage, word, sum) => {
      if (word >= 2) checks.push([heapPage, word, sum]);
    });
    for (let i = 0; i < checks.length; i++) {
      if (onProgress && i % PROGRESS_PAGES === 0)
        onProgress(i * this.pageSize, checks.length * this.pageSize);
      const [heapPage, slot, sum] = checks[i]!;
      await this.pager.readSlot(slot, page);
      const found = xxh32(page, 0) >>> 0;
      if (found !== sum) {
        problems.push(
          `page ${heapPage} (address ${heapPage * this.pageSize}) in slot ${slot} does not match its checksum ` +
            `(found 0x${found.toString(16)}, recorded 0x${sum.toString(16)})`,
        );
      }
    }
    return problems;
  }

  stats(): HeapImageStats {
    this.assertOpen();
    const pager = this.pager.stats();
    let stored = 0;
    this.map.forEachEntry(() => stored++);
    return {
      path: this.path,
      pageSize: this.pageSize,
      size: this.size,
      generation: this.block.generation,
      storedPages: stored,
      imageBytes: this.pager.slotHighWater * this.pageSize,
      budgetBytes: pager.budgetBytes,
      residentBytes: pager.residentBytes,
      faults: pager.faults,
      evictions: pager.evictions,
    };
  }

  /**
   * Closes the image. Unless `checkpoint: false` (or opened read-only), first commits a last
   * checkpoint. Always releases the pager and its file; rejects if the checkpoint failed.
   */
  async close(options: { checkpoint?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    let failure: unknown;
    if (options.checkpoint !== false && !this.readOnly && !this.failure) {
      await this.checkpoint().catch((error: unknown) => (failure = error));
    } else {
      await this.busy;
    }
    this.closed = true;
    this.space.destroy();
    await this.pager.close().catch((error: unknown) => (failure ??= error));
    if (failure !== undefined) throw failure;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new MemfabricError(ErrorCodes.HEAP_CLOSED, `the heap ${this.path} was closed; open it again`);
    }
  }
}

/** A checkpoint that also adds a pin for a new fork, or drops one. */
export interface PinChange {
  addPin?: boolean;
  /** Out: the committed map, copied for the fork's own image. */
  pinnedMap?: PageMap;
  /** Generation of the pin to drop. */
  dropPin?: number;
}

/** Every slot a map names: its data slots and its own map pages. */
function slotsNamed(map: PageMap): Uint32Array {
  const slots: number[] = [];
  map.forEachEntry((_, word) => {
    if (word >= 2) slots.push(word);
  });
  map.forEachMapSlot((slot) => slots.push(slot));
  return Uint32Array.from(slots);
}

/**
 * Takes every reference the committed state holds: the superblock slots; for a fork, every
 * slot of its base (never to be written); each pin's slots (forks of this image read them);
 * and the committed map's own (its map pages, and each data slot twice: the checkpoint's
 * reference and the page-table entry's). Maps every stored page into `space` untouched.
 */
function adoptCheckpoint(
  pager: Pager,
  space: AddressSpace,
  map: PageMap,
  pins: PageMap[],
  block: Superblock,
  capacity: number,
  where: string,
): void {
  pager.adoptSlot(0);
  pager.adoptSlot(1);
  if (block.baseSlots > 2) pager.adoptRange(2, block.baseSlots);
  for (const pinned of pins) for (const slot of slotsNamed(pinned)) pager.adoptSlot(slot);
  map.forEachMapSlot((slot) => {
    if (slot >= capacity) throw slotOutside(where, slot, capacity);
    pager.adoptSlot(slot);
  });
  // The data pages, in bulk: a 4 GiB heap has a million of them, and opening must stay quick.
  const words = map.entryWords();
  const pages = map.pages;
  if (pages > space.pages) {
    for (let page = space.pages; page < pages; page++) {
      if (words[2 * page] !== SLOT_HOLE) {
        throw new MemfabricError(
          ErrorCodes.HEAP_CORRUPT,
          `${where}: the page map names page ${page}, beyond the heap's ${space.pages} pages`,
        );
      }
    }
  }
  const entries = new Int32Array(Math.min(pages, space.pages));
  for (let page = 0; page < entries.length; page++) {
    const word = words[2 * page]!;
    if (word === SLOT_ZERO) entries[page] = ZERO_FRAME;
    else if (word !== SLOT_HOLE) {
      if (word >= capacity) throw slotOutside(where, word, capacity);
      entries[page] = swappedEntry(word);
    }
  }
  // Two references per data slot: the checkpoint's and the page-table entry's.
  pager.adoptMapped(words, entries.length, 2, 2);
  space.installStored(0, entries);
  pager.sealAdopted();
}

function slotOutside(where: string, slot: number, capacity: number): MemfabricError {
  return new MemfabricError(
    ErrorCodes.HEAP_CORRUPT,
    `${where}: the page map names slot ${slot}, beyond the image's ${capacity} slots; restore the image from a copy`,
  );
}

/**
 * Reads the first superblock straight from the file to learn the page size (the pager needs it
 * before it can read anything), trying the second one at each possible page size when the
 * first is damaged. Refuses foreign and newer images here, before any worker starts.
 */
async function probeImage(path: string): Promise<Probe> {
  let handle;
  try {
    handle = await openFile(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new MemfabricError(
        ErrorCodes.NOT_FOUND,
        `heap image ${path} does not exist; create one with Heap.create (or \`memfabric heap create\`)`,
        { cause: error },
      );
    }
    throw filePathError(error, 'heap image', path) ?? error;
  }
  try {
    const { size: fileSize } = await handle.stat();
    if (fileSize === 0) {
      throw new MemfabricError(
        ErrorCodes.HEAP_FOREIGN,
        `${path} is empty, not a heap image (a Heap.create interrupted before its first write leaves this); ` +
          'it was left untouched: remove it and create the heap again',
      );
    }
    const first = Buffer.alloc(SUPERBLOCK_BYTES);
    await handle.read(first, 0, SUPERBLOCK_BYTES, 0);
    const a = decodeSuperblock(first);
    if (a.kind === 'valid') return { block: a.block, slot: 0 };
    for (let pageSize = 512; pageSize <= 65536; pageSize *= 2) {
      const second = Buffer.alloc(SUPERBLOCK_BYTES);
      const { bytesRead } = await handle.read(second, 0, SUPERBLOCK_BYTES, pageSize);
      if (bytesRead < SUPERBLOCK_BYTES) break;
      const b = decodeSuperblock(second);
      if (b.kind === 'valid' && b.block.pageSize === pageSize) return { block: b.block, slot: 1 };
      if (b.kind === 'newer') chooseSuperblock(path, a, b);
    }
    // Throws the right error (foreign, newer, or neither valid).
    chooseSuperblock(path, a, { kind: 'empty' });
    throw new MemfabricError(ErrorCodes.HEAP_CORRUPT, `${path}: no valid superblock`);
  } finally {
    await handle.close();
  }
}

function isNbdUrl(path: string): boolean {
  return /^nbds?:\/\//i.test(path);
}

function nbdSpec(options: HeapImageOptions): NbdStoreSpec {
  return { kind: 'nbd', url: options.path, ...(options.tls ? { tls: options.tls } : {}) };
}

/**
 * Creates an image on an NBD export: only where its first two pages are zeros (a fresh
 * appliance region), so a heap is never written over data (HEAP_EXISTS otherwise).
 */
async function createOnExport(spec: NbdStoreSpec, block: Superblock): Promise<void> {
  const pageSize = block.pageSize;
  const head = await readSlots(spec, pageSize, 0, 2);
  if (!head.every((byte) => byte === 0)) {
    throw new MemfabricError(
      ErrorCodes.HEAP_EXISTS,
      `${spec.url} already holds data in its first two pages; it was left untouched: open it with Heap.open, ` +
        'or use a fresh region (its first pages zeros)',
    );
  }
  const store = await NbdPageStore.open(spec, { pageSize, capacity: 2 });
  try {
    await store.write(0, encodeSuperblock(block, pageSize));
    await store.write(1, new Uint8Array(pageSize));
    await store.flush();
  } finally {
    await store.close();
  }
}

/** probeImage for an NBD export: the first superblock, else the second at each page size. */
async function probeExport(spec: NbdStoreSpec): Promise<Probe> {
  const a = decodeSuperblock(await readSlots(spec, SUPERBLOCK_BYTES, 0, 1));
  if (a.kind === 'valid') return { block: a.block, slot: 0 };
  let allEmpty = a.kind === 'empty';
  for (let pageSize = SUPERBLOCK_BYTES; pageSize <= 65536; pageSize *= 2) {
    let second: Uint8Array;
    try {
      second = await readSlots(spec, pageSize, 1, 1);
    } catch {
      break; // the export ends before this page size's second slot
    }
    const b = decodeSuperblock(second.subarray(0, SUPERBLOCK_BYTES));
    if (b.kind === 'valid' && b.block.pageSize === pageSize) return { block: b.block, slot: 1 };
    if (b.kind === 'newer') chooseSuperblock(spec.url, a, b);
    if (b.kind !== 'empty') allEmpty = false;
  }
  if (allEmpty) {
    throw new MemfabricError(
      ErrorCodes.HEAP_FOREIGN,
      `${spec.url} holds no heap image (its first pages are zeros); create one with Heap.create`,
    );
  }
  chooseSuperblock(spec.url, a, { kind: 'empty' });
  throw new MemfabricError(ErrorCodes.HEAP_CORRUPT, `${spec.url}: no valid superblock`);
}

/** Creates `path` for writing, refusing (HEAP_EXISTS) if anything is there. */
async function createExclusive(path: string): Promise<FileHandle> {
  try {
    return await openFile(path, 'wx');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new MemfabricError(
        ErrorCodes.HEAP_EXISTS,
        `${path} already exists; it was left untouched: open it with Heap.open, or give another path`,
      );
    }
    throw filePathError(error, 'heap image', path) ?? error;
  }
}

function checkPath(path: unknown): void {
  if (typeof path !== 'string' || path === '') {
    throw invalidArgument('a heap needs path: the image file (a non-empty string)');
  }
}

async function syncDirectory(directory: string): Promise<void> {
  const handle = await openFile(directory, 'r');
  try {
    await handle.sync();
  } catch {
    // Some file systems refuse fsync on a directory; the file itself is synced.
  } finally {
    await handle.close();
  }
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export { HEAP_FORMAT_VERSION };
