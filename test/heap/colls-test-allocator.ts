/**
 * A stand-in for the heap's allocator in the collection tests, following HeapAllocatorApi's
 * contract: 16-byte aligned objects, address 0 never handed out, MF_HEAP_BAD_FREE for a free of
 * anything not live, MF_HEAP_FULL when the space has no room. Objects of a page or more get whole
 * pages at a page boundary (as a page-run allocator gives them); `misalign` shifts those by 16
 * bytes so the collections' copy path (a node not aligned to a page) is tested too. `poison`
 * fills new objects with 0xcd, so nothing may rely on fresh memory reading as zeros.
 *
 * Its bookkeeping lives in JS (it is a test double): `clone()` copies it for a forked space.
 */
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import type { AddressSpace } from '../../src/memory/address-space.js';
import type { HeapAllocatorApi, HeapMemory } from '../../src/heap/memory.js';

export interface TestAllocatorOptions {
  misalign?: boolean;
  poison?: boolean;
}

export class TestAllocator implements HeapAllocatorApi {
  readonly pageSize: number;
  private live = new Map<number, number>();
  private small = new Map<number, number[]>();
  private large = new Map<number, number[]>();
  /** Live page-run objects: address -> pages. */
  private runs = new Map<number, number>();
  private top: number;
  private smallPage = 0;
  private smallUsed = 0;
  liveBytes = 0;
  /** When > 0: the failIn-th alloc from now throws MF_HEAP_FULL (fault injection). */
  failIn = 0;

  constructor(
    private readonly space: AddressSpace,
    private readonly options: TestAllocatorOptions = {},
  ) {
    this.pageSize = space.pageSize;
    this.top = space.pageSize; // page 0 is never used: address 0 means "none"
  }

  get liveObjects(): number {
    return this.live.size;
  }

  alloc(bytes: number): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new MemfabricError(ErrorCodes.INVALID_ARGUMENT, `cannot allocate ${bytes} bytes`);
    }
    if (this.failIn > 0 && --this.failIn === 0) {
      throw new MemfabricError(
        ErrorCodes.HEAP_FULL,
        'injected: no room for this allocation in the test heap',
      );
    }
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    let address: number;
    if (size + (this.options.misalign ? 16 : 0) > this.pageSize / 2) {
      const pages = Math.ceil((size + (this.options.misalign ? 16 : 0)) / this.pageSize);
      const reuse = this.large.get(pages)?.pop();
      address = reuse ?? this.takePages(pages);
      if (this.options.misalign) address += 16;
      this.live.set(address, pages * this.pageSize - (this.options.misalign ? 16 : 0));
      this.runs.set(address, pages);
    } else {
      const reuse = this.small.get(size)?.pop();
      if (reuse !== undefined) {
        address = reuse;
      } else {
        if (this.smallPage === 0 || this.smallUsed + size > this.pageSize) {
          this.smallPage = this.takePages(1);
          this.smallUsed = 0;
        }
        address = this.smallPage + this.smallUsed;
        this.smallUsed += size;
      }
      this.live.set(address, size);
    }
    this.liveBytes += this.live.get(address)!;
    if (this.options.poison) this.space.write(address, new Uint8Array(this.live.get(address)!).fill(0xcd));
    return address;
  }

  free(address: number): void {
    const size = this.live.get(address);
    if (size === undefined) {
      throw new MemfabricError(ErrorCodes.HEAP_BAD_FREE, `free(${address}): not a live object`);
    }
    this.live.delete(address);
    this.liveBytes -= size;
    const pages = this.runs.get(address);
    if (pages !== undefined) {
      this.runs.delete(address);
      const start = this.options.misalign ? address - 16 : address;
      if (!this.large.has(pages)) this.large.set(pages, []);
      this.large.get(pages)!.push(start);
    } else {
      if (!this.small.has(size)) this.small.set(size, []);
      this.small.get(size)!.push(address);
    }
  }

  realloc(address: number, bytes: number): number {
    const size = this.usableSize(address);
    if (bytes <= size) return address;
    const moved = this.alloc(bytes);
    const copy = new Uint8Array(size);
    this.space.read(address, copy);
    this.space.write(moved, copy);
    this.free(address);
    return moved;
  }

  usableSize(address: number): number {
    const size = this.live.get(address);
    if (size === undefined) {
      throw new MemfabricError(ErrorCodes.HEAP_BAD_FREE, `usableSize(${address}): not a live object`);
    }
    return size;
  }

  /** The same bookkeeping for a fork of the space (`space` is the fork). */
  clone(space: AddressSpace): TestAllocator {
    const copy = new TestAllocator(space, this.options);
    copy.live = new Map(this.live);
    copy.small = new Map([...this.small].map(([k, v]) => [k, [...v]]));
    copy.large = new Map([...this.large].map(([k, v]) => [k, [...v]]));
    copy.runs = new Map(this.runs);
    copy.top = this.top;
    copy.smallPage = this.smallPage;
    copy.smallUsed = this.smallUsed;
    copy.liveBytes = this.liveBytes;
    return copy;
  }

  private takePages(pages: number): number {
    const address = this.top;
    if (address + pages * this.pageSize > this.space.size) {
      throw new MemfabricError(ErrorCodes.HEAP_FULL, `no room for ${pages} pages in the test heap`);
    }
    this.top += pages * this.pageSize;
    return address;
  }
}

/** A HeapMemory over `space` with a fresh TestAllocator. */
export function testMemory(
  space: AddressSpace,
  options: TestAllocatorOptions = {},
): HeapMemory & { allocator: TestAllocator } {
  return { space, allocator: new TestAllocator(space, options) };
}
