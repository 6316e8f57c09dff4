/**
 * The fabric: the allocation logic of seed 001. An application asks for memory; the fabric
 * chooses the memory type, and for external memory a redundancy and the appliances that hold
 * each shard; it creates the regions through the appliances' admin APIs, and the application
 * then reads and writes them directly over NBD.
 *
 * Memory type by availability. `allocate({ prefer })` tries the preferred type first, then the
 * others in the order local → external → file:
 *   local     this process's frame pool, if `localMemory` was given and the sizes of the local
 *             regions still fit in it (sizes are committed up front, so a local region never
 *             runs out of frames halfway);
 *   external  appliances, if placement finds one appliance per shard (with free memory for a
 *             whole shard unless `overcommit`);
 *   file      a sparse file in `fileDirectory`, if one was given (created, with its parents, on
 *             the first file region; a path that cannot be a directory is MF_BAD_PATH).
 * Only external memory offers redundancy: a request for copies or parity never falls back to
 * local memory or a file.
 */
import { randomBytes } from 'node:crypto';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { NbdClientTls } from '../nbd/index.js';
import { FramePool } from '../memory/index.js';
import { checkDirectory } from '../paths.js';
import { parseSize } from '../size.js';
import { ApplianceDirectory, type ApplianceAccess, type ApplianceState } from './directory.js';
import { ExternalRegion, describeRedundancy, shardGeometry, type Redundancy } from './external-region.js';
import { FileRegion } from './file-region.js';
import { LocalRegion } from './local-region.js';
import type { MemoryRegion, MemoryType } from './memory-region.js';
import { place } from './placement.js';
import { Shard } from './shard.js';

export const REQUEST_TIMEOUT_MS_DEFAULT = 5000;
const MEMORY_TYPES: readonly MemoryType[] = ['local', 'external', 'file'];

export interface FabricOptions {
  /**
   * The appliances: admin URLs (e.g. http://127.0.0.1:10880), or `{ url, token?, ca? }` for an
   * appliance with a token (or CA) of its own.
   */
  appliances?: ApplianceAccess[];
  /** Token sent to appliances given without one (an admin token, or a tenant token). */
  token?: string;
  /** CA certificates (PEM) trusted for https appliances given without a CA of their own. */
  ca?: string | Buffer;
  /** Local memory the fabric may use for local regions (default none). */
  localMemory?: number | string;
  /**
   * Directory for file regions (default none). Created, with its parents, when the first file
   * region needs it; MF_BAD_PATH naming it when it cannot be a directory or cannot be written.
   */
  fileDirectory?: string;
  /** An appliance that does not answer an NBD request within this time is lost. Default 5 s. */
  requestTimeoutMs?: number;
  pageSize?: number;
  /** Default tenant (trust domain) for regions. */
  tenant?: string;
  /**
   * TLS for the NBD connections to the appliances (needed against `--tls require`). With PSK,
   * the identity is the tenant whose regions the connections may open.
   */
  tls?: NbdClientTls;
}

export interface AllocateOptions {
  size: number | string;
  redundancy?: Redundancy;
  /** Memory type to try first (default external when appliances are given, else local). */
  prefer?: MemoryType;
  tenant?: string;
  /** Name prefix of the region (and of its shards on the appliances). */
  name?: string;
  placement?: {
    /** Use exactly these appliances, one shard each, in order. */
    appliances?: string[];
    /** Place shards on appliances with less free memory than a full shard. */
    overcommit?: boolean;
  };
}

export class Fabric {
  readonly pageSize: number;
  private readonly directory: ApplianceDirectory | undefined;
  private readonly localPool: FramePool | undefined;
  private readonly localBudget: number;
  private localCommitted = 0;
  private readonly fileDirectory: string | undefined;
  private readonly requestTimeoutMs: number;
  private readonly tenant: string;
  private readonly tls: NbdClientTls | undefined;
  private readonly regions = new Set<MemoryRegion>();

  constructor(options: FabricOptions) {
    this.pageSize = options.pageSize ?? 4096;
    this.requestTimeoutMs = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS_DEFAULT;
    this.tls = options.tls;
    this.directory =
      options.appliances && options.appliances.length > 0
        ? new ApplianceDirectory(options.appliances, this.requestTimeoutMs, {
            ...(options.token !== undefined ? { token: options.token } : {}),
            ...(options.ca !== undefined ? { ca: options.ca } : {}),
          })
        : undefined;
    this.localBudget = options.localMemory === undefined ? 0 : parseSize(options.localMemory, 'localMemory');
    this.localPool =
      this.localBudget > 0
        ? new FramePool({ capacity: this.localBudget, pageSize: this.pageSize })
        : undefined;
    if (
      options.fileDirectory !== undefined &&
      (typeof options.fileDirectory !== 'string' || options.fileDirectory === '')
    ) {
      throw invalidArgument(`fileDirectory ${String(options.fileDirectory)} must be a directory path`);
    }
    this.fileDirectory = options.fileDirectory;
    this.tenant = options.tenant ?? 'default';
    if (!this.directory && !this.localPool && !this.fileDirectory) {
      throw invalidArgument('a fabric needs appliances, localMemory or a fileDirectory to allocate from');
    }
  }

  /** Adds an appliance to the fabric (for new regions and rebuilds). */
  addAppliance(appliance: ApplianceAccess): void {
    if (!this.directory) throw invalidArgument('this fabric was created without appliances');
    this.directory.add(appliance);
  }

