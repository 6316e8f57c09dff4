/**
 * Sub-allocation of one region (seed 001: "a region of memory of the memory appliance may be
 * allocated as external memory prior to receipt of the request; a subset of the region is
 * selected at the first client device in coordination with a second client device"). Several
 * clients carve chunks out of one pre-allocated region; the appliance's ChunkAllocator is the
 * coordination point, so no chunk is ever handed to two clients at once.
 *
 * Layout. The region is cut into `chunks = floor(regionBytes / chunkBytes)` chunks of
 * `chunkBytes` (a multiple of the page size, fixed when sub-allocation is enabled; the tail
 * after the last whole chunk is never handed out). Chunk i covers bytes
 * [i * chunkBytes, (i + 1) * chunkBytes). Per chunk the allocator keeps numbers in typed
 * arrays, never an object:
 *
 *   used[i >>> 5] bit (i & 31)   1 when chunk i belongs to an allocation (a bitmap, so a search
 *                                skips 32 full or 32 empty chunks per word)
 *   owner[i]                     the owner id of chunk i's allocation; 0 when free
 *   run[i]                       at the first chunk of an allocation: its length in chunks;
 *                                0 at every other chunk
 *
 * and per owner id (1..OWNERS_MAX; names in `ownerNames`, ids recycled once an owner holds
 * nothing) `ownerAllocations[id]` and `ownerChunks[id]`.
 *
 * Invariants (check() verifies them all, O(chunks)):
 *   bit i of used is set          <=> owner[i] !== 0
 *   the allocations [s, s + run[s]) for every s with run[s] > 0 are disjoint and cover exactly
 *     the used chunks; every chunk of one allocation has the owner of its first chunk
 *   usedChunks == Σ run[s] == Σ ownerChunks[id];  allocationCount == #{s : run[s] > 0}
 *                 == Σ ownerAllocations[id]
 *   usedChunks + freeChunks == chunks
 *   every chunk below firstFree is used (firstFree is where first fit starts looking)
 *
 * Policy: first fit, lowest offset first. allocate(owner, n) finds the lowest run of n free
 * chunks at or above firstFree; free(offset) releases exactly one whole allocation, named by
 * its first byte. Freed runs coalesce by construction (free space is just clear bits).
 *
 * Atomicity: allocate and free are synchronous; they never await. The appliance's event loop
 * runs each admin request handler to completion before starting another, so a search and the
 * marking of the chunks it found cannot interleave with another client's claim. That is the
 * whole concurrency story: no locks, and no chunk can be claimed twice.
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

/** Chunk size when a claim does not name one. */
export const CHUNK_BYTES_DEFAULT = 1024 * 1024;
/** Chunks per region at most: 1 Mi chunks cost 7 MiB of tables (1 TiB in 1 MiB chunks). */
export const CHUNKS_MAX = 1 << 20;
/** Distinct owners holding chunks of one region at once. */
export const OWNERS_MAX = 4096;
/** Allocations one owner may hold in one region at once. */
export const ALLOCATIONS_PER_OWNER_MAX = 16_384;
/** Allocations one listing returns at most (a cursor gives the rest). */
export const LIST_LIMIT_MAX = 4096;
/** Owners: printable, bounded, safe in URLs and logs. */
export const OWNER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

const BITS_PER_WORD = 32;
const WORD_SHIFT = 5;
const BIT_MASK = BITS_PER_WORD - 1;
const FULL_WORD = 0xffffffff;

export interface ChunkAllocation {
  /** Byte offset of the first chunk in the region. */
  offset: number;
  /** Bytes: chunks × chunkBytes. */
  length: number;
  owner: string;
}

export interface ChunkStats {
  chunkSize: number;
  chunksTotal: number;
  chunksUsed: number;
  chunksFree: number;
  /** The longest run of free chunks: the largest claim that would succeed now, in chunks. */
  largestFreeRun: number;
  allocations: number;
  owners: number;
}

export interface ChunkOwnerStats {
  owner: string;
  allocations: number;
  chunks: number;
}

export class ChunkAllocator {
  readonly chunkBytes: number;
  readonly chunks: number;
  private readonly used: Uint32Array;
  private readonly owner: Uint16Array;
  private readonly run: Uint32Array;
  private readonly ownerNames: Array<string | undefined> = [];
  private readonly ownerIds = new Map<string, number>();
  private readonly ownerAllocations = new Uint32Array(OWNERS_MAX + 1);
  private readonly ownerChunks = new Uint32Array(OWNERS_MAX + 1);
  private readonly freeOwnerIds: number[] = [];
  private nextOwnerId = 1;
  private usedChunks = 0;
  private allocationCount = 0;
  private firstFree = 0;

