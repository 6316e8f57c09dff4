/**
 * File backing for a region. Three files in the data directory:
 *
 *   NAME.img          the contents: a raw sparse image (qemu-img, nbdkit's file plugin or dd
 *                     read it), `size` bytes;
 *   NAME.extents      the extent map (extent-map.ts): the page runs that may hold data;
 *   NAME.region.json  the settings (magic, version, size, page size, tenant, read-only) and the
 *                     fabric region descriptor the region carries, if any (replaced atomically
 *                     by setDescriptor, one write at a time).
 *
 * Loading reads only the runs of the extent map and maps only their non-zero pages (zeros
 * stay holes), so a sparse 1 PiB region holding 4 KiB reads 4 KiB. Identical pages share one
 * frame as they are loaded (load-dedup.ts). Without a usable map (version 1 metadata, or the
 * map is missing or damaged) the whole image is read, and the map is then written (and
 * version 1 metadata rewritten as version 2): that is the migration path.
 *
 * Saving writes the pages dirtied since the last save, found through the space's dirty epochs
 * (O(leaves + dirty pages)). A save:
 *
 *   1. advances the space's epoch to E and lists the pages written at epochs >= saved;
 *   2. if the map lacks some of them, replaces the map by map ∪ dirty (durably) first, so the
 *      map never misses a page that holds data, whatever reaches the disk before a crash;
 *   3. copies the dirty pages out in runs of at most SAVE_CHUNK_BYTES and writes each run,
 *      noting the pages that were holes or zero pages at the moment they were copied;
 *   4. fdatasyncs the image; then, if those zero pages were in the map, replaces the map by
 *      map − zero pages (their zeros are durable now); then saved = E.
 *
 * The map is replaced atomically (writeFileAtomically: temp file, fsync, rename, fsync dir),
 * as is the metadata. A page written while a save is under way has epoch >= E, so the next
 * save writes it again even if this one already caught the new bytes. A failed save leaves
 * `saved` where it was, so the next one retries everything. Saves run one at a time; a flush
 * that arrives while one runs waits for the next, which covers every write completed before
 * the flush.
 */
import { join } from 'node:path';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { AddressSpace } from '../memory/index.js';
import { FIRST_FRAME } from '../memory/frame-pool.js';
import { formatSize } from '../size.js';
import { PageRuns } from './extent-map.js';
import { nodeFileLayer, writeFileAtomically, type FileLayer, type LayerFile } from './file-layer.js';
import type { LoadDeduper } from './load-dedup.js';
import { readStoredDescriptor, type StoredDescriptor } from './region-descriptor.js';

export const REGION_FILE_MAGIC = 'memfabric-region';
/** Version 2: an extent map (NAME.extents) accompanies the image. Version 1 is still read. */
export const REGION_FILE_VERSION = 2;
/** Bytes copied out and written per write call when saving (bounds the staging buffer). */
export const SAVE_CHUNK_BYTES = 1024 * 1024;
/** Bytes read per read call when loading. */
export const LOAD_CHUNK_BYTES = 4 * 1024 * 1024;

export interface RegionFileMeta {
  magic: typeof REGION_FILE_MAGIC;
  version: number;
  name: string;
  size: number;
  pageSize: number;
  tenant: string;
  readOnly: boolean;
  createdAt: string;
  /** The fabric region descriptor (optional; an unusable one is dropped when read). */
  descriptor?: StoredDescriptor;
}

export interface RegionFilePaths {
  image: string;
  meta: string;
  extents: string;
}

/** What loading a region cost (shown in the region's `load` field). */
export interface LoadReport {
  /** Bytes read from the image. */
  bytesRead: number;
  /** Non-zero pages found. */
  dataPages: number;
  /** Of those, pages that share a frame with an identical page loaded before. */
  sharedPages: number;
  /** False when the whole image was read (no usable extent map). */
  extentMap: boolean;
  /** Why the extent map was not used, if it was not. */
  extentMapProblem: string | null;
  durationMs: number;
}

