/**
 * The embedded default page store: one local file, slots at fixed offsets.
 *
 * File format (version 1), all integers little-endian:
 *
 *   offset 0          header page (pageSize bytes, zero padded)
 *     0   8 bytes     magic 'MFSWAP\0\0'
 *     8   u32         format version (1)
 *     12  u32         page size in bytes
 *     16  u64         capacity in slots (informational; rewritten at every open)
 *   offset (s + 1) · pageSize    slot s, pageSize bytes
 *
 * Padding the header to a page keeps every slot page-aligned in the file.
 *
 * Swap does not survive a restart: which page a slot held lived in the pager's memory. So the
 * contents of the file are scratch. Opening creates the file, or reuses one of ours with the
 * same page size (emptying it), and refuses anything else with CORRUPT_FILE — a path typed by
 * mistake must never cost the user a file. An empty file counts as ours: there is nothing in it
 * to lose, and a crash between creating the file and writing its header leaves exactly that.
 *
 * What is written lives in an in-memory bitmap, one bit per slot:
 *   bit s set  <=>  slot s was written (successfully) and not discarded since
 * A slot whose bit is clear reads as zeros without I/O. The file is truncated to its header on
 * open and on close, so it only ever holds what this store wrote, and grows as slots are written.
 *
 * A temporary swap file (`directory` instead of `path`: the pager's default, in the OS temp
 * directory) is created under a fresh random name and unlinked right after it is opened; the
 * store keeps its descriptor. So it never outlives the process, however the process ends
 * (close, exit without close, kill -9): the kernel frees an unlinked file with its last
 * descriptor. A file the user named by `path` is the user's: it stays, cut back to its header.
 *
 * Paths the user passes fail as MF_BAD_PATH naming them (a missing directory, a directory where
 * the file should be, no permission: src/paths.ts); other I/O failures are STORE_FAILED.
 */
