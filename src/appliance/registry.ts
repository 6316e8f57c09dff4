/**
 * The appliance's regions by name, over one frame pool (the memory budget) and one same-page
 * merger (which shares pages only between regions of one tenant). It is also the NBD
 * server's export directory: the export name is the region name, and the empty name is the
 * default region.
 *
 * File-backed regions found in the data directory at start are first *pending*: `scanDataDir`
 * lists them (state `loading`, or `corrupt` when their metadata cannot be used) so their names
 * are taken at once, and `loadPending` loads them one at a time, the cheapest first (bytes to
 * read, from the extent map), while the appliance already serves. A region that cannot be
 * loaded becomes `corrupt` (its files) or `failed` (e.g. too little memory) with the error
 * kept; it serves nothing, its name stays taken, and deleting it removes its files. Nothing a
 * single region's files hold can stop the others from loading.
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { AddressSpace, type FramePool, type SamePageMerger } from '../memory/index.js';
import type { NbdExport, NbdExportDirectory } from '../nbd/index.js';
import { parseSize } from '../size.js';
import { FileBacking, removeRegionFiles, type RegionFileMeta, REGION_FILE_VERSION } from './file-backing.js';
import type { PageRuns } from './extent-map.js';
import { nodeFileLayer, type FileLayer } from './file-layer.js';
import { LoadDeduper } from './load-dedup.js';
import { GATE_OPEN, Region, type MovedTo } from './region.js';
import { checkDescriptor, staleGeneration, type StoredDescriptor } from './region-descriptor.js';

/** Region names: used in NBD URIs and file names, so a safe, bounded alphabet. */
export const REGION_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
export const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const DEFAULT_TENANT = 'default';
/** Regions may be this large at most (the address space limit is far higher). */
export const REGION_BYTES_MAX = 2 ** 50;
/** At most this many regions per appliance. */
export const REGIONS_MAX = 4096;
/** Forwarding records of regions that migrated away; beyond this the oldest is forgotten. */
export const MOVED_RECORDS_MAX = 4096;

/** What GET /v1/regions/:name answers for a region that migrated to another appliance. */
export interface MovedRegion {
  name: string;
  size: number;
  tenant: string;
  movedTo: MovedTo;
  movedAt: string;
}

/** A region's state as the admin API shows it. */
export type RegionState = 'loading' | 'ready' | 'failed' | 'corrupt';

/** A file-backed region found at start that does not serve (yet): loading, or failed to load. */
export interface PendingRegion {
  name: string;
  state: 'loading' | 'failed' | 'corrupt';
  /** From the metadata, when it could be read. */
  size: number | null;
  tenant: string | null;
  readOnly: boolean | null;
  /** The image file's path. */
  file: string;
  /** Why it failed (null while loading). */
  error: { code: string; message: string } | null;
  /** The descriptor its metadata holds, if any (so the region can be found while it loads). */
  descriptor?: StoredDescriptor;
}

/** A file-backed region whose final save failed when the registry closed. */
export interface UnsavedRegion {
  name: string;
  error: unknown;
}

interface PendingEntry extends PendingRegion {
  meta: RegionFileMeta | undefined;
  /** Bytes loading it will read (to load the cheapest first). */
  cost: number;
  /** Its extent map as the scan read it, or why there is none. */
  map: PageRuns | string;
}

export interface LoadHooks {
  /** Checked between chunks: true stops loading (the appliance is stopping). */
  cancelled?: () => boolean;
  loaded?: (region: Region) => void;
  failed?: (region: PendingRegion, error: unknown) => void;
  /** Bytes read of the bytes the whole pass has to read, after every chunk (for a progress bar). */
  progress?: (bytesDone: number, bytesTotal: number) => void;
}

const META_SUFFIX = '.region.json';

export interface CreateRegionOptions {
  name: string;
  size: number | string;
  readOnly?: boolean;
  tenant?: string;
  /** Back the region with a file in the data directory. */
  file?: boolean;
  /** The fabric region descriptor the region carries (checked: see region-descriptor.ts). */
  descriptor?: unknown;
}

