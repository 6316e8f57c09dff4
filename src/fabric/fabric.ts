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
import type { Catalog, CatalogEntry } from '../catalog/catalog.js';
import {
  DESCRIPTOR_FORMAT,
  nextGeneration,
  sealDescriptor,
  type RegionDescriptor,
  type ShardPlacement,
} from '../catalog/descriptor.js';
import { storeCopies } from '../catalog/copies.js';
import { EmbeddedCatalog, HALF_MADE_GRACE_MS_DEFAULT } from '../catalog/embedded-catalog.js';
import {
  collectGarbage,
  collectIfHalfMade,
  findGarbage,
  type CollectResult,
  type GarbageShard,
} from '../catalog/garbage.js';
import { ApplianceDiscovery } from '../catalog/etcd-discovery.js';
import { EtcdCatalog } from '../catalog/etcd-catalog.js';
import { checkEndpoints, type EtcdOptions } from '../catalog/etcd.js';
import { RebuildRequests } from '../catalog/rebuild-requests.js';
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
  /**
   * Fleet mode: the etcd members (client URLs) or full etcd options. The live appliances are
   * discovered from etcd (and may be combined with `appliances`), and the catalog of regions is
   * kept in etcd, changed only by compare-and-swap transactions (docs/fleet.md).
   */
  etcd?: string[] | EtcdOptions;
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
  /**
   * A region left half-made by a client that died while allocating it is collected by the next
   * allocation of its name once it is this old and none of its shards is connected. Default 60 s.
   */
  halfMadeGraceMs?: number;
  /** Where the fabric reports what it skipped or collected (damaged descriptors, dead appliances). */
  warn?: (message: string) => void;
}

export interface OpenOptions {
  tenant?: string;
  /**
   * Open even if a shard still has NBD connections (another client has the region open, or one
   * that was cut off has not been noticed yet). Two clients writing one region corrupt its parity.
   */
  force?: boolean;
}

export interface DeleteOptions {
  tenant?: string;
  /** Delete even if a shard still has NBD connections. */
  force?: boolean;
}

/** A fabric region as the catalog describes it (see `fabric.list()`). */
export interface FabricRegionInfo {
  name: string;
  tenant: string;
  id: string;
  size: number;
  redundancy: Redundancy;
  generation: number;
  state: RegionDescriptor['state'];
  shards: ShardPlacement[];
  /** Shards whose appliance holds a copy of the newest descriptor (embedded catalog). */
  shardsFound: number[];
  /** Shards not live in the descriptor (lost or rebuilding): the region is degraded. */
  degraded: boolean;
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
  /** Regions reopened by name: close() detaches them instead of freeing them. */
  private readonly opened = new Set<ExternalRegion>();
  private catalog: Catalog | undefined;
  private readonly warn: (message: string) => void;
  private readonly halfMadeGraceMs: number;
  /** Fleet mode: etcd's options, and (once started) the discovery of live appliances. */
  private readonly etcd: EtcdOptions | undefined;
  private fleet: Promise<ApplianceDiscovery> | undefined;
  /** Discovered appliances whose etcd lease has expired since (gone from placement). */
  private readonly leaseExpired = new Set<string>();
  /** Fleet mode: answers the controller's rebuild requests for the regions this fabric holds. */
  private rebuildRequests: RebuildRequests | undefined;

