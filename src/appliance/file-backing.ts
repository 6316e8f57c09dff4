/**
 * File backing for a region: its contents live in `<dataDir>/<name>.img`, a raw sparse image
 * (so qemu-img, nbdkit's file plugin or dd can read it), and its settings in
 * `<dataDir>/<name>.region.json` (magic, version, size, page size, tenant, read-only).
 *
 * Loading reads the image and maps only its non-zero pages: zeros stay holes and cost nothing.
 * Saving writes the pages dirtied since the last save, found through the space's dirty epochs
 * (O(leaves + dirty pages)), then fdatasyncs. A save:
 *
 *   1. advances the space's epoch to E and lists the pages written at epochs >= saved;
 *   2. copies those pages out in runs of at most SAVE_CHUNK_BYTES and writes each run;
 *   3. fdatasyncs the image; then saved = E.
 *
 * A page written while a save is under way has epoch >= E, so the next save writes it again
 * even if this save already caught the new bytes. A failed save leaves `saved` where it was, so
 * the next one retries everything. Saves run one at a time; a flush that arrives while one runs
 * waits for the next, which covers every write completed before the flush.
 */
import { open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { AddressSpace } from '../memory/index.js';

export const REGION_FILE_MAGIC = 'memfabric-region';
export const REGION_FILE_VERSION = 1;
/** Bytes copied out and written per write call when saving (bounds the staging buffer). */
export const SAVE_CHUNK_BYTES = 1024 * 1024;
/** Bytes read per read call when loading. */
const LOAD_CHUNK_BYTES = 4 * 1024 * 1024;

export interface RegionFileMeta {
  magic: typeof REGION_FILE_MAGIC;
  version: typeof REGION_FILE_VERSION;
  name: string;
  size: number;
  pageSize: number;
  tenant: string;
  readOnly: boolean;
  createdAt: string;
}

export class FileBacking {
  readonly imagePath: string;
  readonly metaPath: string;
  private readonly handle: FileHandle;
  private readonly staging = Buffer.alloc(SAVE_CHUNK_BYTES);
  private savedEpoch = 0;
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private closed = false;

  private constructor(imagePath: string, metaPath: string, handle: FileHandle) {
    this.imagePath = imagePath;
    this.metaPath = metaPath;
    this.handle = handle;
  }

  static paths(dataDir: string, name: string): { image: string; meta: string } {
    return { image: join(dataDir, `${name}.img`), meta: join(dataDir, `${name}.region.json`) };
  }

  /** Creates the image (sparse, `size` bytes) and its metadata. Fails if either exists. */
  static async create(dataDir: string, meta: RegionFileMeta): Promise<FileBacking> {
    const paths = FileBacking.paths(dataDir, meta.name);
    let handle: FileHandle;
    try {
      handle = await open(paths.image, 'wx+');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new MemfabricError(
          ErrorCodes.ALREADY_EXISTS,
          `${paths.image} already exists; delete it or choose another region name`,
        );
      }
      throw error;
    }
    await handle.truncate(meta.size);
    await writeMetaAtomically(paths.meta, meta);
    return new FileBacking(paths.image, paths.meta, handle);
  }

  /** Reads and checks a region's metadata file. */
  static async readMeta(metaPath: string): Promise<RegionFileMeta> {
    let meta: Partial<RegionFileMeta>;
    try {
      meta = JSON.parse(await readFile(metaPath, 'utf8')) as Partial<RegionFileMeta>;
    } catch (error) {
      throw new MemfabricError(ErrorCodes.CORRUPT_FILE, `${metaPath} is not readable JSON region metadata`, {
        cause: error,
      });
    }
    if (meta.magic !== REGION_FILE_MAGIC || meta.version !== REGION_FILE_VERSION) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${metaPath} is not memfabric region metadata version ${REGION_FILE_VERSION} ` +
          `(magic ${String(meta.magic)}, version ${String(meta.version)})`,
      );
    }
    if (
      typeof meta.name !== 'string' ||
      !Number.isSafeInteger(meta.size) ||
      !Number.isSafeInteger(meta.pageSize) ||
      typeof meta.tenant !== 'string' ||
      typeof meta.readOnly !== 'boolean'
    ) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${metaPath} lacks name, size, pageSize, tenant or readOnly`,
      );
    }
    return meta as RegionFileMeta;
  }

  /** Opens an existing image and loads its non-zero pages into `space` (sized from the metadata). */
  static async openAndLoad(dataDir: string, meta: RegionFileMeta, space: AddressSpace): Promise<FileBacking> {
    const paths = FileBacking.paths(dataDir, meta.name);
    const info = await stat(paths.image).catch((error: unknown) => {
      throw new MemfabricError(ErrorCodes.CORRUPT_FILE, `${paths.image} is missing for region ${meta.name}`, {
        cause: error,
      });
    });
    if (info.size < meta.size) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${paths.image} is truncated: ${info.size} bytes, region ${meta.name} needs ${meta.size}`,
      );
    }
    const handle = await open(paths.image, 'r+');
    const backing = new FileBacking(paths.image, paths.meta, handle);
    try {
      await backing.load(space, meta.size);
    } catch (error) {
      await handle.close();
      throw error;
    }
    return backing;
  }

  /** Writes every page dirtied since the last save, then syncs. See the overview above. */
  save(space: AddressSpace): Promise<void> {
    if (this.queued) return this.queued;
    const after = this.running ?? Promise.resolve();
    const next = after
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        this.running = next;
        return this.saveNow(space);
      })
      .finally(() => {
        if (this.running === next) this.running = undefined;
      });
    this.queued = next;
    return next;
  }

  /** Saves, then closes the image. */
  async close(space: AddressSpace | undefined): Promise<void> {
    if (this.closed) return;
    if (space && !space.isDestroyed) await this.save(space);
    this.closed = true;
    await this.handle.close();
  }

  /** Closes the image and deletes both files. */
  async remove(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.running?.catch(() => undefined);
      await this.handle.close();
    }
    await rm(this.imagePath, { force: true });
    await rm(this.metaPath, { force: true });
  }

  private async load(space: AddressSpace, size: number): Promise<void> {
    const pageSize = space.pageSize;
    const chunk = Buffer.alloc(LOAD_CHUNK_BYTES);
    const zeros = Buffer.alloc(pageSize);
    for (let offset = 0; offset < size; offset += LOAD_CHUNK_BYTES) {
      const length = Math.min(LOAD_CHUNK_BYTES, size - offset);
      const { bytesRead } = await this.handle.read(chunk, 0, length, offset);
      if (bytesRead !== length) {
        throw new MemfabricError(ErrorCodes.CORRUPT_FILE, `${this.imagePath}: short read at ${offset}`);
      }
      for (let at = 0; at < length; at += pageSize) {
        const end = Math.min(at + pageSize, length);
        if (zeros.compare(chunk, at, end, 0, end - at) !== 0)
          space.write(offset + at, chunk.subarray(at, end));
      }
    }
    // Loaded contents are what the file already holds: nothing is dirty relative to it.
    this.savedEpoch = space.advanceEpoch();
  }

  private async saveNow(space: AddressSpace): Promise<void> {
    if (this.closed || space.isDestroyed) return;
    const since = this.savedEpoch;
    const upTo = space.advanceEpoch();
    const pages: number[] = [];
    space.forEachDirtyPage(since, (page) => pages.push(page));
    const pageSize = space.pageSize;
    const pagesPerChunk = SAVE_CHUNK_BYTES / pageSize;
    let i = 0;
    while (i < pages.length) {
      // A run of consecutive pages, at most one staging buffer long.
      const first = pages[i]!;
      let count = 1;
      while (i + count < pages.length && count < pagesPerChunk && pages[i + count] === first + count) count++;
      const offset = first * pageSize;
      const length = Math.min(count * pageSize, space.size - offset);
      const run = this.staging.subarray(0, length);
      space.read(offset, run);
      await this.handle.write(run, 0, length, offset);
      i += count;
      if (space.isDestroyed) return;
    }
    await this.handle.datasync();
    this.savedEpoch = upTo;
  }
}

async function writeMetaAtomically(path: string, meta: RegionFileMeta): Promise<void> {
  const temporary = `${path}.tmp`;
  await writeFile(temporary, `${JSON.stringify(meta, null, 2)}\n`);
  await rename(temporary, path);
}