import { randomBytes } from 'node:crypto';
import { fstatSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { checkDirectory, filePathError } from '../paths.js';
import { nodeFileLayer, type FileLayer, type FileLayerHandle } from './file-layer.js';
import type { DirectReadSource, PageStore } from './page-store.js';
import { StoreGuard, checkStoreGeometry, storeFailed } from './store-guard.js';

export const SWAP_MAGIC = Buffer.from('MFSWAP\0\0', 'latin1');
export const SWAP_FORMAT_VERSION = 1;
const VERSION_OFFSET = 8;
const PAGE_SIZE_OFFSET = 12;
const CAPACITY_OFFSET = 16;
/** Header bytes that carry fields; the rest of the header page is zeros. */
export const SWAP_HEADER_FIELDS_BYTES = 24;

export interface FilePageStoreOptions {
  /** The swap file: created if missing, kept (cut back to its header) on close. */
  path?: string;
  /** Instead of path: a directory for a temporary swap file, unlinked as soon as it is open. */
  directory?: string;
  pageSize: number;
  capacity: number;
  /** The file system underneath (tests pass a double); default the real one. */
  layer?: FileLayer;
}

export class FilePageStore implements PageStore {
  readonly name: string;
  readonly path: string;
  /** True for a temporary swap file (already unlinked: nothing to leave behind). */
  readonly temporary: boolean;
  readonly pageSize: number;
  readonly capacity: number;
  private readonly handle: FileLayerHandle;
  private readonly guard: StoreGuard;
  private readonly written: Uint8Array;

  private constructor(
    options: FilePageStoreOptions,
    path: string,
    temporary: boolean,
    handle: FileLayerHandle,
  ) {
    this.path = path;
    this.temporary = temporary;
    this.name = storeName(path, temporary);
    this.pageSize = options.pageSize;
    this.capacity = options.capacity;
    this.handle = handle;
    this.guard = new StoreGuard(this.name, this.pageSize, this.capacity);
    // Shared, so the pager's main thread can read written slots itself (directSource): the bits
    // change with Atomics, and a bit is set only after the slot's write is in the file.
    this.written = new Uint8Array(new SharedArrayBuffer(Math.ceil(this.capacity / 8)));
  }

  /**
   * The file for direct reads by the pager's main thread (direct-read.ts). A temporary file is
   * unlinked, so it is named by this process's descriptor (/proc/self/fd/N, Linux); the reader
   * checks the file's identity after opening and falls back to this worker when it cannot.
   */
  directSource(): DirectReadSource | undefined {
    const fd = this.handle.fd;
    if (fd === undefined) return undefined;
    try {
      const { dev, ino } = fstatSync(fd);
      const path = this.temporary ? `/proc/self/fd/${fd}` : this.path;
      return { path, dev, ino, firstByte: this.pageSize, written: this.written.buffer as SharedArrayBuffer };
    } catch {
      return undefined;
    }
  }

  /** Opens (or creates) the swap file; see the overview for what is accepted. */
  static async open(options: FilePageStoreOptions): Promise<FilePageStore> {
    checkStoreGeometry(options.pageSize, options.capacity);
    const { pageSize, capacity, directory } = options;
    const temporary = directory !== undefined;
    if (temporary === (options.path !== undefined)) {
      throw invalidArgument(
        'a file page store takes either path (a swap file) or directory (for a temporary one)',
      );
    }
    const layer = options.layer ?? nodeFileLayer;
    let path: string;
    let handle: FileLayerHandle;
    if (temporary) {
      await checkDirectory(directory, 'swap directory', false).catch((error: unknown) => {
        // The pager's default names no directory the user typed: say where it came from.
        if (!(error instanceof MemfabricError)) throw error;
        throw new MemfabricError(
          error.code,
          `${error.message} (a pager given no store puts its swap file in the OS temp directory: ` +
            "set TMPDIR, or pass store { kind: 'file', directory } or { kind: 'file', path })",
          { cause: error.cause },
        );
      });
      path = join(directory, `memfabric-${process.pid}-${randomBytes(6).toString('hex')}.swap`);
      handle = await openTemporary(layer, path);
    } else {
      path = options.path!;
      handle = await openOrCreate(layer, path).catch((error: unknown) => {
        throw (
          filePathError(error, 'swap file', path) ??
          storeFailed(`file ${path}`, 'opening the swap file', error)
        );
      });
    }
    const name = storeName(path, temporary);
    try {
      const found = Buffer.alloc(SWAP_HEADER_FIELDS_BYTES);
      const length = temporary ? 0 : await readUpTo(handle, found, 0);
      if (length > 0) checkHeader(found.subarray(0, length), path, pageSize);
      const header = Buffer.alloc(pageSize);
      SWAP_MAGIC.copy(header, 0);
      header.writeUInt32LE(SWAP_FORMAT_VERSION, VERSION_OFFSET);
      header.writeUInt32LE(pageSize, PAGE_SIZE_OFFSET);
      header.writeBigUInt64LE(BigInt(capacity), CAPACITY_OFFSET);
      await writeFully(handle, header, 0);
      // Drop the pages of an earlier run: they are unreachable, take disk, and may be secrets.
      await handle.truncate(pageSize);
      await handle.datasync();
    } catch (error) {
      await handle.close().catch(() => undefined);
      if (error instanceof MemfabricError) throw error;
      throw storeFailed(name, 'preparing the swap file', error);
    }
    return new FilePageStore(options, path, temporary, handle);
  }

  async read(slot: number, dst: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, dst);
    try {
      if ((Atomics.load(this.written, slot >>> 3) & (1 << (slot & 7))) === 0) {
        dst.fill(0);
        return;
      }
      const position = (slot + 1) * this.pageSize;
      // A blocking pread when the layer has one: the store runs on the pager's own I/O thread,
      // whose caller is waiting for exactly this page, and a read from the page cache takes a
      // few microseconds where a round trip through libuv's thread pool takes tens.
      const length = this.handle.readSync
        ? readUpToSync(this.handle, dst, position)
        : await readUpTo(this.handle, dst, position);
      if (length < dst.length) {
        throw new Error(
          `the file ends at byte ${position + length}, inside the slot (short read past end of file; ` +
            'was the file truncated by something else?)',
        );
      }
    } catch (error) {
      throw storeFailed(this.name, 'read', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, src);
    const bit = 1 << (slot & 7);
    try {
      await writeFully(this.handle, src, (slot + 1) * this.pageSize);
      Atomics.or(this.written, slot >>> 3, bit);
    } catch (error) {
      // Part of the page may have reached the file: the slot's bytes are no longer any one
      // page, so it reads as empty rather than as a mixture.
      Atomics.and(this.written, slot >>> 3, ~bit);
      throw storeFailed(this.name, 'write', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async discard(slot: number): Promise<void> {
    this.guard.check(slot);
    // Node exposes no hole punching (fallocate PUNCH_HOLE), so the bytes stay in the file until
    // the slot is written again or the store closes and truncates the file; forgetting the slot
    // is all a discard can do, and it needs no I/O.
    Atomics.and(this.written, slot >>> 3, ~(1 << (slot & 7)));
  }

  async flush(): Promise<void> {
    this.guard.enterAll();
    try {
      await this.handle.datasync();
    } catch (error) {
      throw storeFailed(this.name, 'flush', error);
    } finally {
      this.guard.leave();
    }
  }

  close(): Promise<void> {
    return this.guard.close(async () => {
      try {
        // An unlinked file goes with its descriptor; a named one keeps only its header.
        if (!this.temporary) await this.handle.truncate(this.pageSize);
      } catch (error) {
        throw storeFailed(this.name, 'truncating the swap file on close', error);
      } finally {
        await this.handle.close();
      }
    });
  }
}

function storeName(path: string, temporary: boolean): string {
  return temporary ? `temporary file ${path}` : `file ${path}`;
}

/**
 * Creates a temporary swap file under a fresh name and unlinks it at once, keeping the handle
 * (see the overview): from here on no way the process ends can leave the file behind.
 */
async function openTemporary(layer: FileLayer, path: string): Promise<FileLayerHandle> {
  let handle: FileLayerHandle;
  try {
    handle = await layer.open(path, 'wx+');
  } catch (error) {
    throw (
      filePathError(error, 'temporary swap file', path) ??
      storeFailed(storeName(path, true), 'creating', error)
    );
  }
  try {
    await (layer.unlink ?? unlink)(path);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw storeFailed(storeName(path, true), 'unlinking the new file', error);
  }
  return handle;
}

async function openOrCreate(layer: FileLayer, path: string): Promise<FileLayerHandle> {
  // Open first and create only when missing ('wx+' never truncates a file that appeared in
  // between: it fails with EEXIST and the next round opens it), so an existing file is always
  // inspected before anything is written to it.
  for (let attempt = 0; ; attempt++) {
    try {
      return await layer.open(path, 'r+');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw error;
    }
    try {
      return await layer.open(path, 'wx+');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
  }
}

/** Throws CORRUPT_FILE unless `found` (the start of the file) is a version-1 header for pageSize. */
function checkHeader(found: Buffer, path: string, pageSize: number): void {
  const magicLength = Math.min(found.length, SWAP_MAGIC.length);
  if (!found.subarray(0, magicLength).equals(SWAP_MAGIC.subarray(0, magicLength))) {
    throw corrupt(
      `${path} exists and is not a memfabric swap file (it does not start with "MFSWAP"); ` +
        'it was left untouched: give the page store another path, or remove the file if it is not needed',
    );
  }
  if (found.length < SWAP_HEADER_FIELDS_BYTES) {
    throw corrupt(
      `${path} is a truncated memfabric swap file (${found.length} of ${SWAP_HEADER_FIELDS_BYTES} header ` +
        'bytes); it was left untouched: remove it (swap contents do not survive a restart) or use another path',
    );
  }
  const version = found.readUInt32LE(VERSION_OFFSET);
  if (version !== SWAP_FORMAT_VERSION) {
    throw corrupt(
      `${path} is a memfabric swap file of format version ${version}, and this memfabric writes version ` +
        `${SWAP_FORMAT_VERSION}; it was left untouched: remove it (swap contents do not survive a restart) ` +
        'or use another path',
    );
  }
  const filePageSize = found.readUInt32LE(PAGE_SIZE_OFFSET);
  if (filePageSize !== pageSize) {
    throw corrupt(
      `${path} is a memfabric swap file for ${filePageSize}-byte pages, not ${pageSize}; it was left ` +
        'untouched: remove it (swap contents do not survive a restart) or use another path',
    );
  }
}

function corrupt(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.CORRUPT_FILE, message);
}

/**
 * One round of a read loop: the new count of bytes done, or -1 at end of file. Shared by the
 * blocking and the async loop so both judge the file system's answer alike.
 */
function advanceRead(bytesRead: number, done: number, length: number): number {
  if (bytesRead === 0) return -1;
  if (!(bytesRead > 0 && bytesRead <= length - done)) {
    throw new Error(`the file system reported ${bytesRead} bytes read of ${length - done} asked`);
  }
  return done + bytesRead;
}

/** readUpTo with the layer's blocking read. */
function readUpToSync(handle: FileLayerHandle, buffer: Uint8Array, position: number): number {
  for (let done = 0; ;) {
    if (done === buffer.length) return done;
    const next = advanceRead(
      handle.readSync!(buffer, done, buffer.length - done, position + done),
      done,
      buffer.length,
    );
    if (next < 0) return done;
    done = next;
  }
}

/**
 * Reads into all of `buffer` from `position`, looping over short reads; returns the bytes read,
 * fewer than the buffer only at end of file.
 */
async function readUpTo(handle: FileLayerHandle, buffer: Uint8Array, position: number): Promise<number> {
  for (let done = 0; ;) {
    if (done === buffer.length) return done;
    const { bytesRead } = await handle.read(buffer, done, buffer.length - done, position + done);
    const next = advanceRead(bytesRead, done, buffer.length);
    if (next < 0) return done;
    done = next;
  }
}

/** Writes all of `buffer` at `position`, looping over short writes. */
async function writeFully(handle: FileLayerHandle, buffer: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesWritten } = await handle.write(buffer, done, buffer.length - done, position + done);
    // Every round makes progress or fails, so the loop ends within buffer.length rounds.
    if (!(bytesWritten > 0 && bytesWritten <= buffer.length - done)) {
      throw new Error(
        `short write: the file system took ${bytesWritten} of ${buffer.length - done} bytes at ` +
          `${position + done} and would take no more`,
      );
    }
    done += bytesWritten;
  }
}