  constructor(options: FabricOptions) {
    this.pageSize = options.pageSize ?? 4096;
    this.requestTimeoutMs = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS_DEFAULT;
    this.tls = options.tls;
    this.etcd =
      options.etcd === undefined
        ? undefined
        : Array.isArray(options.etcd)
          ? { endpoints: checkEndpoints(options.etcd) }
          : { ...options.etcd, endpoints: checkEndpoints(options.etcd.endpoints) };
    this.directory =
      (options.appliances && options.appliances.length > 0) || this.etcd
        ? new ApplianceDirectory(
            options.appliances ?? [],
            this.requestTimeoutMs,
            {
              ...(options.token !== undefined ? { token: options.token } : {}),
              ...(options.ca !== undefined ? { ca: options.ca } : {}),
            },
            this.etcd !== undefined,
          )
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
    this.warn = options.warn ?? (() => undefined);
    this.halfMadeGraceMs = options.halfMadeGraceMs ?? HALF_MADE_GRACE_MS_DEFAULT;
    this.catalog = this.etcd
      ? new EtcdCatalog(this.etcd)
      : this.directory
        ? new EmbeddedCatalog(this.directory, {
            warn: this.warn,
            ...(options.halfMadeGraceMs !== undefined ? { halfMadeGraceMs: options.halfMadeGraceMs } : {}),
          })
        : undefined;
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
  async appliances(): Promise<ApplianceState[]> {
    if (!this.directory) return [];
    await this.discovered();
    return this.directory.refresh();
  }

  /**
   * Fleet mode: starts discovery on first use and adds every live appliance to the directory
   * (placement then uses only those etcd lists as live). Without etcd: nothing.
   */
  private async discovered(): Promise<ApplianceDiscovery | undefined> {
    if (!this.etcd || !this.directory) return undefined;
    const directory = this.directory;
    this.fleet ??= ApplianceDiscovery.start(this.etcd).then((discovery) => {
      for (const record of discovery.live()) directory.add(record.url);
      discovery.onChange((event) => {
        if (event.type === 'down') this.leaseExpired.add(event.appliance.url);
        else {
          this.leaseExpired.delete(event.appliance.url);
          directory.add(event.appliance.url);
        }
      });
      return discovery;
    });
    try {
      return await this.fleet;
    } catch (error) {
      this.fleet = undefined; // etcd away: the next call tries again
      throw error;
    }
  }

  /**
   * Allocates memory; see the overview for how the memory type is chosen. Memory with redundancy
   * is always external, so it is typed as an ExternalRegion (detach, rebuild, scrub).
   */
  allocate(options: AllocateOptions & { redundancy: Exclude<Redundancy, 'none'> }): Promise<ExternalRegion>;
  allocate(options: AllocateOptions): Promise<MemoryRegion>;
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
        if (region instanceof ExternalRegion) this.answerRebuilds(region);
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

  /**
   * Reopens a fabric region by name, in this process or any other, from the descriptor its
   * shards carry: every shard the newest generation lists as live is connected; one whose
   * appliance does not answer is lost (the region opens degraded, and the loss is recorded
   * before this resolves). MF_NOT_FOUND if no such region; MF_BUSY if another client has it
   * open (unless `force`); MF_DATA_LOST if too few shards are left to read it.
   */
  async open(name: string, options: OpenOptions = {}): Promise<ExternalRegion> {
    const { directory, catalog } = this.requireCatalog();
    await this.discovered();
    const tenant = options.tenant ?? this.tenant;
    const entry = await catalog.get(tenant, name);
    if (!entry || entry.descriptor.state !== 'ready') {
      throw new MemfabricError(
        ErrorCodes.NOT_FOUND,
        entry
          ? `fabric region ${name} (tenant ${tenant}) is ${entry.descriptor.state === 'creating' ? 'half-made: its client died while allocating it' : 'being deleted'}`
          : `no fabric region named ${name} for tenant ${tenant} on the ${directory.urls.length} known appliance(s); list them with fabric.list()`,
      );
    }
    const descriptor = entry.descriptor;
    for (const shard of descriptor.shards) directory.add(shard.appliance);
    await directory.refresh(); // where each appliance serves NBD now
    const shards = await Promise.all(
      descriptor.shards.map((placed) => this.openShard(descriptor, placed, options.force ?? false)),
    );
    const busy = shards.find((shard): shard is MemfabricError => shard instanceof MemfabricError);
    if (busy) {
      await Promise.allSettled(shards.map((shard) => (shard instanceof Shard ? shard.close() : undefined)));
      throw busy;
    }
    const region = new ExternalRegion({
      name,
      size: descriptor.size,
      pageSize: descriptor.pageSize,
      redundancy: descriptor.redundancy,
      tenant,
      shards: shards as Shard[],
      directory,
      requestTimeoutMs: this.requestTimeoutMs,
      tls: this.tls,
      descriptor,
      publish: (next) => this.publishDescriptor(next),
      forget: (descriptor) => catalog.remove(descriptor),
    });
    try {
      // Records shards found lost, and refuses a region that lost more than its redundancy.
      await region.flush();
    } catch (error) {
      await region.detach();
      throw error;
    }
    this.opened.add(region);
    this.answerRebuilds(region);
    return region;
  }

  /** The fabric regions on the known appliances (this fabric's tenant, or `tenant`, or '*' for all). */
  async list(options: { tenant?: string } = {}): Promise<FabricRegionInfo[]> {
    const { catalog } = this.requireCatalog();
    await this.discovered();
    const tenant = options.tenant ?? this.tenant;
    const entries = await catalog.list(tenant === '*' ? undefined : tenant);
    return entries.map(describeEntry).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Deletes a fabric region by name: its shards on every appliance that answers, then its name.
   * A shard whose appliance is down is left marked `deleting` and is collected when it comes
   * back. MF_BUSY if a client has the region open (unless `force`).
   */
  async delete(
    name: string,
    options: DeleteOptions = {},
  ): Promise<{ shardsDeleted: number; leftBehind: string[] }> {
    const { directory, catalog } = this.requireCatalog();
    await this.discovered();
    const tenant = options.tenant ?? this.tenant;
    const entry = await catalog.get(tenant, name);
    if (!entry) {
      throw new MemfabricError(ErrorCodes.NOT_FOUND, `no fabric region named ${name} for tenant ${tenant}`);
    }
    let descriptor = entry.descriptor;
    if (!options.force) await this.assertIdle(descriptor);
    if (descriptor.state !== 'deleting') {
      descriptor = nextGeneration(descriptor, { state: 'deleting' });
      await this.publishDescriptor(descriptor).catch((error: unknown) => {
        this.warn(`marking ${name} deleting failed: ${(error as Error).message}`);
      });
    }
    const leftBehind: string[] = [];
    let shardsDeleted = 0;
    await Promise.all(
      descriptor.shards.map(async (shard) => {
        try {
          await directory.deleteRegion(shard.appliance, shard.region);
          shardsDeleted++;
        } catch (error) {
          if (error instanceof MemfabricError && error.code === ErrorCodes.NOT_FOUND) return;
          leftBehind.push(`${shard.region} on ${shard.appliance}: ${(error as Error).message}`);
        }
      }),
    );
    await catalog.remove(descriptor);
    return { shardsDeleted, leftBehind };
  }

  /**
   * Finds (`dryRun`) or deletes what fabric regions left behind on the appliances: shards a
   * rebuild replaced while their appliance was away, half-made regions (still `creating` after
   * `halfMadeGraceMs`), deletes that did not finish, and unreadable remains of closed regions.
   * A shard with an NBD connection is never touched. See src/catalog/garbage.ts.
   */
  async collect(options: { dryRun?: boolean } = {}): Promise<CollectResult> {
    const { directory, catalog } = this.requireCatalog();
    await this.discovered();
    const garbage = { halfMadeGraceMs: this.halfMadeGraceMs, warn: this.warn };
    if (options.dryRun) {
      const found: GarbageShard[] = await findGarbage(directory, catalog, garbage);
      return { collected: found, failed: [] };
    }
    return collectGarbage(directory, catalog, garbage);
  }

  /** Frees every region this fabric allocated, and detaches (keeps) the ones it opened by name. */
  async close(): Promise<void> {
    const regions = [...this.regions];
    const opened = [...this.opened];
    this.regions.clear();
    this.opened.clear();
    await Promise.allSettled([
      ...regions.map((region) => region.close()),
      ...opened.map((region) => region.detach()),
    ]);
    await this.rebuildRequests?.close();
    const fleet = this.fleet;
    this.fleet = undefined;
    if (fleet) (await fleet.catch(() => undefined))?.close();
    await this.catalog?.close();
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
    await this.discovered();
    // Fleet mode: an appliance whose lease expired is no candidate, even if it still answers
    // (it may be cut off from etcd and the controller may be rebuilding what it held).
    const states = (await directory.refresh()).map((state) =>
      this.leaseExpired.has(state.url)
        ? { ...state, reachable: false, error: 'its etcd lease expired' }
        : state,
    );
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
    const catalog = this.catalog!;
    const placed: ShardPlacement[] = chosen.map((appliance, index) => ({
      index,
      appliance: appliance.url,
      region: `${name}-${index}`,
      nbd: { host: appliance.nbd.host, port: appliance.nbd.port },
      state: 'live',
    }));
    const creating = sealDescriptor({
      format: DESCRIPTOR_FORMAT,
      id: randomBytes(8).toString('hex'),
      name,
      tenant,
      size,
      pageSize: this.pageSize,
      redundancy,
      generation: 0,
      state: 'creating',
      shards: placed,
      createdAt: Date.now(),
    });
    // The name first (unique per tenant), then the shards, each carrying the descriptor, then
    // the descriptor marked ready: a client killed before that leaves a half-made region that
    // the next allocation of the name collects.
    try {
      await catalog.create(creating);
    } catch (error) {
      // Fleet mode: the name may be held by a region whose client died while allocating it.
      if (
        !(error instanceof MemfabricError) ||
        error.code !== ErrorCodes.ALREADY_EXISTS ||
        catalog.kind !== 'etcd'
      ) {
        throw error;
      }
      const holder = await catalog.get(tenant, name);
      if (
        !holder ||
        !(await collectIfHalfMade(directory, catalog, holder.descriptor, this.halfMadeGraceMs))
      ) {
        throw error;
      }
      this.warn(`collected the half-made region ${name} (tenant ${tenant}, id ${holder.descriptor.id})`);
      await catalog.create(creating);
    }
    const created: Array<{ url: string; region: string }> = [];
    const shards: Shard[] = [];
    let descriptor: RegionDescriptor;
    try {
      // Every shard at once: each is made on its own appliance, and the name is already ours.
      const made = await Promise.allSettled(
        placed.map(async (shard) => {
          await directory.createRegion(shard.appliance, {
            name: shard.region,
            size: geometry.shardBytes,
            tenant,
            descriptor: creating,
          });
          created.push({ url: shard.appliance, region: shard.region });
          return Shard.open({
            index: shard.index,
            appliance: shard.appliance,
            region: shard.region,
            nbd: shard.nbd,
            requestTimeoutMs: this.requestTimeoutMs,
            tls: this.tls,
          });
        }),
      );
      for (const result of made) if (result.status === 'fulfilled') shards.push(result.value);
      const failed = made.find((result) => result.status === 'rejected');
      if (failed) throw failed.reason;
      shards.sort((a, b) => a.index - b.index);
      descriptor = nextGeneration(creating, { state: 'ready' });
      await this.publishDescriptor(descriptor);
    } catch (error) {
      await Promise.allSettled(shards.map((shard) => shard.close()));
      const deleted = await Promise.allSettled(
        created.map(({ url, region }) => directory.deleteRegion(url, region)),
      );
      deleted.forEach((result, i) => {
        if (result.status === 'rejected') {
          this.warn(
            `allocating ${name} failed, and its shard ${created[i]!.region} on ${created[i]!.url} could not be ` +
              `deleted (${(result.reason as Error).message}); fabric.collect() deletes it later`,
          );
        }
      });
      await catalog.remove(creating).catch(() => undefined);
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
      descriptor,
      publish: (next) => this.publishDescriptor(next),
      forget: (descriptor) => catalog.remove(descriptor),
    });
  }

  /** Fleet mode: the controller's rebuild requests for `region` are answered (src/catalog/rebuild-requests.ts). */
  private answerRebuilds(region: ExternalRegion): void {
    if (this.etcd)
      (this.rebuildRequests ??= new RebuildRequests({ etcd: this.etcd, warn: this.warn })).track(region);
  }

  /** Records a descriptor's next generation: in the catalog, and a copy on each shard. */
  private async publishDescriptor(next: RegionDescriptor): Promise<void> {
    const catalog = this.catalog!;
    await catalog.update(next);
    if (catalog.kind !== 'embedded') await storeCopies(this.directory!, next);
  }

  private requireCatalog(): { directory: ApplianceDirectory; catalog: Catalog } {
    if (!this.directory || !this.catalog) {
      throw invalidArgument('fabric regions are found on appliances: create the fabric with appliances');
    }
    return { directory: this.directory, catalog: this.catalog };
  }

  /** MF_BUSY when a shard of the region has NBD connections (a client has it open). */
  private async assertIdle(descriptor: RegionDescriptor): Promise<void> {
    const directory = this.directory!;
    await Promise.all(
      descriptor.shards
        .filter((shard) => shard.state !== 'lost')
        .map(async (shard) => {
          const found = await directory.getRegion(shard.appliance, shard.region).catch(() => undefined);
          const connections = found && 'connections' in found ? found.connections : 0;
          if (connections > 0) throw busyRegion(descriptor, shard, connections);
        }),
    );
  }

  /**
   * Connects one shard of a region being opened. A shard the descriptor does not list as live,
   * or whose appliance or region does not answer, opens lost; a connected one is MF_BUSY
   * (returned, not thrown, so the other connections can be closed).
   */
  private async openShard(
    descriptor: RegionDescriptor,
    placed: ShardPlacement,
    force: boolean,
  ): Promise<Shard | MemfabricError> {
    const lost = (reason: string): Shard =>
      Shard.lostAt({
        index: placed.index,
        appliance: placed.appliance,
        region: placed.region,
        nbd: placed.nbd,
        reason,
      });
    if (placed.state !== 'live')
      return lost(`recorded ${placed.state} at generation ${descriptor.generation}`);
    const directory = this.directory!;
    try {
      const found = await directory.getRegion(placed.appliance, placed.region);
      if (!found) return lost(`${placed.region} is gone from ${placed.appliance}`);
      // Migrated while no client had the region open: open it where it went (the flush in
      // open() then records the new home at the next generation).
      const where =
        'movedTo' in found
          ? found.movedTo
          : { appliance: placed.appliance, region: placed.region, nbd: undefined };
      if ('connections' in found && found.connections > 0 && !force) {
        return busyRegion(descriptor, placed, found.connections);
      }
      directory.add(where.appliance);
      const state = directory.state(where.appliance);
      const nbd = where.nbd ?? (state?.reachable ? state.nbd : placed.nbd);
      return await Shard.open({
        index: placed.index,
        appliance: where.appliance,
        region: where.region,
        nbd,
        requestTimeoutMs: this.requestTimeoutMs,
        tls: this.tls,
      });
    } catch (error) {
      return lost(`not reachable when the region was opened: ${(error as Error).message}`);
    }
  }
}

function busyRegion(
  descriptor: RegionDescriptor,
  shard: ShardPlacement,
  connections: number,
): MemfabricError {
  return new MemfabricError(
    ErrorCodes.BUSY,
    `fabric region ${descriptor.name} is open elsewhere: shard ${shard.index} (${shard.region} on ${shard.appliance}) ` +
      `has ${connections} NBD connection(s); close it there first, or pass force if that client is gone`,
  );
}

function describeEntry(entry: CatalogEntry): FabricRegionInfo {
  const d = entry.descriptor;
  return {
    name: d.name,
    tenant: d.tenant,
    id: d.id,
    size: d.size,
    redundancy: d.redundancy,
    generation: d.generation,
    state: d.state,
    shards: d.shards,
    shardsFound: [...entry.shardsFound].sort((a, b) => a - b),
    degraded: d.shards.some((shard) => shard.state !== 'live'),
  };
}
