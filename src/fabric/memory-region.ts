/**
 * What `Fabric.allocate` returns, whatever memory backs it: local RAM (a frame pool in this
 * process), external memory (appliances, optionally mirrored or coded) or a local file.
 */
import { invalidArgument, outOfRange } from '../errors.js';
import type { RegionHealth } from './external-region.js';

export type MemoryType = 'local' | 'external' | 'file';

export interface MemoryRegion {
  readonly kind: MemoryType;
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  readInto(offset: number, dst: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** Frees the memory (deletes remote regions, removes the file). */
  close(): Promise<void>;
  health(): RegionHealth;
}

/** Health of memory with no redundancy and nothing remote to lose. */
export function localHealth(): RegionHealth {
  return { degraded: false, lost: 0, tolerance: 0, shards: [] };
}

/** Throws a typed error unless [offset, offset + length) is a whole-byte range inside the region. */
export function checkRegionRange(offset: number, length: number, size: number, name: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length < 0) {
    throw invalidArgument(
      `offset ${offset} and length ${length} must be whole, non-negative numbers of bytes`,
    );
  }
  if (offset < 0 || offset + length > size) {
    throw outOfRange(`range [${offset}, ${offset + length}) lies outside the ${size}-byte region ${name}`);
  }
}
