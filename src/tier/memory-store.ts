/**
 * A page store in this process's memory: the simplest store, for tests, for small deployments
 * that want a bounded resident set without a disk, and as the body of the test double.
 *
 * Layout. Slots are grouped into chunks of SLOTS_PER_CHUNK(pageSize) consecutive slots, each
 * chunk one Uint8Array allocated when its first slot is written and dropped when its last
 * written slot is discarded, so memory follows what is stored, not the capacity. Slot s lives
 * in chunk s >>> chunkShift at byte (s & chunkMask) · pageSize.
 *
 * Chunks sit in a Map by chunk number (a sparse index), so a store's fixed cost is one bit
 * per slot whatever its capacity.
 *
 * Invariants:
 *   bit s of `written` is set  <=>  slot s holds a page (written and not discarded since)
 *   chunks.get(c).live == number of set bits of `written` in chunk c, and is > 0
 *   chunks.has(c)       <=>  some slot of chunk c holds a page
 * A slot whose bit is clear reads as zeros without looking at its chunk, so discard never
 * has to zero bytes, and a chunk's stale bytes are always overwritten before they are read.
 */
import type { PageStore } from './page-store.js';
import { StoreGuard, checkStoreGeometry } from './store-guard.js';

/** Bytes a chunk aims for: large enough to make allocation rare, small enough to free often. */
export const MEMORY_CHUNK_BYTES = 1024 * 1024;

export interface MemoryPageStoreOptions {
  pageSize: number;
  capacity: number;
  /** Name for messages (default "memory"). */
  name?: string;
}

interface Chunk {
  readonly bytes: Uint8Array;
  /** Slots of this chunk that hold a page. */
  live: number;
}

export class MemoryPageStore implements PageStore {
  readonly name: string;
  readonly pageSize: number;
  readonly capacity: number;
  private readonly guard: StoreGuard;
  /** log2 of the slots per chunk. */
  private readonly chunkShift: number;
  private readonly chunkMask: number;
  private readonly chunks = new Map<number, Chunk>();
  private written: Uint8Array;
  private bytes = 0;

  constructor(options: MemoryPageStoreOptions) {
    checkStoreGeometry(options.pageSize, options.capacity);
    this.name = options.name ?? 'memory';
    this.pageSize = options.pageSize;
    this.capacity = options.capacity;
    this.guard = new StoreGuard(this.name, this.pageSize, this.capacity);
    // Page sizes are powers of two no larger than a chunk, so this is exact.
    this.chunkShift = Math.log2(Math.max(1, MEMORY_CHUNK_BYTES / this.pageSize));
    this.chunkMask = (1 << this.chunkShift) - 1;
    this.written = new Uint8Array(Math.ceil(this.capacity / 8));
  }

  /** Bytes of page memory held right now (chunks allocated). */
  get memoryBytes(): number {
    return this.bytes;
  }

  async read(slot: number, dst: Uint8Array): Promise<void> {
    this.guard.checkPage(slot, dst);
    if ((this.written[slot >>> 3] & (1 << (slot & 7))) === 0) {
      dst.fill(0);
      return;
    }
    const start = (slot & this.chunkMask) * this.pageSize;
    dst.set(this.chunks.get(slot >>> this.chunkShift)!.bytes.subarray(start, start + this.pageSize));
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    this.guard.checkPage(slot, src);
    const c = slot >>> this.chunkShift;
    let chunk = this.chunks.get(c);
    if (chunk === undefined) {
      // The last chunk holds only the slots that remain, so a small store stays small.
      const slots = Math.min(this.chunkMask + 1, this.capacity - c * (this.chunkMask + 1));
      chunk = { bytes: new Uint8Array(slots * this.pageSize), live: 0 };
      this.chunks.set(c, chunk);
      this.bytes += chunk.bytes.length;
    }
    chunk.bytes.set(src, (slot & this.chunkMask) * this.pageSize);
    const bit = 1 << (slot & 7);
    if ((this.written[slot >>> 3] & bit) === 0) {
      this.written[slot >>> 3] |= bit;
      chunk.live++;
    }
  }

  async discard(slot: number): Promise<void> {
    this.guard.check(slot);
    const bit = 1 << (slot & 7);
    if ((this.written[slot >>> 3] & bit) === 0) return;
    this.written[slot >>> 3] &= ~bit;
    const c = slot >>> this.chunkShift;
    const chunk = this.chunks.get(c)!;
    if (--chunk.live === 0) {
      this.bytes -= chunk.bytes.length;
      this.chunks.delete(c);
    }
  }

  async flush(): Promise<void> {
    // Memory is as durable as it gets; only the state check remains.
    this.guard.enterAll();
    this.guard.leave();
  }

  async close(): Promise<void> {
    await this.guard.close(() => {
      this.chunks.clear();
      this.written = new Uint8Array(0);
      this.bytes = 0;
    });
  }
}
