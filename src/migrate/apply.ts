/**
 * Applying a received page batch (wire.ts) to an address space: data runs are written, zero
 * runs map the shared zero frame, hole runs are trimmed. The batch is checked whole against
 * the space before anything is applied (readPageBatch), so a batch naming a page outside the
 * space changes nothing.
 */
import type { AddressSpace } from '../memory/address-space.js';
import { PAGE_DATA, PAGE_ZERO, readPageBatch } from './wire.js';

/** Applies `batch` to `space`; returns the pages it held. */
export function applyPageBatch(space: AddressSpace, batch: Uint8Array): number {
  const pageSize = space.pageSize;
  const size = space.size;
  return readPageBatch(batch, pageSize, space.pages, (first, pages, kind, data) => {
    const offset = first * pageSize;
    // The last page of a space may be partial: clip every run to the space.
    const length = Math.min(pages * pageSize, size - offset);
    if (kind === PAGE_DATA) {
      space.write(offset, length === data.length ? data : data.subarray(0, length));
    } else if (kind === PAGE_ZERO) {
      space.writeZeroes(offset, length);
    } else {
      space.trim(offset, length);
    }
  });
}