export class RegionRegistry implements NbdExportDirectory {
  readonly pool: FramePool;
  readonly merger: SamePageMerger | undefined;
  readonly dataDir: string | undefined;
  readonly layer: FileLayer;
  /** The region the empty NBD export name stands for. */
  defaultRegion: string | undefined;
  private readonly regions = new Map<string, Region>();
  /** File-backed regions that are loading or failed to load, by name. */
  private readonly pending = new Map<string, PendingEntry>();
  /** Names being created asynchronously (file-backed), so two creates cannot race. */
  private readonly reserved = new Set<string>();
  /** Regions that migrated away, by name (insertion order: oldest first). */
  private readonly movedAway = new Map<string, MovedRegion>();

  constructor(options: { pool: FramePool; merger?: SamePageMerger; dataDir?: string; layer?: FileLayer }) {
    this.pool = options.pool;
    this.merger = options.merger;
    this.dataDir = options.dataDir;
    this.layer = options.layer ?? nodeFileLayer;
  }

  get size(): number {
    return this.regions.size;
  }

  async create(options: CreateRegionOptions): Promise<Region> {
    const name = checkName(options.name);
    const tenant = checkTenant(options.tenant ?? DEFAULT_TENANT);
    const size = parseSize(options.size, 'region size');
    if (size < 1 || size > REGION_BYTES_MAX) {
      throw invalidArgument(`region size ${size} must be from 1 byte to 1 PiB`);
    }
    if (options.file && !this.dataDir) {
      throw invalidArgument('file-backed regions need the appliance to run with --data-dir');
    }
    const descriptor = options.descriptor === undefined ? undefined : checkDescriptor(options.descriptor);
    this.reserve(name);
    try {
      const space = new AddressSpace(this.pool, { size, domain: tenant });
      let backing: FileBacking | undefined;
      if (options.file) {
        try {
          backing = await FileBacking.create(
            this.dataDir!,
            {
              magic: 'memfabric-region',
              version: REGION_FILE_VERSION,
              name,
              size,
              pageSize: this.pool.pageSize,
              tenant,
              readOnly: options.readOnly ?? false,
              createdAt: new Date().toISOString(),
              ...(descriptor !== undefined ? { descriptor } : {}),
            },
            this.layer,
          );
        } catch (error) {
          space.destroy();
          throw error;
        }
      }
      return this.add(
        new Region({ name, space, tenant, readOnly: options.readOnly ?? false, backing, descriptor }),
      );
    } finally {
      this.reserved.delete(name);
    }
  }

  /**
   * Lists the file-backed regions in the data directory as pending (at start, before
   * listening): `loading`, or `corrupt` when the metadata is unreadable, names another region,
   * or was written with another page size. Reads only metadata and extent maps.
   */
  async scanDataDir(): Promise<PendingRegion[]> {
    if (!this.dataDir) return [];
    const files = (await this.layer.readdir(this.dataDir)).filter((f) => f.endsWith(META_SUFFIX)).sort();
    const found: PendingRegion[] = [];
    for (const file of files) {
      const name = file.slice(0, -META_SUFFIX.length);
      // Only names this registry could have made; anything else is not a region file of ours.
      if (!REGION_NAME_PATTERN.test(name) || this.regions.has(name) || this.pending.has(name)) continue;
      const paths = FileBacking.paths(this.dataDir, name);
      const entry: PendingEntry = {
        name,
        state: 'loading',
        size: null,
        tenant: null,
        readOnly: null,
        file: paths.image,
        error: null,
        meta: undefined,
        cost: 0,
        map: '',
      };
      try {
        const meta = await FileBacking.readMeta(paths.meta, this.layer);
        entry.size = meta.size;
        entry.tenant = meta.tenant;
        entry.readOnly = meta.readOnly;
        if (meta.descriptor !== undefined) entry.descriptor = meta.descriptor;
        if (meta.name !== name) {
          throw new MemfabricError(
            ErrorCodes.CORRUPT_FILE,
            `${paths.meta} names region "${meta.name}", not "${name}"`,
          );
        }
        if (meta.pageSize !== this.pool.pageSize) {
          throw new MemfabricError(
            ErrorCodes.CORRUPT_FILE,
            `region ${name} was saved with ${meta.pageSize}-byte pages; this appliance uses ${this.pool.pageSize}`,
          );
        }
        if (meta.size > REGION_BYTES_MAX || !TENANT_PATTERN.test(meta.tenant)) {
          throw new MemfabricError(
            ErrorCodes.CORRUPT_FILE,
            `${paths.meta} holds an impossible size or tenant`,
          );
        }
        entry.meta = meta;
        entry.map = await FileBacking.readExtentMap(this.dataDir, meta, this.layer);
        entry.cost = FileBacking.loadCost(meta, entry.map);
      } catch (error) {
        entry.state = 'corrupt';
        entry.error = errorInfo(error);
      }
      this.pending.set(name, entry);
      found.push(publicView(entry));
    }
    return found;
  }

