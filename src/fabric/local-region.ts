/** Local memory for a fabric region: an address space over the fabric's own frame pool. */
import { AddressSpace, type FramePool } from '../memory/index.js';
import { localHealth, type MemoryRegion } from './memory-region.js';
import type { RegionHealth } from './external-region.js';

export class LocalRegion implements MemoryRegion {
  readonly kind = 'local' as const;
  readonly name: string;
  readonly size: number;
  private readonly space: AddressSpace;
  private readonly onClose: () => void;

  constructor(name: string, pool: FramePool, size: number, onClose: () => void) {
    this.name = name;
    this.size = size;
    this.space = new AddressSpace(pool, { size });
    this.onClose = onClose;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    this.space.read(offset, out);
    return out;
  }

  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    this.space.read(offset, dst);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.space.write(offset, data);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.space.trim(offset, length);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.space.isDestroyed) return;
    this.space.destroy();
    this.onClose();
  }

  health(): RegionHealth {
    return localHealth();
  }
}
