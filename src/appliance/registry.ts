/**
 * The appliance's regions by name, over one frame pool (the memory budget) and one same-page
 * merger (which shares pages only between regions of one tenant). It is also the NBD
 * server's export directory: the export name is the region name, and the empty name is the
 * default region.
 */
import { readdir } from 'node:fs/promises';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { AddressSpace, type FramePool, type SamePageMerger } from '../memory/index.js';
import type { NbdExportDirectory } from '../nbd/export.js';
import { parseSize } from '../size.js';
import { FileBacking } from './file-backing.js';
import { GATE_MOVED, Region, type MovedTo } from './region.js';

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

export interface CreateRegionOptions {
  name: string;
  size: number | string;
  readOnly?: boolean;
  tenant?: string;
  /** Back the region with a file in the data directory. */
  file?: boolean;
}

export class RegionRegistry implements NbdExportDirectory {
  readonly pool: FramePool;
  readonly merger: SamePageMerger | undefined;
  readonly dataDir: string | undefined;
  /** The region the empty NBD export name stands for. */
  defaultRegion: string | undefined;
  private readonly regions = new Map<string, Region>();
  /** Names being created asynchronously (file-backed), so two creates cannot race. */
  private readonly reserved = new Set<string>();
  /** Regions that migrated away, by name (insertion order: oldest first). */
  private readonly movedAway = new Map<string, MovedRegion>();

  constructor(options: { pool: FramePool; merger?: SamePageMerger; dataDir?: string }) {
    this.pool = options.pool;
    this.merger = options.merger;
    this.dataDir = options.dataDir;
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
    this.reserve(name);
    try {
      const space = new AddressSpace(this.pool, { size, domain: tenant });
      let backing: FileBacking | undefined;
      if (options.file) {
        try {
          backing = await FileBacking.create(this.dataDir!, {
            magic: 'memfabric-region',
            version: 1,
            name,
            size,
            pageSize: this.pool.pageSize,
            tenant,
            readOnly: options.readOnly ?? false,
            createdAt: new Date().toISOString(),
          });
        } catch (error) {
          space.destroy();
          throw error;
        }
      }
      return this.add(new Region({ name, space, tenant, readOnly: options.readOnly ?? false, backing }));
    } finally {
      this.reserved.delete(name);
    }
  }

  /** Loads every file-backed region found in the data directory (at start-up). */
  async loadFromDataDir(): Promise<Region[]> {
    if (!this.dataDir) return [];
    const loaded: Region[] = [];
    const names = (await readdir(this.dataDir)).filter((file) => file.endsWith('.region.json')).sort();
    for (const file of names) {
      const meta = await FileBacking.readMeta(`${this.dataDir}/${file}`);
      if (meta.pageSize !== this.pool.pageSize) {
        throw new MemfabricError(
          ErrorCodes.CORRUPT_FILE,
          `region ${meta.name} was saved with ${meta.pageSize}-byte pages; this appliance uses ${this.pool.pageSize}`,
        );
      }
      const name = checkName(meta.name);
      this.reserve(name);
      try {
        const space = new AddressSpace(this.pool, { size: meta.size, domain: meta.tenant });
        let backing: FileBacking;
        try {
          backing = await FileBacking.openAndLoad(this.dataDir, meta, space);
        } catch (error) {
          space.destroy();
          throw error;
        }
        loaded.push(
          this.add(new Region({ name, space, tenant: meta.tenant, readOnly: meta.readOnly, backing })),
        );
      } finally {
        this.reserved.delete(name);
      }
    }
    return loaded;
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
    await region.backing?.remove();
  }

  /** Saves every file-backed region and frees everything (clean shutdown). */
  async close(): Promise<void> {
    const regions = [...this.regions.values()];
    this.regions.clear();
    await Promise.all(regions.map((region) => region.backing?.close(region.space)));
    for (const region of regions) region.space.destroy();
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
    region.gate = GATE_MOVED;
    this.regions.delete(region.name);
    if (this.defaultRegion === region.name) this.defaultRegion = undefined;
    if (this.movedAway.size >= MOVED_RECORDS_MAX) {
      this.movedAway.delete(this.movedAway.keys().next().value!);
    }
    this.movedAway.set(region.name, record);
    // A save in progress reads the space: let it finish before the frames go back to the pool.
    await region.backing?.remove();
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

  list(identity?: string): Array<{ name: string; description: string }> {
    const regions = this.all();
    return (identity === undefined ? regions : regions.filter((region) => region.tenant === identity)).map(
      (region) => ({ name: region.name, description: region.description }),
    );
  }

  onAttach(name: string, delta: 1 | -1): void {
    const region = this.get(name);
    if (region) region.connections = Math.max(0, region.connections + delta);
  }

  private reserve(name: string): void {
    if (this.regions.has(name) || this.reserved.has(name)) {
      throw new MemfabricError(
        ErrorCodes.ALREADY_EXISTS,
        `a region named "${name}" already exists; choose another name`,
      );
    }
    if (this.regions.size + this.reserved.size >= REGIONS_MAX) {
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
