/**
 * The file system as the file store sees it: positional reads and writes on an open file, in
 * the shape of fs.promises' FileHandle. The store does all its I/O through this interface so
 * tests can put a double underneath that returns short reads and writes or fails with EIO —
 * the conditions a real disk produces too rarely to test.
 */
import { readSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';

export interface FileLayerHandle {
  /** Reads up to `length` bytes at `position` into buffer[offset..]; 0 bytes read means EOF. */
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  /**
   * The same, blocking the calling thread; returns the bytes read. Optional: the store uses it
   * for reads when present (see FilePageStore.read).
   */
  readSync?(buffer: Uint8Array, offset: number, length: number, position: number): number;
  /** Writes up to `length` bytes of buffer[offset..] at `position`; may write fewer. */
  write(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesWritten: number }>;
  truncate(length: number): Promise<void>;
  datasync(): Promise<void>;
  close(): Promise<void>;
  /**
   * The OS descriptor, when the handle is a real file (the real layer; test doubles leave it
   * out). The store names the file to the pager's main thread by it (FilePageStore.directSource).
   */
  readonly fd?: number;
}

export interface FileLayer {
  /** Opens a file with fs.open flags ('r+', 'wx+', …); rejects with the Node error (code ENOENT, …). */
  open(path: string, flags: string): Promise<FileLayerHandle>;
  /** Removes a name (a temporary swap file right after opening it). Default fs.unlink. */
  unlink?(path: string): Promise<void>;
}

/** The real file system. */
export const nodeFileLayer: FileLayer = {
  async open(path, flags) {
    const handle = await open(path, flags);
    return {
      read: (buffer, offset, length, position) => handle.read(buffer, offset, length, position),
      readSync: (buffer, offset, length, position) => readSync(handle.fd, buffer, offset, length, position),
      write: (buffer, offset, length, position) => handle.write(buffer, offset, length, position),
      truncate: (length) => handle.truncate(length),
      datasync: () => handle.datasync(),
      close: () => handle.close(),
      fd: handle.fd,
    };
  },
  unlink: (path) => unlink(path),
};
