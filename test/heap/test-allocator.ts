/**
 * A stand-in for the heap's allocator in the values' tests: first fit among freed blocks
 * (splitting a larger one), else a bump pointer, over an AddressSpace. It keeps the HeapAllocatorApi contract: 16-byte
 * alignment, address 0 never handed out, MF_HEAP_FULL when nothing fits, MF_HEAP_BAD_FREE for a
 * free of an address it did not hand out or already freed. It fills new blocks with 0xa5 and
 * freed ones with 0xdd, as a real allocator's metadata and reuse would leave them, so that code
 * assuming zeroed memory or reading freed memory shows up in the tests.
 */
import { AddressSpace, FramePool } from '../../src/index.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import type { HeapAllocatorApi, HeapMemory } from '../../src/heap/memory.js';

const ALIGN = 16;

export class TestAllocator implements HeapAllocatorApi {
  private next = ALIGN;
  private readonly live = new Map<number, number>();
  private readonly freed: Array<{ address: number; size: number }> = [];

  constructor(readonly space: AddressSpace) {}

  get liveCount(): number {
    return this.live.size;
  }

  alloc(bytes: number): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new MemfabricError(
        ErrorCodes.INVALID_ARGUMENT,
        `alloc(${bytes}): a byte count is a whole number`,
      );
    }
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    let address = -1;
    const reuse = this.freed.findIndex((block) => block.size >= size);
    if (reuse >= 0) {
      const block = this.freed[reuse]!;
      address = block.address;
      if (block.size > size) this.freed[reuse] = { address: address + size, size: block.size - size };
      else this.freed.splice(reuse, 1);
    } else {
      if (this.next + size > this.space.size) {
        throw new MemfabricError(ErrorCodes.HEAP_FULL, `no room for ${bytes} bytes; free objects first`);
      }
      address = this.next;
      this.next += size;
    }
    this.live.set(address, size);
    this.space.write(address, Buffer.alloc(size, 0xa5));
    return address;
  }

  free(address: number): void {
    const size = this.usableSize(address);
    this.live.delete(address);
    this.space.write(address, Buffer.alloc(size, 0xdd));
    this.freed.push({ address, size });
  }

  /** Stays in place while the new size is from half the block to all of it, else moves (as size classes would). */
  realloc(address: number, bytes: number): number {
    const size = this.usableSize(address);
    if (bytes <= size && bytes * 2 >= size) return address;
    const moved = this.alloc(bytes);
    const copy = Buffer.alloc(Math.min(size, bytes));
    this.space.read(address, copy);
    this.space.write(moved, copy);
    this.free(address);
    return moved;
  }

  /** This allocator's state over another space (a fork of ours): the fork sees the same objects. */
  cloneFor(space: AddressSpace): TestAllocator {
    const copy = new TestAllocator(space);
    copy.next = this.next;
    for (const [address, size] of this.live) copy.live.set(address, size);
    for (const block of this.freed) copy.freed.push({ ...block });
    return copy;
  }

  usableSize(address: number): number {
    const size = this.live.get(address);
    if (size === undefined) {
      throw new MemfabricError(
        ErrorCodes.HEAP_BAD_FREE,
        `address ${address} is not a live object of this allocator; free each address alloc returned exactly once`,
      );
    }
    return size;
  }
}

export interface TestMemory extends HeapMemory {
  readonly allocator: TestAllocator;
  readonly pool: FramePool;
}

/** A space (1 GiB unless told) over a 64 MiB pool of 4 KiB pages, with a TestAllocator. */
export function testMemory(size: number | string = '1GiB'): TestMemory {
  const pool = new FramePool({ pageSize: 4096, capacity: '64MiB' });
  const space = new AddressSpace(pool, { size });
  return { pool, space, allocator: new TestAllocator(space) };
}

/** A fork of the memory: the space forked copy-on-write, the allocator's state copied. */
export function forkMemory(memory: TestMemory): TestMemory {
  const space = memory.space.fork();
  return { pool: memory.pool, space, allocator: memory.allocator.cloneFor(space) };
}
