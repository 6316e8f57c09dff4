/**
 * The few file operations file-backed regions use, behind an interface so tests can put a
 * file system under them that fails on demand or loses power (test/appliance/power-loss-layer.ts).
 * The node implementation is a thin wrapper over node:fs/promises.
 *
 * `writeFileAtomically` is the one way small files (region metadata, extent maps) are
 * replaced: write a temporary file, fsync it, rename it over the old one, fsync the directory.
 * A crash at any point leaves either the old file or the new one, never a mix or nothing.
 */
import { open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface LayerFile {
  /** Reads up to `length` bytes at `position` into `buffer[offset…]`; returns the count read. */
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Writes all of `buffer[offset…offset+length)` at `position`. */
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void>;
  truncate(size: number): Promise<void>;
  /** Makes written data durable (fdatasync). */
  datasync(): Promise<void>;
  /** Makes written data and metadata durable (fsync). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface FileLayer {
  /** 'r+': existing, read-write; 'wx+': create, fails if it exists; 'w': create or truncate. */
  open(path: string, flags: 'r' | 'r+' | 'wx+' | 'w'): Promise<LayerFile>;
  readFile(path: string): Promise<Buffer>;
  /** File size, or undefined when the path does not exist. */
  size(path: string): Promise<number | undefined>;
  rename(from: string, to: string): Promise<void>;
  /** Removes a file if it exists. */
  remove(path: string): Promise<void>;
  readdir(dir: string): Promise<string[]>;
  /** Makes the directory's entries (creates, renames, removes) durable. */
  syncDir(dir: string): Promise<void>;
}

class NodeFile implements LayerFile {
  constructor(private readonly handle: FileHandle) {}

  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    return (await this.handle.read(buffer, offset, length, position)).bytesRead;
  }

  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await this.handle.write(buffer, offset + done, length - done, position + done);
      done += bytesWritten;
    }
  }

  truncate(size: number): Promise<void> {
    return this.handle.truncate(size);
  }

  datasync(): Promise<void> {
    return this.handle.datasync();
  }

  sync(): Promise<void> {
    return this.handle.sync();
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

export const nodeFileLayer: FileLayer = {
  async open(path, flags) {
    return new NodeFile(await open(path, flags));
  },
  readFile: (path) => readFile(path),
  async size(path) {
    try {
      return (await stat(path)).size;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  },
  rename: (from, to) => rename(from, to),
  remove: (path) => rm(path, { force: true }),
  readdir: (dir) => readdir(dir),
  async syncDir(dir) {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
};

/** Replaces `path` with `bytes` so that a crash leaves the old or the new file (see above). */
export async function writeFileAtomically(layer: FileLayer, path: string, bytes: Uint8Array): Promise<void> {
  const temporary = `${path}.tmp`;
  try {
    const file = await layer.open(temporary, 'w');
    try {
      await file.write(bytes, 0, bytes.length, 0);
      await file.sync();
    } finally {
      await file.close();
    }
    await layer.rename(temporary, path);
  } catch (error) {
    await layer.remove(temporary).catch(() => undefined);
    throw error;
  }
  await layer.syncDir(dirname(path));
}