export interface LoadOptions {
  layer?: FileLayer;
  /** The extent map as readExtentMap found it (else it is read again). */
  map?: PageRuns | string;
  /** Shares identical pages across the regions being loaded (one per load pass). */
  dedup?: LoadDeduper;
  /** Checked between chunks: true stops the load (it throws). */
  cancelled?: () => boolean;
  /** Told the bytes of each chunk read (for a progress report). */
  read?: (bytes: number) => void;
}

export class FileBacking {
  readonly imagePath: string;
  readonly metaPath: string;
  readonly extentsPath: string;
  /** Set when the region was loaded from its files (not when created). */
  loadReport: LoadReport | null = null;
  /** When the last save completed (ms since the epoch), and why the last save failed (null: it did not). For the dashboard. */
  lastSavedAt: number | null = null;
  lastSaveError: string | null = null;
  private readonly file: LayerFile;
  private readonly layer: FileLayer;
  private readonly pageSize: number;
  /**
   * The extent map, never more than any map that may be on disk: `saveNow` trusts it to decide
   * whether the map on disk must grow before data lands outside it. So it grows only after a
   * grown map is durable, and shrinks before a smaller map is written (a write that fails after
   * its rename, at the directory fsync, must not leave memory covering more than the disk).
   */
  private map: PageRuns;
  private readonly staging = Buffer.alloc(SAVE_CHUNK_BYTES);
  private savedEpoch = 0;
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private closed = false;
  /** The metadata as last written (setDescriptor rewrites it with a new descriptor). */
  private meta: RegionFileMeta;
  /** The metadata write under way (descriptor changes are written one at a time, in order). */
  private metaWrite: Promise<void> = Promise.resolve();

  private constructor(
    paths: RegionFilePaths,
    file: LayerFile,
    layer: FileLayer,
    meta: RegionFileMeta,
    map: PageRuns,
  ) {
    this.meta = meta;
    this.imagePath = paths.image;
    this.metaPath = paths.meta;
    this.extentsPath = paths.extents;
    this.file = file;
    this.layer = layer;
    this.pageSize = meta.pageSize;
    this.map = map;
  }

  static paths(dataDir: string, name: string): RegionFilePaths {
    return {
      image: join(dataDir, `${name}.img`),
      meta: join(dataDir, `${name}.region.json`),
      extents: join(dataDir, `${name}.extents`),
    };
  }

