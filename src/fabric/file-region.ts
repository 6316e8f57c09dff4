/** A fabric region in a local file (sparse; read and written with positioned I/O). */
import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { checkRegionRange, localHealth, type MemoryRegion } from './memory-region.js';
import type { RegionHealth } from './external-region.js';

/** Zeros written per call when trimming (the file stays allocated: Node has no hole punching). */
const TRIM_CHUNK_BYTES = 1024 * 1024;

export class FileRegion implements MemoryRegion {
  readonly kind = 'file' as const;
  readonly name: string;
  readonly size: number;
  readonly path: string;
  private handle: FileHandle | undefined;

  private constructor(name: string, size: number, path: string, handle: FileHandle) {
    this.name = name;
    this.size = size;
    this.path = path;
    this.handle = handle;
  }

  static async create(directory: string, name: string, size: number): Promise<FileRegion> {
    const path = join(directory, `${name}.fabric`);
    const handle = await open(path, 'wx+');
    await handle.truncate(size);
    return new FileRegion(name, size, path, handle);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    const handle = this.check(offset, dst.length);
    let done = 0;
    while (done < dst.length) {
      const { bytesRead } = await handle.read(dst, done, dst.length - done, offset + done);
      if (bytesRead === 0) {
        throw new MemfabricError(ErrorCodes.CORRUPT_FILE, `${this.path} ended early at ${offset + done}`);
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const handle = this.check(offset, data.length);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    const zeros = Buffer.alloc(Math.min(TRIM_CHUNK_BYTES, length));
    for (let at = offset; at < offset + length; at += zeros.length) {
      await this.write(at, zeros.subarray(0, Math.min(zeros.length, offset + length - at)));
    }
  }

  async flush(): Promise<void> {
    await this.check(0, 0).datasync();
  }

  async close(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    this.handle = undefined;
    await handle.close();
    await rm(this.path, { force: true });
  }

  health(): RegionHealth {
    return localHealth();
  }

  private check(offset: number, length: number): FileHandle {
    if (!this.handle) throw new MemfabricError(ErrorCodes.DESTROYED, `region ${this.name} was closed`);
    checkRegionRange(offset, length, this.size, this.name);
    return this.handle;
  }
}