  /**
   * Loads the pending regions that are `loading`, cheapest first, one at a time; identical
   * pages loaded into one tenant share a frame. A region that fails becomes `failed` or
   * `corrupt`; the others go on. Resolves when every one has loaded or failed (or loading was
   * cancelled: those left stay `loading`).
   */
  async loadPending(hooks: LoadHooks = {}): Promise<void> {
    if (!this.dataDir) return;
    const queue = [...this.pending.values()]
      .filter((entry) => entry.state === 'loading' && entry.meta)
      .sort((a, b) => a.cost - b.cost || a.name.localeCompare(b.name));
    const dedup = new LoadDeduper();
    const bytesTotal = queue.reduce((sum, entry) => sum + entry.cost, 0);
    let bytesDone = 0;
    const progress = hooks.progress;
    try {
      for (const entry of queue) {
        if (hooks.cancelled?.()) return;
        if (this.pending.get(entry.name) !== entry) continue;
        const meta = entry.meta!;
        let space: AddressSpace | undefined;
        let region: Region;
        try {
          space = new AddressSpace(this.pool, { size: meta.size, domain: meta.tenant });
          const backing = await FileBacking.openAndLoad(this.dataDir, meta, space, {
            layer: this.layer,
            map: entry.map,
            dedup,
            ...(hooks.cancelled ? { cancelled: hooks.cancelled } : {}),
            ...(progress
              ? {
                  read: (bytes: number) => {
                    bytesDone += bytes;
                    progress(bytesDone, bytesTotal);
                  },
                }
              : {}),
          });
          this.pending.delete(entry.name);
          region = this.add(
            new Region({
              name: entry.name,
              space,
              tenant: meta.tenant,
              readOnly: meta.readOnly,
              backing,
              descriptor: meta.descriptor,
            }),
          );
        } catch (error) {
          space?.destroy();
          if (hooks.cancelled?.()) return;
          entry.state =
            error instanceof MemfabricError && error.code === ErrorCodes.CORRUPT_FILE ? 'corrupt' : 'failed';
          entry.error = errorInfo(error);
          hooks.failed?.(publicView(entry), error);
          continue;
        }
        hooks.loaded?.(region);
      }
    } finally {
      dedup.clear();
    }
  }

  /** Scans the data directory and loads every region in it; returns those that loaded. */
  async loadFromDataDir(): Promise<Region[]> {
    const loaded: Region[] = [];
    await this.scanDataDir();
    await this.loadPending({ loaded: (region) => loaded.push(region) });
    return loaded;
  }

  /** File-backed regions that are loading or failed to load, by name. */
  pendingRegions(): PendingRegion[] {
    return [...this.pending.values()].sort((a, b) => a.name.localeCompare(b.name)).map(publicView);
  }

  pendingRegion(name: string): PendingRegion | undefined {
    const entry = this.pending.get(name);
    return entry && publicView(entry);
  }

  /** True when `name` is taken: by a region that serves, or one loading or failed to load. */
  has(name: string): boolean {
    return this.regions.has(name) || this.pending.has(name);
  }

  /**
   * Replaces region `name`'s descriptor with `value` iff its generation is higher than the
   * stored one (or none is stored), else MF_STALE_GENERATION. The check and the change happen
   * in one synchronous step, so of two concurrent replacements with the same generation one
   * wins and the other is told. A file-backed region answers once the new descriptor is
   * durable; if that write fails, the old descriptor is put back (unless a newer one came
   * meanwhile) and the failure thrown. Refused (MF_MIGRATING) during a migration's blackout,
   * when the descriptor has already been sent to the target.
   */
  async putDescriptor(name: string, value: unknown): Promise<number> {
    const descriptor = checkDescriptor(value);
    const region = this.require(name);
    if (region.gate !== GATE_OPEN) {
      throw new MemfabricError(
        ErrorCodes.MIGRATING,
        `region ${name} is in its migration blackout; resolve it again (GET /v1/regions/${name}) and retry where it went`,
      );
    }
    const previous = region.descriptor;
    if (previous !== undefined && descriptor.generation <= previous.generation) {
      throw staleGeneration(name, descriptor.generation, previous.generation);
    }
    region.descriptor = descriptor;
    if (region.backing) {
      try {
        await region.backing.setDescriptor(descriptor);
      } catch (error) {
        if (region.descriptor === descriptor) region.descriptor = previous;
        throw error;
      }
    }
    return descriptor.generation;
  }

