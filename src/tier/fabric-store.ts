/**
 * A page store in external memory: one fabric region on memory appliances, slot s at byte
 * s · pageSize. The region may be plain, mirrored or Reed–Solomon coded, so swap can survive
 * the loss of an appliance (seed 001's external memory as seed 003's backing store).
 *
 * The store is a thin mapping: read → readInto, write → write, discard → trim (appliances free
 * the pages), flush → the region's flush (every shard's NBD flush). The fabric page size is the
 * store's, so a coded region's stripes are whole slots. Whatever goes wrong below — a lost
 * appliance beyond the redundancy (DATA_LOST), a timeout, a closed connection — reaches the
 * pager as STORE_FAILED with the fabric's error as `cause`; argument errors are the caller's
 * and keep their codes.
 */
import { randomBytes } from 'node:crypto';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { describeRedundancy } from '../fabric/external-region.js';
import { Fabric } from '../fabric/fabric.js';
import type { MemoryRegion } from '../fabric/memory-region.js';
import type { PageStore, StoreSpec } from './page-store.js';
import { StoreGuard, checkStoreGeometry, storeFailed } from './store-guard.js';

export type FabricStoreSpec = Extract<StoreSpec, { kind: 'fabric' }>;

/** Region name prefix when the spec gives none. */
export const FABRIC_STORE_NAME_DEFAULT = 'swap';

export class FabricPageStore implements PageStore {
  readonly name: string;
  readonly pageSize: number;
  readonly capacity: number;
  /** The region holding the slots (for its health and statistics). */
  readonly region: MemoryRegion;
  private readonly fabric: Fabric;
  private readonly guard: StoreGuard;

  private constructor(
    fabric: Fabric,
    region: MemoryRegion,
    name: string,
    pageSize: number,
    capacity: number,
  ) {
    this.fabric = fabric;
    this.region = region;
    this.name = name;
    this.pageSize = pageSize;
    this.capacity = capacity;
    this.guard = new StoreGuard(name, pageSize, capacity);
  }

  /** Allocates the region (capacity · pageSize bytes) on the spec's appliances. */
  static async open(
    spec: FabricStoreSpec,
    options: { pageSize: number; capacity: number },
  ): Promise<FabricPageStore> {
    checkStoreGeometry(options.pageSize, options.capacity);
    const { pageSize, capacity } = options;
    if (
      !Array.isArray(spec.appliances) ||
      spec.appliances.length === 0 ||
      !spec.appliances.every((url) => typeof url === 'string')
    ) {
      throw invalidArgument('a fabric page store needs appliances: a non-empty list of admin URLs');
    }
    const redundancy = spec.redundancy ?? 'none';
    if (redundancy !== 'none' && (typeof redundancy !== 'object' || redundancy === null)) {
      throw invalidArgument(
        `fabric page store redundancy ${JSON.stringify(redundancy)} must be 'none', { copies } or { data, parity }`,
      );
    }
    const timeout = spec.requestTimeoutMs;
    if (timeout !== undefined && !(typeof timeout === 'number' && Number.isFinite(timeout) && timeout > 0)) {
      throw invalidArgument(
        `fabric page store requestTimeoutMs ${String(timeout)} must be a positive number`,
      );
    }
    const prefix = spec.name ?? FABRIC_STORE_NAME_DEFAULT;
    const regionName = `${prefix}-${randomBytes(4).toString('hex')}`;
    const name = `fabric ${regionName} (${describeRedundancy(redundancy)})`;
    const fabric = new Fabric({
      appliances: spec.appliances,
      pageSize,
      ...(timeout === undefined ? {} : { requestTimeoutMs: timeout }),
      ...(spec.tenant === undefined ? {} : { tenant: spec.tenant }),
      ...(spec.token === undefined ? {} : { token: spec.token }),
      ...(spec.ca === undefined ? {} : { ca: spec.ca }),
    });
    try {
      const region = await fabric.allocate({
        size: capacity * pageSize,
        redundancy,
        prefer: 'external',
        name: regionName,
      });
      return new FabricPageStore(fabric, region, name, pageSize, capacity);
    } catch (error) {
      await fabric.close();
      throw mapError(name, 'allocating the region', error);
    }
  }

  async read(slot: number, dst: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, dst);
    try {
      await this.region.readInto(slot * this.pageSize, dst);
    } catch (error) {
      throw mapError(this.name, 'read', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, src);
    try {
      await this.region.write(slot * this.pageSize, src);
    } catch (error) {
      throw mapError(this.name, 'write', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async discard(slot: number): Promise<void> {
    this.guard.enter(slot);
    try {
      await this.region.trim(slot * this.pageSize, this.pageSize);
    } catch (error) {
      throw mapError(this.name, 'discard', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async flush(): Promise<void> {
    this.guard.enterAll();
    try {
      await this.region.flush();
    } catch (error) {
      throw mapError(this.name, 'flush', error);
    } finally {
      this.guard.leave();
    }
  }

  /** Deletes the region on its appliances (swap is scratch) and closes the fabric. */
  close(): Promise<void> {
    return this.guard.close(async () => {
      try {
        await this.region.close();
      } catch (error) {
        throw mapError(this.name, 'close', error);
      } finally {
        await this.fabric.close();
      }
    });
  }
}

/** Argument errors are the caller's to see as they are; anything else is the store failing. */
function mapError(name: string, what: string, error: unknown, slot?: number): unknown {
  if (
    error instanceof MemfabricError &&
    (error.code === ErrorCodes.INVALID_ARGUMENT || error.code === ErrorCodes.OUT_OF_RANGE)
  ) {
    return error;
  }
  return storeFailed(name, what, error, slot);
}
