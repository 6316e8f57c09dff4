/**
 * Heap: a persistent virtual heap (seed 003). A program keeps its whole state in one, far
 * larger than its memory if it likes: the working part is cached in a bounded resident set
 * and the rest lives in the heap's image, which is also where checkpoints go (image.ts). After
 * a crash, `Heap.open` returns the last committed checkpoint in milliseconds, without reading
 * the data.
 *
 * Layout of the heap's address space:
 *   page 0      the heap header: magic, version, and the named roots table
 *   page 1 ...  the allocator (allocator.ts): its header, descriptors, then the objects
 * Everything is in the space, so a checkpoint of the space is a checkpoint of the heap: the
 * allocator's free lists, the roots, the values and collections built on top.
 *
 * Roots table (in the header page): up to `rootsMax` entries of ROOT_BYTES: u8 name length,
 * the name (UTF-8, at most ROOT_NAME_MAX bytes), and at ROOT_ADDRESS_AT the address (f64).
 * Roots are entry points (a map, a tree, a config struct), so a handful is enough; keep a
 * collection at one root for more.
 */
import { unlink } from 'node:fs/promises';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace } from '../memory/address-space.js';
import { HeapAllocator, type AllocatorStats, type AllocatorCheckResult } from './allocator.js';
import {
  HeapImage,
  type CheckpointReport,
  type CompactReport,
  type HeapImageOptions,
  type HeapImageStats,
} from './image.js';
import type { HeapMemory } from './memory.js';

const HEADER_MAGIC = 0x50414548; // "HEAP" little-endian
const HEADER_VERSION = 1;
const H_MAGIC = 0;
const H_VERSION = 4;
const H_ROOTS = 8;
const ROOTS_AT = 64;
const ROOT_BYTES = 64;
const ROOT_ADDRESS_AT = 56;
export const ROOT_NAME_MAX = 55;
export const CHECKPOINT_INTERVAL_DEFAULT_MS = 1000;

export interface HeapOptions extends HeapImageOptions {
  /**
   * Automatic checkpoints: one this often (milliseconds) when anything changed; 0 turns them
   * off. Default 1000. A last checkpoint is always taken by close().
   */
  checkpointIntervalMs?: number;
  /** Told about a failed automatic checkpoint (the error is CHECKPOINT_FAILED). Default: ignored, and reported by stats(). */
  onCheckpointError?: (error: unknown) => void;
}

export interface HeapStats extends HeapImageStats {
  allocator: AllocatorStats;
  roots: number;
  /** The last automatic checkpoint's failure, if the last one failed. */
  lastCheckpointError: string | undefined;
}

export class Heap implements HeapMemory {
  readonly image: HeapImage;
  readonly allocator: HeapAllocator;
  private timer: ReturnType<typeof setInterval> | undefined;
  private lastError: string | undefined;
  private closed = false;

  private constructor(image: HeapImage, allocator: HeapAllocator, options: HeapOptions) {
    this.image = image;
    this.allocator = allocator;
    const interval = options.checkpointIntervalMs ?? CHECKPOINT_INTERVAL_DEFAULT_MS;
    if (!Number.isFinite(interval) || interval < 0) {
      throw invalidArgument(`checkpointIntervalMs ${interval} must be 0 (off) or a number of milliseconds`);
    }
    if (interval > 0 && !image.readOnly) {
      this.timer = setInterval(() => this.automaticCheckpoint(options.onCheckpointError), interval);
      this.timer.unref();
    }
  }

  /** Creates a heap image at `options.path` (HEAP_EXISTS if anything is there) and opens it. */
  static async create(options: HeapOptions): Promise<Heap> {
    const image = await HeapImage.create(options);
    try {
      const allocator = format(image);
      await image.checkpoint(allocator.stats().liveBytes);
      return new Heap(image, allocator, options);
    } catch (error) {
      await image.close({ checkpoint: false }).catch(() => undefined);
      throw error;
    }
  }