  /**
   * `regionBytes` is the region's size; `chunkBytes` must be a positive multiple of
   * `pageSize` no larger than the region, and give at most CHUNKS_MAX chunks.
   */
  constructor(options: { regionBytes: number; chunkBytes: number; pageSize: number }) {
    const { regionBytes, chunkBytes, pageSize } = options;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < pageSize || chunkBytes % pageSize !== 0) {
      throw invalidArgument(
        `chunkSize ${chunkBytes} must be a positive multiple of the page size ${pageSize}`,
      );
    }
    if (chunkBytes > regionBytes) {
      throw invalidArgument(`chunkSize ${chunkBytes} is larger than the region (${regionBytes} bytes)`);
    }
    const chunks = Math.floor(regionBytes / chunkBytes);
    if (chunks > CHUNKS_MAX) {
      const needed = Math.ceil(regionBytes / CHUNKS_MAX / pageSize) * pageSize;
      throw invalidArgument(
        `a ${regionBytes}-byte region in ${chunkBytes}-byte chunks has ${chunks} chunks; at most ` +
          `${CHUNKS_MAX} are allowed, so use a chunkSize of at least ${needed}`,
      );
    }
    this.chunkBytes = chunkBytes;
    this.chunks = chunks;
    this.used = new Uint32Array(Math.ceil(chunks / BITS_PER_WORD));
    this.owner = new Uint16Array(chunks);
    this.run = new Uint32Array(chunks);
    this.ownerNames.length = OWNERS_MAX + 1;
  }

  /**
   * Allocates `count` contiguous chunks for `owner` (first fit) and returns them. Throws
   * MF_CHUNKS_EXHAUSTED, changing nothing, when no run is long enough or a bound is reached.
   */
  allocate(owner: string, count: number): ChunkAllocation {
    checkOwner(owner);
    if (!Number.isSafeInteger(count) || count < 1) {
      throw invalidArgument(`chunk count ${count} must be a whole number of at least 1`);
    }
    if (count > this.chunks) {
      throw invalidArgument(`a claim of ${count} chunks can never fit: the region has ${this.chunks}`);
    }
    let id = this.ownerIds.get(owner) ?? 0;
    if (id !== 0 && this.ownerAllocations[id]! >= ALLOCATIONS_PER_OWNER_MAX) {
      throw exhausted(
        `owner ${owner} already holds ${ALLOCATIONS_PER_OWNER_MAX} allocations in this region, the most ` +
          'allowed; release some or claim larger ones',
      );
    }
    if (id === 0 && this.ownerIds.size >= OWNERS_MAX) {
      throw exhausted(`this region already has ${OWNERS_MAX} owners holding chunks, the most allowed`);
    }
    const start = this.findRun(count);
    if (start < 0) {
      throw exhausted(
        `no run of ${count} free chunk(s) of ${this.chunkBytes} bytes: ${this.chunks - this.usedChunks} ` +
          `of ${this.chunks} are free, the longest free run is ${this.largestFreeRun()}`,
      );
    }
    // Everything below can no longer fail: the allocation is all or nothing.
    if (id === 0) id = this.addOwner(owner);
    const end = start + count;
    this.setBits(start, end, true);
    this.owner.fill(id, start, end);
    this.run[start] = count;
    this.ownerAllocations[id]!++;
    this.ownerChunks[id]! += count;
    this.usedChunks += count;
    this.allocationCount++;
    if (start === this.firstFree) this.firstFree = this.nextFree(end);
    return { offset: start * this.chunkBytes, length: count * this.chunkBytes, owner };
  }

  /**
   * Frees the allocation whose first byte is `offset`. Only its owner may free it, unless
   * `force`. Throws MF_NOT_FOUND when no allocation starts there, MF_CONFLICT for another owner.
   */
  free(offset: number, owner: string | undefined, force = false): ChunkAllocation {
    const start = this.startAt(offset);
    if (start < 0) {
      throw new MemfabricError(
        ErrorCodes.NOT_FOUND,
        `no allocation starts at offset ${offset}; list them with GET /v1/regions/:name/chunks`,
      );
    }
    const id = this.owner[start]!;
    const holder = this.ownerNames[id]!;
    if (!force && owner !== holder) {
      throw new MemfabricError(
        ErrorCodes.CONFLICT,
        owner === undefined
          ? `the allocation at offset ${offset} belongs to an owner; name it, or force the release`
          : `the allocation at offset ${offset} belongs to another owner, not ${owner}`,
      );
    }
    const count = this.run[start]!;
    const end = start + count;
    this.setBits(start, end, false);
    this.owner.fill(0, start, end);
    this.run[start] = 0;
    this.ownerChunks[id]! -= count;
    this.usedChunks -= count;
    this.allocationCount--;
    if (--this.ownerAllocations[id]! === 0) this.dropOwner(id);
    if (start < this.firstFree) this.firstFree = start;
    return { offset, length: count * this.chunkBytes, owner: holder };
  }

  /** The allocation covering byte `offset`, if any. */
  allocationAt(offset: number): ChunkAllocation | undefined {
    if (!Number.isSafeInteger(offset) || offset < 0) return undefined;
    const chunk = Math.floor(offset / this.chunkBytes);
    if (chunk >= this.chunks || this.owner[chunk] === 0) return undefined;
    let start = chunk;
    while (this.run[start] === 0) start--;
    return this.view(start);
  }

  /**
   * Allocations in offset order, starting at byte `after` (inclusive; default 0), at most
   * `limit` (≤ LIST_LIMIT_MAX), only `owner`'s if given. `next` is the offset to pass as
   * `after` for the rest, or null when there is no more.
   */
  list(options: { owner?: string; after?: number; limit?: number } = {}): {
    allocations: ChunkAllocation[];
    next: number | null;
  } {
    const limit = Math.min(options.limit ?? LIST_LIMIT_MAX, LIST_LIMIT_MAX);
    const ownerId = options.owner === undefined ? -1 : (this.ownerIds.get(options.owner) ?? 0);
    const allocations: ChunkAllocation[] = [];
    if (ownerId === 0) return { allocations, next: null };
    let chunk = Math.ceil(Math.max(0, options.after ?? 0) / this.chunkBytes);
    // Step back to the start of an allocation that `after` falls inside, then skip it.
    if (chunk < this.chunks && this.owner[chunk] !== 0 && this.run[chunk] === 0) {
      while (this.run[chunk] === 0) chunk--;
      chunk += this.run[chunk]!;
    }
    while (chunk < this.chunks) {
      chunk = this.nextUsed(chunk, this.chunks);
      if (chunk < 0) break;
      if (ownerId < 0 || this.owner[chunk] === ownerId) {
        if (allocations.length === limit) return { allocations, next: chunk * this.chunkBytes };
        allocations.push(this.view(chunk));
      }
      chunk += this.run[chunk]!;
    }
    return { allocations, next: null };
  }

  stats(): ChunkStats {
    return {
      chunkSize: this.chunkBytes,
      chunksTotal: this.chunks,
      chunksUsed: this.usedChunks,
      chunksFree: this.chunks - this.usedChunks,
      largestFreeRun: this.largestFreeRun(),
      allocations: this.allocationCount,
      owners: this.ownerIds.size,
    };
  }

  /** Every owner holding chunks, by name. */
  owners(): ChunkOwnerStats[] {
    return [...this.ownerIds]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([owner, id]) => ({
        owner,
        allocations: this.ownerAllocations[id]!,
        chunks: this.ownerChunks[id]!,
      }));
  }

  /** Verifies every invariant in the header; throws MF_INTERNAL naming the first broken one. */
  check(): void {
    const fail = (what: string) => {
      throw new MemfabricError(ErrorCodes.INTERNAL, `chunk allocator invariant broken: ${what}`);
    };
    const chunksOf = new Uint32Array(OWNERS_MAX + 1);
    const allocationsOf = new Uint32Array(OWNERS_MAX + 1);
    let used = 0;
    let allocations = 0;
    let inRun = 0;
    let runOwner = 0;
    let lowestFree = -1;
    for (let i = 0; i < this.chunks; i++) {
      const bit = (this.used[i >>> WORD_SHIFT]! >>> (i & BIT_MASK)) & 1;
      const id = this.owner[i]!;
      if ((bit === 1) !== (id !== 0)) fail(`chunk ${i}: used bit ${bit}, owner ${id}`);
      if (this.run[i]! > 0) {
        if (inRun > 0) fail(`chunk ${i} starts an allocation inside another`);
        if (id === 0) fail(`chunk ${i} starts an allocation but is free`);
        if (i + this.run[i]! > this.chunks) fail(`allocation at chunk ${i} runs past the end`);
        inRun = this.run[i]!;
        runOwner = id;
        allocations++;
        allocationsOf[id]!++;
      }
      if (inRun > 0) {
        if (id !== runOwner) fail(`chunk ${i} has owner ${id} inside an allocation of ${runOwner}`);
        inRun--;
        used++;
        chunksOf[id]!++;
      } else if (id !== 0) {
        fail(`chunk ${i} is owned but belongs to no allocation`);
      } else if (lowestFree < 0) {
        lowestFree = i;
      }
    }
    if (used !== this.usedChunks) fail(`usedChunks ${this.usedChunks}, counted ${used}`);
    if (allocations !== this.allocationCount) {
      fail(`allocationCount ${this.allocationCount}, counted ${allocations}`);
    }
    if (lowestFree >= 0 && this.firstFree > lowestFree) {
      fail(`firstFree ${this.firstFree} is above free chunk ${lowestFree}`);
    }
    for (let id = 1; id <= OWNERS_MAX; id++) {
      if (chunksOf[id] !== this.ownerChunks[id] || allocationsOf[id] !== this.ownerAllocations[id]) {
        fail(`owner ${id}: table says ${this.ownerChunks[id]} chunks, counted ${chunksOf[id]}`);
      }
      const name = this.ownerNames[id];
      if ((name !== undefined) !== allocationsOf[id]! > 0) fail(`owner ${id} named ${name} holds nothing`);
      if (name !== undefined && this.ownerIds.get(name) !== id) fail(`owner ${name} maps to another id`);
    }
  }

  // ---- internals --------------------------------------------------------------------------

  /** First chunk of the lowest run of `count` free chunks, or -1. */
  private findRun(count: number): number {
    const chunks = this.chunks;
    let start = this.firstFree;
    while (start + count <= chunks) {
      start = this.nextFree(start);
      if (start + count > chunks) return -1;
      const blocker = this.nextUsed(start, start + count);
      if (blocker < 0) return start;
      start = blocker + 1;
    }
    return -1;
  }

  /** The first free chunk at or after `from`, or `chunks` if none. */
  private nextFree(from: number): number {
    const chunks = this.chunks;
    let word = from >>> WORD_SHIFT;
    if (from >= chunks) return chunks;
    // Bits below `from` in the first word count as used.
    let bits = ~(this.used[word]! | ((1 << (from & BIT_MASK)) - 1));
    while (bits === 0) {
      if (++word >= this.used.length) return chunks;
      bits = ~this.used[word]!;
    }
    const found = (word << WORD_SHIFT) + lowestBit(bits);
    return found < chunks ? found : chunks;
  }

  /** The first used chunk in [from, limit), or -1. */
  private nextUsed(from: number, limit: number): number {
    if (from >= limit) return -1;
    let word = from >>> WORD_SHIFT;
    const lastWord = (limit - 1) >>> WORD_SHIFT;
    // Mask off the bits below `from` in the first word.
    let bits = this.used[word]! & ~((1 << (from & BIT_MASK)) - 1);
    while (bits === 0) {
      if (++word > lastWord) return -1;
      bits = this.used[word]!;
    }
    const found = (word << WORD_SHIFT) + lowestBit(bits);
    return found < limit ? found : -1;
  }

  /** Sets (or clears) the used bits of chunks [start, end). */
  private setBits(start: number, end: number, value: boolean): void {
    let i = start;
    while (i < end) {
      const word = i >>> WORD_SHIFT;
      const bit = i & BIT_MASK;
      const n = Math.min(BITS_PER_WORD - bit, end - i);
      const mask = n === BITS_PER_WORD ? FULL_WORD : ((1 << n) - 1) << bit;
      this.used[word] = value ? this.used[word]! | mask : this.used[word]! & ~mask;
      i += n;
    }
  }

  private largestFreeRun(): number {
    let best = 0;
    let chunk = this.firstFree;
    while (chunk < this.chunks && best < this.chunks - chunk) {
      const start = this.nextFree(chunk);
      if (start >= this.chunks) break;
      const used = this.nextUsed(start, this.chunks);
      const end = used < 0 ? this.chunks : used;
      if (end - start > best) best = end - start;
      chunk = end;
    }
    return best;
  }

  /** The chunk index an allocation starting at byte `offset` has, or -1 if none starts there. */
  private startAt(offset: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % this.chunkBytes !== 0) return -1;
    const chunk = offset / this.chunkBytes;
    return chunk < this.chunks && this.run[chunk]! > 0 ? chunk : -1;
  }

  private view(start: number): ChunkAllocation {
    return {
      offset: start * this.chunkBytes,
      length: this.run[start]! * this.chunkBytes,
      owner: this.ownerNames[this.owner[start]!]!,
    };
  }

  private addOwner(owner: string): number {
    const id = this.freeOwnerIds.pop() ?? this.nextOwnerId++;
    this.ownerNames[id] = owner;
    this.ownerIds.set(owner, id);
    return id;
  }

  private dropOwner(id: number): void {
    this.ownerIds.delete(this.ownerNames[id]!);
    this.ownerNames[id] = undefined;
    this.freeOwnerIds.push(id);
  }
}

export function checkOwner(owner: unknown): string {
  if (typeof owner !== 'string' || !OWNER_PATTERN.test(owner)) {
    throw invalidArgument(
      `owner ${JSON.stringify(owner)} must be 1-128 characters of letters, digits, '.', '_', ':', '@' ` +
        "or '-', starting with a letter or digit",
    );
  }
  return owner;
}

function exhausted(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.CHUNKS_EXHAUSTED, message);
}

/** Index of the lowest set bit of a non-zero 32-bit word. */
function lowestBit(bits: number): number {
  return 31 - Math.clz32(bits & -bits);
}