  /** The appliances and what they report (free memory, NBD endpoint, reachability). */
  appliances(): Promise<ApplianceState[]> {
    return this.directory ? this.directory.refresh() : Promise.resolve([]);
  }

  /** Allocates memory; see the overview for how the memory type is chosen. */
  async allocate(options: AllocateOptions): Promise<MemoryRegion> {
    const size = parseSize(options.size, 'size');
    if (size < 1) throw invalidArgument('size must be at least 1 byte');
    const redundancy = options.redundancy ?? 'none';
    shardGeometry(redundancy, size, this.pageSize); // validates
    const name = options.name ?? `fab-${randomBytes(4).toString('hex')}`;
    const tenant = options.tenant ?? this.tenant;
    const prefer = options.prefer ?? (this.directory ? 'external' : 'local');
    const order = [prefer, ...MEMORY_TYPES.filter((type) => type !== prefer)];
    const refusals: string[] = [];
    for (const type of order) {
      if (type !== 'external' && redundancy !== 'none') {
        refusals.push(`${type}: offers no redundancy (${describeRedundancy(redundancy)} asked)`);
        continue;
      }
      try {
        const region = await this.allocateAs(type, name, size, redundancy, tenant, options.placement ?? {});
        this.regions.add(region);
        return region;
      } catch (error) {
        if (!(error instanceof MemfabricError) || error.code !== ErrorCodes.PLACEMENT_FAILED) throw error;
        refusals.push(`${type}: ${error.message}`);
      }
    }
    throw new MemfabricError(
      ErrorCodes.PLACEMENT_FAILED,
      `cannot allocate ${size} bytes (${describeRedundancy(redundancy)}): ${refusals.join('; ')}`,
    );
  }

  /** Closes (and frees) every region this fabric allocated. */
  async close(): Promise<void> {
    const regions = [...this.regions];
    this.regions.clear();
    await Promise.allSettled(regions.map((region) => region.close()));
  }

  private async allocateAs(
    type: MemoryType,
    name: string,
    size: number,
    redundancy: Redundancy,
    tenant: string,
    placement: NonNullable<AllocateOptions['placement']>,
  ): Promise<MemoryRegion> {
    if (type === 'local') {
      if (!this.localPool || this.localCommitted + size > this.localBudget) {
        throw new MemfabricError(
          ErrorCodes.PLACEMENT_FAILED,
          this.localPool
            ? `${this.localBudget - this.localCommitted} bytes of local memory left`
            : 'no localMemory configured',
        );
      }
      this.localCommitted += size;
      return new LocalRegion(name, this.localPool, size, () => {
        this.localCommitted -= size;
      });
    }
    if (type === 'file') {
      if (!this.fileDirectory)
        throw new MemfabricError(ErrorCodes.PLACEMENT_FAILED, 'no fileDirectory configured');
      await checkDirectory(this.fileDirectory, 'fileDirectory', true);
      return FileRegion.create(this.fileDirectory, name, size);
    }
    return this.allocateExternal(name, size, redundancy, tenant, placement);
  }

  private async allocateExternal(
    name: string,
    size: number,
    redundancy: Redundancy,
    tenant: string,
    placement: NonNullable<AllocateOptions['placement']>,
  ): Promise<ExternalRegion> {
    const directory = this.directory;
    if (!directory) throw new MemfabricError(ErrorCodes.PLACEMENT_FAILED, 'no appliances configured');
    const geometry = shardGeometry(redundancy, size, this.pageSize);
    const states = await directory.refresh();
    let chosen: ApplianceState[];
    if (placement.appliances) {
      if (
        placement.appliances.length !== geometry.shards ||
        new Set(placement.appliances).size !== geometry.shards
      ) {
        throw invalidArgument(
          `placement.appliances must name ${geometry.shards} different appliances, one per shard`,
        );
      }
      chosen = placement.appliances.map((url) => {
        const state = states.find((s) => s.url === url);
        if (!state?.reachable)
          throw new MemfabricError(ErrorCodes.PLACEMENT_FAILED, `appliance ${url} is not reachable`);
        return state;
      });
    } else {
      chosen = place(states, {
        shards: geometry.shards,
        shardBytes: geometry.shardBytes,
        overcommit: placement.overcommit ?? false,
      });
    }
    const created: Array<{ url: string; region: string }> = [];
    const shards: Shard[] = [];
    try {
      for (const [index, appliance] of chosen.entries()) {
        const region = `${name}-${index}`;
        await directory.createRegion(appliance.url, { name: region, size: geometry.shardBytes, tenant });
        created.push({ url: appliance.url, region });
        shards.push(
          await Shard.open({
            index,
            appliance: appliance.url,
            region,
            nbd: appliance.nbd,
            requestTimeoutMs: this.requestTimeoutMs,
            tls: this.tls,
          }),
        );
      }
    } catch (error) {
      await Promise.allSettled(shards.map((shard) => shard.close()));
      await Promise.allSettled(created.map(({ url, region }) => directory.deleteRegion(url, region)));
      throw error;
    }
    return new ExternalRegion({
      name,
      size,
      pageSize: this.pageSize,
      redundancy,
      tenant,
      shards,
      directory,
      requestTimeoutMs: this.requestTimeoutMs,
      tls: this.tls,
    });
  }
}
