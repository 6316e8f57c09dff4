/**
 * The heap's image as a page store: slot s is bytes [s·pageSize, (s+1)·pageSize) of one file,
 * with no header of its own (the heap keeps its superblocks in slots 0 and 1). Unlike the swap
 * file, the image outlives the process: opening never creates, wipes or truncates it, and a
 * slot past the end of the file reads as zeros (the file grows as slots are written).
 *
 * A fork's image reads its base: slots [2, baseSlots) were written by the parent before the
 * fork and are read from the parent's image, which the parent never rewrites (it pins them).
 * Every other slot, the fork's superblocks included, lives in the fork's own file.
 *
 * Discard is free: Node has no hole punching, and the heap never reads a slot it freed, so the
 * bytes simply wait to be overwritten (`memfabric heap compact` gives the space back).
 */
import { openSync, closeSync, readSync } from 'node:fs';
import { invalidArgument } from '../errors.js';
import { filePathError } from '../paths.js';
import { nodeFileLayer, type FileLayer, type FileLayerHandle } from './file-layer.js';
import type { PageStore } from './page-store.js';
import { StoreGuard, storeFailed } from './store-guard.js';
import { powerLossLayer, type PowerLossOptions } from './power-loss-layer.js';

export interface ImagePageStoreOptions {
  path: string;
  pageSize: number;
  capacity: number;
  /** A fork's base image and the slots read from it. */
  base?: { path: string; slots: number };
  readOnly?: boolean;
  /** Test double: simulate a power loss at a chosen flush (see power-loss-layer.ts). */
  powerLoss?: PowerLossOptions;
  /** Test double: every write after the first `failWritesAfter` fails with EIO (a dying disk). */
  failWritesAfter?: number;
  layer?: FileLayer;
}

export class ImagePageStore implements PageStore {
  readonly name: string;
  readonly pageSize: number;
  readonly capacity: number;
  private readonly guard: StoreGuard;
  private writes = 0;

  private constructor(
    private readonly options: ImagePageStoreOptions,
    private readonly handle: FileLayerHandle,
    private readonly baseFd: number | undefined,
  ) {
    this.pageSize = options.pageSize;
    this.capacity = options.capacity;
    this.name = `heap image ${options.path}`;
    this.guard = new StoreGuard(this.name, this.pageSize, this.capacity);
  }

  static async open(options: ImagePageStoreOptions): Promise<ImagePageStore> {
    if (typeof options.path !== 'string' || options.path === '') {
      throw invalidArgument("an 'image' page store needs path (an existing heap image)");
    }
    let layer = options.layer ?? nodeFileLayer;
    if (options.powerLoss) layer = powerLossLayer(layer, options.powerLoss);
    let handle: FileLayerHandle;
    try {
      handle = await layer.open(options.path, options.readOnly ? 'r' : 'r+');
    } catch (error) {
      throw (
        filePathError(error, 'heap image', options.path) ??
        storeFailed(`heap image ${options.path}`, 'opening', error)
      );
    }
    let baseFd: number | undefined;
    if (options.base) {
      try {
        baseFd = openSync(options.base.path, 'r');
      } catch (error) {
        await handle.close();
        throw (
          filePathError(error, "fork's base image", options.base.path) ??
          storeFailed(`heap image ${options.path}`, `opening its base ${options.base.path}`, error)
        );
      }
    }
    return new ImagePageStore(options, handle, baseFd);
  }

  async read(slot: number, dst: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, dst);
    try {
      const position = slot * this.pageSize;
      let length: number;
      if (this.baseFd !== undefined && slot >= 2 && slot < this.options.base!.slots) {
        length = readFullySync((at, n, pos) => readSync(this.baseFd!, dst, at, n, pos), dst.length, position);
      } else if (this.handle.readSync) {
        length = readFullySync((at, n, pos) => this.handle.readSync!(dst, at, n, pos), dst.length, position);
      } else {
        length = 0;
        while (length < dst.length) {
          const { bytesRead } = await this.handle.read(dst, length, dst.length - length, position + length);
          if (bytesRead === 0) break;
          length += bytesRead;
        }
      }
      // Past the end of the file: never written, so zeros.
      if (length < dst.length) dst.fill(0, length);
    } catch (error) {
      throw storeFailed(this.name, 'read', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, src);
    try {
      if (this.options.readOnly) throw new Error('the image was opened read-only');
      if (this.options.failWritesAfter !== undefined && ++this.writes > this.options.failWritesAfter) {
        throw Object.assign(new Error('EIO: i/o error, write (injected by failWritesAfter)'), {
          code: 'EIO',
        });
      }
      if (this.baseFd !== undefined && slot >= 2 && slot < this.options.base!.slots) {
        throw new Error(`slot ${slot} belongs to the base image, which a fork never writes`);
      }
      let done = 0;
      const position = slot * this.pageSize;
      while (done < src.length) {
        const { bytesWritten } = await this.handle.write(src, done, src.length - done, position + done);
        if (!(bytesWritten > 0)) throw new Error(`short write: ${done} of ${src.length} bytes`);
        done += bytesWritten;
      }
    } catch (error) {
      throw storeFailed(this.name, 'write', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async discard(slot: number): Promise<void> {
    this.guard.check(slot);
  }

  async flush(): Promise<void> {
    this.guard.enterAll();
    try {
      if (!this.options.readOnly) await this.handle.datasync();
    } catch (error) {
      throw storeFailed(this.name, 'flush', error);
    } finally {
      this.guard.leave();
    }
  }

  close(): Promise<void> {
    return this.guard.close(async () => {
      if (this.baseFd !== undefined) closeSync(this.baseFd);
      await this.handle.close();
    });
  }
}

function readFullySync(
  read: (at: number, length: number, position: number) => number,
  length: number,
  position: number,
): number {
  let done = 0;
  while (done < length) {
    const n = read(done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}
