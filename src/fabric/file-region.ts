/**
 * A fabric region in a local file (sparse; read and written with positioned I/O). Creating one
 * leaves nothing behind when it fails, and a failure the user can fix (the directory, its
 * permissions, a name taken, a size the file system refuses) is a typed error naming the path.
 */
import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { filePathError } from '../paths.js';
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
    let handle: FileHandle;
    try {
      handle = await open(path, 'wx+');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new MemfabricError(
          ErrorCodes.ALREADY_EXISTS,
          `file region ${path} already exists; choose another region name, or remove the file if nothing uses it`,
          { cause: error },
        );
      }
      throw filePathError(error, 'file region', path) ?? error;
    }
    try {
      await handle.truncate(size);
    } catch (error) {
      // The file is ours and empty: take it away again.
      await handle.close().catch(() => undefined);
      await rm(path, { force: true }).catch(() => undefined);
      if ((error as NodeJS.ErrnoException).code === 'EFBIG') {
        throw invalidArgument(
          `size ${size} is more than the file system under ${directory} allows for one file; ask for less, or use another fileDirectory`,
        );
      }
      throw error;
    }
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