  /**
   * Creates the image (sparse, `size` bytes), an empty extent map and the metadata (last: its
   * presence makes the region exist). Fails if the image exists. On any failure every file it
   * made is removed and the handle closed; file-system refusals (too large, full, no
   * permission) throw MF_FILE_REFUSED saying what the file system allows.
   */
  static async create(
    dataDir: string,
    meta: RegionFileMeta,
    layer: FileLayer = nodeFileLayer,
  ): Promise<FileBacking> {
    const paths = FileBacking.paths(dataDir, meta.name);
    let file: LayerFile;
    try {
      file = await layer.open(paths.image, 'wx+');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new MemfabricError(
          ErrorCodes.ALREADY_EXISTS,
          `${paths.image} already exists; delete it or choose another region name`,
        );
      }
      throw refusal(error, dataDir, meta.size);
    }
    try {
      try {
        await file.truncate(meta.size);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EFBIG') {
          throw tooLarge(error, dataDir, meta.size, await largestSize(file, meta.size, meta.pageSize));
        }
        throw error;
      }
      // The size must be durable before the metadata that promises it.
      await file.sync();
      const map = PageRuns.empty();
      await writeFileAtomically(layer, paths.extents, map.encode(meta.pageSize));
      await writeFileAtomically(layer, paths.meta, encodeMeta(meta));
      return new FileBacking(paths, file, layer, meta, map);
    } catch (error) {
      await file.close().catch(() => undefined);
      for (const path of [paths.image, paths.extents, paths.meta]) {
        await layer.remove(path).catch(() => undefined);
      }
      throw refusal(error, dataDir, meta.size);
    }
  }

  /** Reads and checks a region's metadata file (version 1 or 2). */
  static async readMeta(metaPath: string, layer: FileLayer = nodeFileLayer): Promise<RegionFileMeta> {
    let meta: Partial<RegionFileMeta>;
    try {
      meta = JSON.parse((await layer.readFile(metaPath)).toString('utf8')) as Partial<RegionFileMeta>;
    } catch (error) {
      throw new MemfabricError(ErrorCodes.CORRUPT_FILE, `${metaPath} is not readable JSON region metadata`, {
        cause: error,
      });
    }
    if (
      typeof meta !== 'object' ||
      meta === null ||
      meta.magic !== REGION_FILE_MAGIC ||
      (meta.version !== 1 && meta.version !== REGION_FILE_VERSION)
    ) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${metaPath} is not memfabric region metadata version 1 or ${REGION_FILE_VERSION} ` +
          `(magic ${String(meta?.magic)}, version ${String(meta?.version)})`,
      );
    }
    if (
      typeof meta.name !== 'string' ||
      !Number.isSafeInteger(meta.size) ||
      meta.size! < 1 ||
      !Number.isSafeInteger(meta.pageSize) ||
      typeof meta.tenant !== 'string' ||
      typeof meta.readOnly !== 'boolean'
    ) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${metaPath} lacks name, size, pageSize, tenant or readOnly`,
      );
    }
    const checked = meta as RegionFileMeta;
    // A damaged descriptor costs the region only its descriptor (the fabric then finds the
    // region's descriptor on its other shards), never its data.
    const descriptor = readStoredDescriptor(checked.descriptor);
    if (descriptor === undefined) delete checked.descriptor;
    else checked.descriptor = descriptor;
    return checked;
  }

  /** The region's extent map, or why there is none to use (then loading reads everything). */
  static readExtentMap(
    dataDir: string,
    meta: RegionFileMeta,
    layer: FileLayer = nodeFileLayer,
  ): Promise<PageRuns | string> {
    return readExtentMap(FileBacking.paths(dataDir, meta.name), meta, layer);
  }

  /** Bytes a load will read with `map` (from readExtentMap): used to load small regions first. */
  static loadCost(meta: RegionFileMeta, map: PageRuns | string): number {
    return typeof map === 'string' ? meta.size : map.pageCount * meta.pageSize;
  }

  /**
   * Opens an existing image and loads its non-zero pages into `space` (sized from the
   * metadata). Throws MF_CORRUPT_FILE for a missing or truncated image, MF_POOL_EXHAUSTED when
   * the pages do not fit; the caller destroys the space then.
   */
  static async openAndLoad(
    dataDir: string,
    meta: RegionFileMeta,
    space: AddressSpace,
    options: LoadOptions = {},
  ): Promise<FileBacking> {
    const layer = options.layer ?? nodeFileLayer;
    const paths = FileBacking.paths(dataDir, meta.name);
    const imageSize = await layer.size(paths.image).catch((error: unknown) => {
      throw unusableImage(error, paths.image, meta.name);
    });
    if (imageSize === undefined) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${paths.image} is missing for region ${meta.name}; restore it, or delete the region`,
      );
    }
    if (imageSize < meta.size) {
      throw new MemfabricError(
        ErrorCodes.CORRUPT_FILE,
        `${paths.image} is truncated: ${imageSize} bytes, region ${meta.name} needs ${meta.size}`,
      );
    }
    const map = options.map ?? (await readExtentMap(paths, meta, layer));
    const file = await layer.open(paths.image, 'r+').catch((error: unknown) => {
      throw unusableImage(error, paths.image, meta.name);
    });
    const pages = Math.ceil(meta.size / meta.pageSize);
    // Without a map, what is on disk is "any page may hold data".
    const backing = new FileBacking(
      paths,
      file,
      layer,
      meta,
      typeof map === 'string' ? PageRuns.range(0, pages) : map,
    );
    try {
      await backing.load(space, meta, map, options);
    } catch (error) {
      await file.close().catch(() => undefined);
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
        return this.saveNow(space).then(
          () => {
            this.lastSavedAt = Date.now();
            this.lastSaveError = null;
          },
          (error: unknown) => {
            this.lastSaveError = (error as Error)?.message ?? String(error);
            throw error;
          },
        );
      })
      .finally(() => {
        if (this.running === next) this.running = undefined;
      });
    this.queued = next;
    return next;
  }

  /** A save is under way or queued. */
  get saving(): boolean {
    return this.running !== undefined || this.queued !== undefined;
  }

  /** Saves, then closes the image (always, even when the save fails: the failure is thrown). */
  async close(space: AddressSpace | undefined): Promise<void> {
    if (this.closed) return;
    try {
      if (space && !space.isDestroyed) await this.save(space);
    } finally {
      this.closed = true;
      await this.running?.catch(() => undefined);
      await this.metaWrite.catch(() => undefined);
      await this.file.close();
    }
  }

  /**
   * Makes `descriptor` the one the metadata file holds (durably: temporary file, fsync,
   * rename, fsync of the directory). Writes run one at a time in call order, so the file ends
   * with the last descriptor given. Throws MF_NOT_FOUND once the region is being removed (a
   * write then would bring its metadata back).
   */
  setDescriptor(descriptor: StoredDescriptor): Promise<void> {
    const write = this.metaWrite
      .catch(() => undefined)
      .then(async () => {
        if (this.closed) {
          throw new MemfabricError(
            ErrorCodes.NOT_FOUND,
            `region ${this.meta.name} was deleted or closed; its descriptor was not written`,
          );
        }
        const meta: RegionFileMeta = { ...this.meta, version: REGION_FILE_VERSION, descriptor };
        await writeFileAtomically(this.layer, this.metaPath, encodeMeta(meta));
        this.meta = meta;
      });
    this.metaWrite = write;
    return write;
  }

  /** Closes the image and deletes the region's files. */
  async remove(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.running?.catch(() => undefined);
      await this.file.close().catch(() => undefined);
    }
    // A descriptor write under way would otherwise land after the files are gone.
    await this.metaWrite.catch(() => undefined);
    await removeRegionFiles(this.layer, {
      image: this.imagePath,
      meta: this.metaPath,
      extents: this.extentsPath,
    });
  }

  private async load(
    space: AddressSpace,
    meta: RegionFileMeta,
    map: PageRuns | string,
    options: LoadOptions,
  ): Promise<void> {
    const started = performance.now();
    const pageSize = space.pageSize;
    const size = meta.size;
    const pages = Math.ceil(size / pageSize);
    const runs = typeof map === 'string' ? PageRuns.range(0, pages) : map;
    const found = PageRuns.builder();
    const chunk = Buffer.alloc(Math.min(LOAD_CHUNK_BYTES, pages * pageSize));
    const chunkPages = chunk.length / pageSize;
    const zeros = Buffer.alloc(pageSize);
    // Whole pages are copied here (a 4 KiB copy), not viewed: no object per page.
    const pageBytes = Buffer.alloc(pageSize);
    const dedup = options.dedup;
    let bytesRead = 0;
    let dataPages = 0;
    let sharedPages = 0;
    const runList: Array<[number, number]> = [];
    runs.forEach((first, count) => runList.push([first, count]));
    for (const [first, count] of runList) {
      for (let page = first; page < first + count; page += chunkPages) {
        if (options.cancelled?.()) {
          throw new MemfabricError(
            ErrorCodes.DESTROYED,
            `loading ${meta.name} stopped: the appliance is stopping`,
          );
        }
        const n = Math.min(chunkPages, first + count - page);
        const offset = page * pageSize;
        const length = Math.min(n * pageSize, size - offset);
        const got = await this.file.read(chunk, 0, length, offset);
        bytesRead += got;
        options.read?.(got);
        if (got !== length) {
          throw new MemfabricError(ErrorCodes.CORRUPT_FILE, `${this.imagePath}: short read at ${offset}`);
        }
        for (let at = 0; at < length; at += pageSize) {
          const end = Math.min(at + pageSize, length);
          if (zeros.compare(chunk, at, end, 0, end - at) === 0) continue;
          const p = page + at / pageSize;
          if (end - at < pageSize) {
            space.write(p * pageSize, chunk.subarray(at, end)); // the partial last page
          } else {
            chunk.copy(pageBytes, 0, at, end);
            if (dedup) {
              if (dedup.load(space, p, pageBytes)) sharedPages++;
            } else {
              space.write(p * pageSize, pageBytes);
            }
          }
          dataPages++;
          found.add(p);
        }
      }
    }
    // Loaded contents are what the file already holds: nothing is dirty relative to it.
    this.savedEpoch = space.advanceEpoch();
    let problem = typeof map === 'string' ? map : null;
    if (typeof map === 'string') {
      // Migration: write the map this load found, then (version 1) the metadata as version 2.
      try {
        const exact = found.build();
        this.map = exact; // before the write: see `map`
        await writeFileAtomically(this.layer, this.extentsPath, exact.encode(pageSize));
        if (meta.version !== REGION_FILE_VERSION) {
          const upgraded = { ...meta, version: REGION_FILE_VERSION };
          await writeFileAtomically(this.layer, this.metaPath, encodeMeta(upgraded));
          this.meta = upgraded;
        }
      } catch (error) {
        problem = `${map}; writing a new map failed: ${(error as Error).message}`;
      }
    }
    this.loadReport = {
      bytesRead,
      dataPages,
      sharedPages,
      extentMap: typeof map !== 'string',
      extentMapProblem: problem,
      durationMs: Math.round((performance.now() - started) * 1000) / 1000,
    };
  }

  private async saveNow(space: AddressSpace): Promise<void> {
    if (this.closed || space.isDestroyed) return;
    const since = this.savedEpoch;
    const upTo = space.advanceEpoch();
    const pages: number[] = [];
    space.forEachDirtyPage(since, (page) => pages.push(page));
    if (pages.length > 0 && !this.map.covers(pages)) {
      const grown = this.map.withPages(pages);
      await writeFileAtomically(this.layer, this.extentsPath, grown.encode(this.pageSize));
      this.map = grown;
    }
    const pageSize = space.pageSize;
    const pagesPerChunk = SAVE_CHUNK_BYTES / pageSize;
    const zeroPages: number[] = [];
    let i = 0;
    while (i < pages.length) {
      // A run of consecutive pages, at most one staging buffer long.
      const first = pages[i]!;
      let count = 1;
      while (i + count < pages.length && count < pagesPerChunk && pages[i + count] === first + count) count++;
      const offset = first * pageSize;
      const length = Math.min(count * pageSize, space.size - offset);
      const run = this.staging.subarray(0, length);
      // Copy and classify together (no await between): a page that is a hole or a zero page
      // now is written as zeros by this run.
      space.read(offset, run);
      for (let page = first; page < first + count; page++) {
        const frame = space.frameAt(page);
        if (frame >= 0 && frame < FIRST_FRAME) zeroPages.push(page);
      }
      await this.file.write(run, 0, length, offset);
      i += count;
      if (space.isDestroyed) return;
    }
    await this.file.datasync();
    if (zeroPages.length > 0) {
      const shrunk = this.map.withoutPages(zeroPages);
      if (!shrunk.equals(this.map)) {
        this.map = shrunk; // before the write: see `map`
        await writeFileAtomically(this.layer, this.extentsPath, shrunk.encode(this.pageSize));
      }
    }
    this.savedEpoch = upTo;
  }
}

/** Deletes a region's files (any that exist), including leftover temporary files. */
export async function removeRegionFiles(layer: FileLayer, paths: RegionFilePaths): Promise<void> {
  for (const path of [paths.meta, paths.extents, paths.image, `${paths.meta}.tmp`, `${paths.extents}.tmp`]) {
    await layer.remove(path);
  }
}

/** The extent map of a region, or why there is none to use. */
async function readExtentMap(
  paths: RegionFilePaths,
  meta: RegionFileMeta,
  layer: FileLayer,
): Promise<PageRuns | string> {
  if (meta.version < 2) return 'version 1 metadata has no extent map';
  let bytes: Buffer;
  try {
    bytes = await layer.readFile(paths.extents);
  } catch (error) {
    return `${paths.extents} is unreadable (${(error as NodeJS.ErrnoException).code ?? String(error)})`;
  }
  const map = PageRuns.decode(bytes, meta.pageSize, Math.ceil(meta.size / meta.pageSize));
  return typeof map === 'string' ? `${paths.extents}: ${map}` : map;
}

function encodeMeta(meta: RegionFileMeta): Buffer {
  return Buffer.from(`${JSON.stringify(meta, null, 2)}\n`);
}

/** The largest size (a whole number of pages) the file system lets `file` have, by bisection. */
async function largestSize(file: LayerFile, refused: number, pageSize: number): Promise<number> {
  let low = 0;
  let high = refused;
  while (high - low > pageSize) {
    const middle = Math.floor((low + high) / 2 / pageSize) * pageSize;
    if (middle <= low) break;
    try {
      await file.truncate(middle);
      low = middle;
    } catch {
      high = middle;
    }
  }
  return low;
}

function tooLarge(cause: unknown, dataDir: string, size: number, largest: number): MemfabricError {
  return new MemfabricError(
    ErrorCodes.FILE_REFUSED,
    `the file system under ${dataDir} refuses a ${formatSize(size)} (${size}-byte) image (EFBIG): it allows ` +
      `files of at most ${formatSize(largest)} (${largest} bytes); choose a smaller size, or a --data-dir ` +
      'on a file system that allows larger files; nothing was created',
    { cause },
  );
}

/** File-system refusals a user can act on become MF_FILE_REFUSED; anything else is passed on. */
/** A region's image that exists but cannot be examined or opened at load (EACCES, EIO, …). */
function unusableImage(error: unknown, image: string, region: string): unknown {
  if (error instanceof MemfabricError) return error;
  const code = (error as NodeJS.ErrnoException).code ?? 'error';
  return new MemfabricError(
    ErrorCodes.FILE_REFUSED,
    `${image} of region ${region} cannot be opened (${code}); give the appliance's user read and ` +
      'write access to it and restart, or delete the region',
    { cause: error },
  );
}

function refusal(error: unknown, dataDir: string, size: number): unknown {
  if (error instanceof MemfabricError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new MemfabricError(
        ErrorCodes.FILE_REFUSED,
        `the file system under ${dataDir} is full (${code}) and cannot hold the region's files ` +
          `(${formatSize(size)} virtual, sparse); free space there or use another --data-dir; nothing was created`,
        { cause: error },
      );
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new MemfabricError(
        ErrorCodes.FILE_REFUSED,
        `the appliance may not create files in ${dataDir} (${code}); make it writable for the appliance's ` +
          'user or use another --data-dir; nothing was created',
        { cause: error },
      );
    case 'EFBIG':
      return new MemfabricError(
        ErrorCodes.FILE_REFUSED,
        `the file system under ${dataDir} refuses a ${formatSize(size)} image (EFBIG); choose a smaller size; ` +
          'nothing was created',
        { cause: error },
      );
    default:
      return error;
  }
}