  /** A copy-on-write clone of `source` named `name` (memory-only, writable unless asked). */
  clone(sourceName: string, options: { name: string; readOnly?: boolean }): Region {
    const source = this.require(sourceName);
    const name = checkName(options.name);
    this.reserve(name);
    try {
      const space = source.space.fork();
      return this.add(
        new Region({
          name,
          space,
          tenant: source.tenant,
          readOnly: options.readOnly ?? false,
          clonedFrom: source.name,
        }),
      );
    } finally {
      this.reserved.delete(name);
    }
  }

  /** Deletes a region and frees its memory (and its files, if file-backed). */
  async delete(name: string): Promise<void> {
    if (!this.regions.has(name) && this.movedAway.delete(name)) return;
    const entry = this.pending.get(name);
    if (entry) {
      if (entry.state === 'loading') throw unavailable(entry);
      await removeRegionFiles(this.layer, FileBacking.paths(this.dataDir!, name));
      this.pending.delete(name);
      return;
    }
    const region = this.require(name);
    if (region.migrating) {
      throw new MemfabricError(
        ErrorCodes.MIGRATING,
        `region ${name} is migrating; wait for GET /v1/regions/${name}/migration to finish`,
      );
    }
    if (region.connections > 0) {
      throw new MemfabricError(
        ErrorCodes.BUSY,
        `region ${name} has ${region.connections} NBD connection(s); disconnect them before deleting it`,
      );
    }
    this.regions.delete(name);
    if (this.defaultRegion === name) this.defaultRegion = undefined;
    region.space.destroy();
    // The name stays taken until its files are gone: a create of the same name meanwhile would
    // find the old image, or have its temporary files removed under it.
    this.reserved.add(name);
    try {
      await region.backing?.remove();
    } finally {
      this.reserved.delete(name);
    }
  }

  /**
   * Saves every file-backed region and frees everything (clean shutdown). Every region is
   * saved and closed whatever happens to the others; the ones whose final save failed are
   * returned (empty: everything was saved).
   */
  async close(): Promise<UnsavedRegion[]> {
    const regions = [...this.regions.values()];
    this.regions.clear();
    this.pending.clear();
    const results = await Promise.allSettled(regions.map((region) => region.backing?.close(region.space)));
    for (const region of regions) region.space.destroy();
    const unsaved: UnsavedRegion[] = [];
    results.forEach((result, i) => {
      if (result.status === 'rejected') unsaved.push({ name: regions[i]!.name, error: result.reason });
    });
    return unsaved;
  }

  /**
   * After a migration: `region` is served elsewhere now. Forgets it here, ends nothing itself
   * (the caller disconnects its NBD clients), frees its memory and files, and keeps a
   * forwarding record so GET /v1/regions/:name can say where it went.
   */
  async markMoved(region: Region, movedTo: MovedTo): Promise<MovedRegion> {
    const record: MovedRegion = {
      name: region.name,
      size: region.size,
      tenant: region.tenant,
      movedTo,
      movedAt: new Date().toISOString(),
    };
    // region.gate is GATE_MOVED already: the migration's write gate moved in the same step.
    this.regions.delete(region.name);
    if (this.defaultRegion === region.name) this.defaultRegion = undefined;
    if (this.movedAway.size >= MOVED_RECORDS_MAX) {
      this.movedAway.delete(this.movedAway.keys().next().value!);
    }
    this.movedAway.set(region.name, record);
    // A save in progress reads the space: let it finish before the frames go back to the pool.
    // The name stays taken until the files are gone (as in delete).
    this.reserved.add(region.name);
    try {
      await region.backing?.remove();
    } finally {
      this.reserved.delete(region.name);
    }
    region.space.destroy();
    return record;
  }

  /** Where a region that migrated away went, if `name` is one. */
  movedRecord(name: string): MovedRegion | undefined {
    return this.regions.has(name) ? undefined : this.movedAway.get(name);
  }

  find(name: string): Region | undefined {
    return this.regions.get(name);
  }

