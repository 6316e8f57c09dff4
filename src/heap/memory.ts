/**
 * What the heap's values and collections need from the heap underneath: its memory (an
 * AddressSpace: byte addresses, typed accessors that neither allocate nor await on resident
 * pages) and an allocator whose metadata lives in that same memory, so it persists with it.
 *
 * Addresses are plain numbers (byte offsets in the heap's address space). Address 0 is never
 * handed out, so 0 can mean "no object" in stored references.
 */
import type { AddressSpace } from '../memory/address-space.js';

export interface HeapAllocatorApi {
  /** A new object of at least `bytes` bytes (16-byte aligned, contents undefined). MF_HEAP_FULL when none fits. */
  alloc(bytes: number): number;
  /** Frees an object alloc/realloc returned. MF_HEAP_BAD_FREE for any other address or a second free. */
  free(address: number): void;
  /** Resizes an object, moving it when it must; returns its (possibly new) address. */
  realloc(address: number, bytes: number): number;
  /** Bytes usable at `address` (at least what was asked for). MF_HEAP_BAD_FREE for a non-object. */
  usableSize(address: number): number;
}

export interface HeapMemory {
  readonly space: AddressSpace;
  readonly allocator: HeapAllocatorApi;
}
