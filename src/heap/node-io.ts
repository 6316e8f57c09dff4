/**
 * Page-sized nodes of the heap's collections (hash-map buckets, B+tree nodes), read in place and
 * written from a private copy.
 *
 * Reads: `view(address)` returns the node's bytes. When the node is exactly one page at a page
 * boundary (what the allocator gives a page-sized object) this is the page itself, borrowed from
 * the space without a copy; otherwise the bytes are copied into a scratch buffer. Either way the
 * view is BORROWED: valid only until the next call on the space (a read of another page may fault
 * it in and evict this one), so callers take what they need from it before touching the space.
 *
 * Writes: a mutation copies the node into a work buffer (`load`), edits it there (so node code
 * uses copyWithin and plain indexing) and writes it back whole (`store`); a page-sized node costs
 * two page copies per mutation and never allocates.
 */
import type { AddressSpace } from '../memory/address-space.js';

export class NodeIO {
  readonly nodeSize: number;
  private readonly space: AddressSpace;
  private readonly pageSize: number;
  private readonly scratch: Uint8Array;

  constructor(space: AddressSpace, nodeSize: number) {
    this.space = space;
    this.nodeSize = nodeSize;
    this.pageSize = space.pageSize;
    this.scratch = Buffer.alloc(nodeSize);
  }

  /** The node's bytes, BORROWED (see above). */
  view(address: number): Uint8Array {
    if (this.nodeSize === this.pageSize && address % this.pageSize === 0) {
      return this.space.borrowPageForRead(address / this.pageSize);
    }
    this.space.read(address, this.scratch);
    return this.scratch;
  }

  /** Copies the node into `into` (a work buffer of nodeSize bytes). */
  load(address: number, into: Uint8Array): void {
    this.space.read(address, into);
  }

  /** Writes a work buffer back as the node's bytes. */
  store(address: number, from: Uint8Array): void {
    this.space.write(address, from);
  }
}