  require(name: string): Region {
    const region = this.regions.get(name);
    if (!region) {
      const entry = this.pending.get(name);
      if (entry) throw unavailable(entry);
      const moved = this.movedAway.get(name)?.movedTo;
      throw new MemfabricError(
        ErrorCodes.NOT_FOUND,
        moved
          ? `region "${name}" moved to ${moved.appliance} (as "${moved.region}")`
          : `no region named "${name}"; list regions with GET /v1/regions`,
      );
    }
    return region;
  }

  all(): Region[] {
    return [...this.regions.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  // NbdExportDirectory

  // An NBD identity (the PSK identity of a TLS connection) is a tenant: it sees only the regions
  // of that tenant. No identity: every region (plain NBD, or an admin identity).

  get(name: string, identity?: string): Region | undefined {
    const region =
      name === ''
        ? this.defaultRegion === undefined
          ? undefined
          : this.regions.get(this.defaultRegion)
        : this.regions.get(name);
    return region === undefined || (identity !== undefined && region.tenant !== identity)
      ? undefined
      : region;
  }

  /**
   * Why `name` does not serve although it exists (loading or failed), for NBD's refusal; a
   * region of another tenant than `identity` is not explained (it stays unknown to it).
   */
  whyUnavailable(name: string, identity?: string): string | undefined {
    const entry = this.pending.get(name === '' ? (this.defaultRegion ?? '') : name);
    if (entry === undefined || (identity !== undefined && entry.tenant !== identity)) return undefined;
    return unavailable(entry).message;
  }

  list(identity?: string): Array<{ name: string; description: string }> {
    const regions = this.all();
    return (identity === undefined ? regions : regions.filter((region) => region.tenant === identity)).map(
      (region) => ({ name: region.name, description: region.description }),
    );
  }

  onAttach(name: string, delta: 1 | -1, exp?: NbdExport): void {
    // The region the connection was given: after a migration the name may already stand for
    // another region (moved back), whose count this connection never took.
    const region = exp instanceof Region ? exp : this.get(name);
    if (region) region.connections = Math.max(0, region.connections + delta);
  }

  private reserve(name: string): void {
    if (this.regions.has(name) || this.reserved.has(name) || this.pending.has(name)) {
      throw new MemfabricError(
        ErrorCodes.ALREADY_EXISTS,
        `a region named "${name}" already exists; choose another name`,
      );
    }
    if (this.regions.size + this.reserved.size + this.pending.size >= REGIONS_MAX) {
      throw invalidArgument(`this appliance already holds ${REGIONS_MAX} regions, the most it allows`);
    }
    this.reserved.add(name);
  }

  private add(region: Region): Region {
    this.regions.set(region.name, region);
    this.movedAway.delete(region.name);
    this.merger?.register(region.space);
    return region;
  }
}

function checkName(name: unknown): string {
  if (typeof name !== 'string' || !REGION_NAME_PATTERN.test(name)) {
    throw invalidArgument(
      `region name ${JSON.stringify(name)} must be 1-128 characters of letters, digits, '.', '_' or '-', ` +
        'starting with a letter or digit',
    );
  }
  return name;
}

function checkTenant(tenant: unknown): string {
  if (typeof tenant !== 'string' || !TENANT_PATTERN.test(tenant)) {
    throw invalidArgument(
      `tenant ${JSON.stringify(tenant)} must be 1-64 characters of letters, digits, '.', '_' or '-'`,
    );
  }
  return tenant;
}

function errorInfo(error: unknown): { code: string; message: string } {
  return error instanceof MemfabricError
    ? { code: error.code, message: error.message }
    : { code: ErrorCodes.INTERNAL, message: error instanceof Error ? error.message : String(error) };
}

function publicView(entry: PendingEntry): PendingRegion {
  const { meta: _meta, cost: _cost, map: _map, ...view } = entry;
  return { ...view, error: entry.error && { ...entry.error } };
}

/** The typed error for using a region that is loading (retry) or failed to load (see its error). */
function unavailable(entry: PendingRegion): MemfabricError {
  return entry.state === 'loading'
    ? new MemfabricError(
        ErrorCodes.LOADING,
        `region ${entry.name} is still loading from ${entry.file}; retry in a moment`,
      )
    : new MemfabricError(
        ErrorCodes.REGION_FAILED,
        `region ${entry.name} is ${entry.state} and serves nothing: ${entry.error?.message ?? 'unknown error'}; ` +
          `repair its files and restart, or delete it (DELETE /v1/regions/${entry.name})`,
      );
}
