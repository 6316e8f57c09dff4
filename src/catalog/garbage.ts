/**
 * What fabric regions leave behind on the appliances, found from the descriptor copies the
 * shards carry, and collected (`fabric.collect()`, `memfabric fabric gc`):
 *
 *   stale      a shard the region's newest generation no longer uses: replaced by a rebuild
 *              while its appliance was away, or recorded lost. Never read; only its memory.
 *   half-made  a region still `creating` after the grace period, none of its shards connected:
 *              its client died while allocating it.
 *   deleting   a region being deleted whose delete did not finish (an appliance was down).
 *   orphan     a `ready` region whose name no longer belongs to it in the catalog and of which
 *              too few shards are left to read it (a close that could not reach a lost shard's
 *              appliance, which came back later). Its bytes cannot be read anyway.
 *
 * A shard with an NBD connection is never collected: someone is using it.
 */
import type { ApplianceDirectory } from '../fabric/directory.js';
import { shardGeometry } from '../fabric/external-region.js';
import type { Catalog } from './catalog.js';
import { groupNewest, scanCopies, type Copy } from './copies.js';
import type { RegionDescriptor } from './descriptor.js';

export type GarbageKind = 'stale' | 'half-made' | 'deleting' | 'orphan';

export interface GarbageShard {
  kind: GarbageKind;
  /** The fabric region (tenant/name, id) the shard belonged to. */
  tenant: string;
  name: string;
  id: string;
  appliance: string;
  region: string;
  /** The shard's size on its appliance (null when the appliance could not read it). */
  bytes: number | null;
}

export interface CollectResult {
  collected: GarbageShard[];
  /** Shards found as garbage that could not be deleted, with why. */
  failed: Array<GarbageShard & { error: string }>;
}

export interface GarbageOptions {
  halfMadeGraceMs: number;
  warn: (message: string) => void;
  now?: number;
}

/** The garbage on the appliances the directory knows (nothing is deleted). */
export async function findGarbage(
  directory: ApplianceDirectory,
  catalog: Catalog,
  options: GarbageOptions,
): Promise<GarbageShard[]> {
  const now = options.now ?? Date.now();
  const all = await scanCopies(directory, options.warn);
  const copies = all.filter((copy) => copy.region.connections === 0);
  const garbage: GarbageShard[] = [];
  const add = (kind: GarbageKind, copy: Copy, d: RegionDescriptor): void => {
    garbage.push({
      kind,
      tenant: d.tenant,
      name: d.name,
      id: d.id,
      appliance: copy.appliance,
      region: copy.region.name,
      bytes: copy.region.size,
    });
  };
  for (const entry of groupNewest(all)) {
    const newest = entry.descriptor;
    const mine = copies.filter((copy) => copy.descriptor.id === newest.id);
    const connected = all.some((copy) => copy.descriptor.id === newest.id && copy.region.connections > 0);
    const owner = catalog.kind === 'etcd' ? await catalog.get(newest.tenant, newest.name) : undefined;
    for (const copy of mine) {
      const placed = newest.shards.find(
        (s) => s.appliance === copy.appliance && s.region === copy.region.name,
      );
      if (newest.state === 'deleting') add('deleting', copy, newest);
      else if (newest.state === 'creating') {
        if (!connected && now - newest.createdAt >= options.halfMadeGraceMs) add('half-made', copy, newest);
      } else if (!placed || placed.state === 'lost') add('stale', copy, newest);
      else if (orphaned(entry.shardsFound.length, newest, owner?.descriptor)) add('orphan', copy, newest);
    }
  }
  return garbage;
}

/** A ready region too incomplete to read, whose name the catalog gives to another region (or none). */
function orphaned(found: number, descriptor: RegionDescriptor, owner: RegionDescriptor | undefined): boolean {
  const { k, mode } = shardGeometry(descriptor.redundancy, descriptor.size, descriptor.pageSize);
  const needed = mode === 'coded' ? k : 1;
  if (found >= needed) return false;
  return owner === undefined || owner.id !== descriptor.id;
}

/** Deletes every garbage shard (and, for regions with nothing left, their catalog entries). */
export async function collectGarbage(
  directory: ApplianceDirectory,
  catalog: Catalog,
  options: GarbageOptions,
): Promise<CollectResult> {
  const garbage = await findGarbage(directory, catalog, options);
  const result: CollectResult = { collected: [], failed: [] };
  await Promise.all(
    garbage.map(async (shard) => {
      try {
        await directory.deleteRegion(shard.appliance, shard.region);
        result.collected.push(shard);
      } catch (error) {
        result.failed.push({ ...shard, error: (error as Error).message });
      }
    }),
  );
  // Half-made and deleting regions whose every shard is gone give their name back.
  const finished = new Map<string, GarbageShard>();
  for (const shard of result.collected) {
    if (shard.kind === 'half-made' || shard.kind === 'deleting') finished.set(shard.id, shard);
  }
  for (const shard of result.failed) finished.delete(shard.id);
  for (const shard of finished.values()) {
    const entry = await catalog.get(shard.tenant, shard.name).catch(() => undefined);
    if (entry && entry.descriptor.id === shard.id) await catalog.remove(entry.descriptor);
    else if (!entry && catalog.kind === 'embedded') {
      // The embedded catalog's name claims outlive the shards: release them by id.
      await catalog.remove(shard);
    }
  }
  return result;
}

/**
 * Frees a region that is half-made (still `creating` after the grace period, no shard
 * connected): its shards, then its catalog entry. Resolves true when it did. Fleet mode calls
 * this when a name is refused because such a region holds it (the embedded catalog does the
 * same through its name claims).
 */
export async function collectIfHalfMade(
  directory: ApplianceDirectory,
  catalog: Catalog,
  descriptor: RegionDescriptor,
  halfMadeGraceMs: number,
): Promise<boolean> {
  if (descriptor.state !== 'creating' || Date.now() - descriptor.createdAt < halfMadeGraceMs) return false;
  const found = await Promise.all(
    descriptor.shards.map((shard) =>
      directory.getRegion(shard.appliance, shard.region).catch(() => undefined),
    ),
  );
  if (found.some((region) => region !== undefined && 'connections' in region && region.connections > 0)) {
    return false;
  }
  await Promise.all(
    descriptor.shards.map((shard, i) =>
      found[i] === undefined ? undefined : directory.deleteRegion(shard.appliance, shard.region),
    ),
  );
  await catalog.remove(descriptor);
  return true;
}
