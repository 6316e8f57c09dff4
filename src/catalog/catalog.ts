/**
 * Where a fabric keeps its regions' descriptors. Two kinds:
 *
 *   embedded (the default, no service beyond the appliances): each shard's appliance keeps a
 *            copy of the descriptor beside the shard's region; the catalog is the union of the
 *            copies on the appliances the fabric knows, newest generation wins.
 *   etcd     (fleet mode): one key per region in etcd, changed only by transactions that compare
 *            the key's revision, so two clients never make conflicting changes. The shards
 *            still carry their copies, so the embedded view stays true too.
 *
 * Every method may throw MF_CATALOG_UNAVAILABLE (etcd unreachable) besides what it lists.
 */
import type { RegionDescriptor } from './descriptor.js';

/** Which region: its name under its tenant, and its id (the name may be reused later). */
export type RegionRef = Pick<RegionDescriptor, 'tenant' | 'name' | 'id'>;

/** A descriptor as found, with what a caller needs to judge it. */
export interface CatalogEntry {
  descriptor: RegionDescriptor;
  /** Shards (by index) whose appliance holds a copy at this generation (embedded: as listed). */
  shardsFound: number[];
}

export interface Catalog {
  readonly kind: 'embedded' | 'etcd';
  /**
   * Records a new region under its (tenant, name), in state `creating`, before any shard is made.
   * MF_ALREADY_EXISTS if the name is taken (by a region in any state).
   */
  create(descriptor: RegionDescriptor): Promise<void>;
  /**
   * Replaces the descriptor with `next` (next.generation must be current + 1, same id).
   * MF_STALE_GENERATION if the stored generation is not next.generation - 1 (someone else
   * changed it), MF_NOT_FOUND if the region is gone.
   */
  update(next: RegionDescriptor): Promise<void>;
  /** The newest descriptor of (tenant, name), or undefined. */
  get(tenant: string, name: string): Promise<CatalogEntry | undefined>;
  /** Every region (every tenant when `tenant` is undefined), newest generation of each. */
  list(tenant?: string): Promise<CatalogEntry[]>;
  /**
   * Forgets the region with this id (its shards are freed by the caller first): its name is
   * free again. No error if absent or if the name now belongs to another region.
   */
  remove(region: RegionRef): Promise<void>;
  close(): Promise<void>;
}