  /** Opens an existing heap at its last committed checkpoint. */
  static async open(options: HeapOptions): Promise<Heap> {
    const image = await HeapImage.open(options);
    try {
      // Generation 0: the creator died before its first checkpoint; the heap is empty.
      const allocator = image.generation === 0 && !image.readOnly ? format(image) : attach(image);
      return new Heap(image, allocator, options);
    } catch (error) {
      await image.close({ checkpoint: false }).catch(() => undefined);
      throw error;
    }
  }

  /**
   * Creates a heap image at `options.path` whose contents `fill` writes into its space, then
   * attaches the allocator and roots found there, checkpoints and returns the open heap. For a
   * live migration's destination (src/migrate): the pages arrive from another process and
   * already hold a whole heap. If `fill` or the attach fails, the new image is closed and
   * removed (a file; an NBD export is left as created) and the error is rethrown.
   */
  static async receive(options: HeapOptions, fill: (space: AddressSpace) => Promise<void>): Promise<Heap> {
    const image = await HeapImage.create(options);
    try {
      await fill(image.space);
      const allocator = attach(image);
      await image.checkpoint(allocator.stats().liveBytes);
      return new Heap(image, allocator, options);
    } catch (error) {
      await image.close({ checkpoint: false }).catch(() => undefined);
      if (!/^nbds?:\/\//.test(options.path)) await unlink(options.path).catch(() => undefined);
      throw error;
    }
  }

  /**
   * For a lockstep standby only (src/migrate/standby.ts): opens a Heap over `image`, an image
   * created empty whose space a primary's replica then filled page by page (header, allocator
   * and roots came over the wire, already consistent), and commits it as the image's first
   * checkpoint. Distinct from any migration hook on purpose: nothing else should adopt a space
   * this way.
   */
  static async adoptReplicatedImage(image: HeapImage, options: HeapOptions): Promise<Heap> {
    try {
      const allocator = attach(image);
      await image.checkpoint(allocator.stats().liveBytes);
      return new Heap(image, allocator, options);
    } catch (error) {
      await image.close({ checkpoint: false }).catch(() => undefined);
      throw error;
    }
  }

  /**
   * Gives a heap's free space back to the file system: frees the allocator's free runs (they
   * become holes), then rewrites the image compactly (HeapImage.compact). Run it on a heap no
   * process has open.
   */
  static async compact(options: {
    path: string;
    budget?: number | string;
    onProgress?: (bytesDone: number, bytesTotal: number) => void;
  }): Promise<CompactReport> {
    const heap = await Heap.open({ ...options, checkpointIntervalMs: 0 });
    const forks = heap.forks().length;
    if (forks > 0) {
      // Refused before trimming: trimming and closing would commit a checkpoint, and a refused
      // compact must leave the image as it was.
      await heap.close({ checkpoint: false });
      throw invalidArgument(
        `${options.path} has ${forks} fork(s) reading its pages; release them (releaseFork) before compacting`,
      );
    }
    try {
      heap.allocator.trimFree();
    } finally {
      await heap.close();
    }
    return HeapImage.compact(options);
  }

  /** The heap's address space: byte addresses, typed accessors (see AddressSpace). */
  get space(): AddressSpace {
    this.assertOpen();
    return this.image.space;
  }

  get pageSize(): number {
    return this.image.pageSize;
  }

  /** The committed checkpoint's generation. */
  get generation(): number {
    return this.image.generation;
  }

  /** The most roots the header page holds. */
  get rootsMax(): number {
    return Math.floor((this.image.pageSize - ROOTS_AT) / ROOT_BYTES);
  }

  alloc(bytes: number): number {
    this.assertOpen();
    return this.allocator.alloc(bytes);
  }

  free(address: number): void {
    this.assertOpen();
    this.allocator.free(address);
  }

  realloc(address: number, bytes: number): number {
    this.assertOpen();
    return this.allocator.realloc(address, bytes);
  }

  usableSize(address: number): number {
    this.assertOpen();
    return this.allocator.usableSize(address);
  }

  /** Names `address` (0 clears the name). Persistent with the next checkpoint. */
  setRoot(name: string, address: number): void {
    this.assertOpen();
    const encoded = Buffer.from(checkRootName(name), 'utf8');
    if (!Number.isSafeInteger(address) || address < 0 || address >= this.image.size) {
      throw invalidArgument(
        `root address ${address} is not an address of this heap (0 to ${this.image.size - 1})`,
      );
    }
    const space = this.image.space;
    const count = space.readU32(H_ROOTS);
    const at = this.findRoot(encoded, count);
    if (at >= 0) {
      if (address === 0) {
        // Move the last entry into the hole, keeping the table dense.
        const last = ROOTS_AT + (count - 1) * ROOT_BYTES;
        if (last !== at) {
          const entry = new Uint8Array(ROOT_BYTES);
          space.read(last, entry);
          space.write(at, entry);
        }
        space.writeZeroes(last, ROOT_BYTES);
        space.writeU32(H_ROOTS, count - 1);
      } else {
        space.writeF64(at + ROOT_ADDRESS_AT, address);
      }
      return;
    }
    if (address === 0) return;
    if (count >= this.rootsMax) {
      throw invalidArgument(
        `this heap holds at most ${this.rootsMax} roots (one header page); keep a map at one root and name objects in it`,
      );
    }
    const entry = Buffer.alloc(ROOT_BYTES);
    entry[0] = encoded.length;
    encoded.copy(entry, 1);
    entry.writeDoubleLE(address, ROOT_ADDRESS_AT);
    space.write(ROOTS_AT + count * ROOT_BYTES, entry);
    space.writeU32(H_ROOTS, count + 1);
  }

  /** The address named `name`, or 0 when none is. */
  root(name: string): number {
    this.assertOpen();
    const encoded = Buffer.from(checkRootName(name), 'utf8');
    const at = this.findRoot(encoded, this.image.space.readU32(H_ROOTS));
    return at < 0 ? 0 : this.image.space.readF64(at + ROOT_ADDRESS_AT);
  }

  /** Every root, by name. */
  roots(): Map<string, number> {
    this.assertOpen();
    const space = this.image.space;
    const out = new Map<string, number>();
    const count = space.readU32(H_ROOTS);
    const entry = Buffer.alloc(ROOT_BYTES);
    for (let i = 0; i < count; i++) {
      space.read(ROOTS_AT + i * ROOT_BYTES, entry);
      out.set(entry.toString('utf8', 1, 1 + entry[0]!), entry.readDoubleLE(ROOT_ADDRESS_AT));
    }
    return out;
  }

  /**
   * Commits everything written so far as the new checkpoint (see image.ts for how, and why a
   * crash never yields a mix of two). The program may keep working while it runs: it pauses
   * only for the fork of the page table.
   */
  checkpoint(): Promise<CheckpointReport> {
    this.assertOpen();
    return this.image.checkpoint(this.allocator.stats().liveBytes);
  }

  /**
   * Forks the heap into a new image at `path` (seed 001): the fork holds the heap as of now, at
   * the same addresses (every stored reference stays valid), sharing this image's pages rather
   * than copying them. Open it with `Heap.open({ path })`, here or in another process; each
   * side then sees only its own writes and checkpoints on its own. This heap keeps the shared
   * pages until `releaseFork(path)`.
   */
  async fork(path: string): Promise<void> {
    this.assertOpen();
    await this.image.fork(path, this.allocator.stats().liveBytes);
  }

  /** Lets go of the pages a fork shares (the fork must no longer be used; see HeapImage.releaseFork). */
  async releaseFork(path: string): Promise<void> {
    this.assertOpen();
    await this.image.releaseFork(path, this.allocator.stats().liveBytes);
  }

  /** The generations at which this heap's live forks were taken. */
  forks(): number[] {
    this.assertOpen();
    return this.image.forks();
  }

  /**
   * Checks the image and the allocator: every stored page against its checksum (reads the
   * whole image), the header, and every allocator invariant. For `memfabric heap check`.
   */
  async check(
    options: { onProgress?: (bytesDone: number, bytesTotal: number) => void } = {},
  ): Promise<AllocatorCheckResult> {
    this.assertOpen();
    const problems = await this.image.verify(options.onProgress);
    if (problems.length === 0) {
      problems.push(...headerProblems(this.image.space));
      problems.push(...this.allocator.check().problems);
    }
    return { ok: problems.length === 0, problems };
  }

  stats(): HeapStats {
    this.assertOpen();
    return {
      ...this.image.stats(),
      allocator: this.allocator.stats(),
      roots: this.image.space.readU32(H_ROOTS),
      lastCheckpointError: this.lastError,
    };
  }

  /** Takes a last checkpoint (unless `checkpoint: false` or read-only) and releases everything. */
  async close(options: { checkpoint?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    const live =
      this.image.readOnly || options.checkpoint === false ? undefined : this.allocator.stats().liveBytes;
    if (live === undefined) await this.image.close({ checkpoint: false });
    else {
      // The image's own close checkpoint, with the allocator's figure for `heap info`.
      await this.image.checkpoint(live).then(
        () => this.image.close({ checkpoint: false }),
        async (error: unknown) => {
          await this.image.close({ checkpoint: false }).catch(() => undefined);
          throw error;
        },
      );
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private automaticCheckpoint(onError: ((error: unknown) => void) | undefined): void {
    if (this.closed || this.image.dirtyPageCount() === 0) return;
    this.checkpoint().then(
      () => (this.lastError = undefined),
      (error: unknown) => {
        this.lastError = error instanceof Error ? error.message : String(error);
        onError?.(error);
      },
    );
  }

  private findRoot(encoded: Buffer, count: number): number {
    const space = this.image.space;
    const entry = Buffer.alloc(ROOT_BYTES);
    for (let i = 0; i < count; i++) {
      const at = ROOTS_AT + i * ROOT_BYTES;
      space.read(at, entry);
      if (entry[0] === encoded.length && entry.subarray(1, 1 + encoded.length).equals(encoded)) return at;
    }
    return -1;
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new MemfabricError(
        ErrorCodes.HEAP_CLOSED,
        `the heap ${this.image.path} was closed; open it again with Heap.open`,
      );
    }
  }
}

function format(image: HeapImage): HeapAllocator {
  const space = image.space;
  space.writeU32(H_MAGIC, HEADER_MAGIC);
  space.writeU32(H_VERSION, HEADER_VERSION);
  space.writeU32(H_ROOTS, 0);
  return HeapAllocator.format(space, { base: image.pageSize, limit: image.size });
}

function attach(image: HeapImage): HeapAllocator {
  const problems = headerProblems(image.space);
  if (problems.length > 0) {
    throw new MemfabricError(
      ErrorCodes.HEAP_CORRUPT,
      `${image.path}: ${problems.join('; ')}; run \`memfabric heap check\` on it, or restore it from a copy`,
    );
  }
  try {
    return HeapAllocator.attach(image.space, image.pageSize);
  } catch (error) {
    if (error instanceof MemfabricError && error.code === ErrorCodes.HEAP_CORRUPT) {
      throw new MemfabricError(ErrorCodes.HEAP_CORRUPT, `${image.path}: ${error.message}`, { cause: error });
    }
    throw error;
  }
}

function headerProblems(space: AddressSpace): string[] {
  const problems: string[] = [];
  if (space.readU32(H_MAGIC) !== HEADER_MAGIC) problems.push('the heap header (page 0) has the wrong magic');
  else if (space.readU32(H_VERSION) !== HEADER_VERSION)
    problems.push(`the heap header has version ${space.readU32(H_VERSION)}`);
  const roots = space.readU32(H_ROOTS);
  if (roots > Math.floor((space.pageSize - ROOTS_AT) / ROOT_BYTES))
    problems.push(`the heap header counts ${roots} roots, more than fit`);
  return problems;
}

function checkRootName(name: unknown): string {
  if (typeof name !== 'string' || name === '')
    throw invalidArgument('a root name must be a non-empty string');
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > ROOT_NAME_MAX) {
    throw invalidArgument(
      `root name "${name.slice(0, 20)}…" is ${bytes} bytes of UTF-8; at most ${ROOT_NAME_MAX}`,
    );
  }
  return name;
}
