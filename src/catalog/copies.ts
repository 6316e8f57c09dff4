/**
 * The descriptor copies the shards carry (each appliance keeps one beside each shard's
 * region): storing a new generation on every shard, reading every copy the known appliances
 * hold, and grouping copies into regions (newest generation wins). Used by the embedded
 * catalog, by fleet mode (which writes the copies too) and by garbage collection.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { ApplianceDirectory, ApplianceRegion } from '../fabric/directory.js';
import type { CatalogEntry } from './catalog.js';
import { parseDescriptor, type RegionDescriptor } from './descriptor.js';

/** A copy of a descriptor as one appliance holds it, beside the shard region it describes. */
export interface Copy {
  appliance: string;
  region: ApplianceRegion;
  descriptor: RegionDescriptor;
}

/**
 * Stores `descriptor` on the appliance of every shard that is not lost, in parallel. Resolves
 * once at least one copy is stored; MF_STALE_GENERATION if an appliance holds a newer
 * generation (another client changed the region); the first failure if no copy was stored.
 */
export async function storeCopies(
  directory: ApplianceDirectory,
  descriptor: RegionDescriptor,
): Promise<void> {
  const results = await Promise.allSettled(
    descriptor.shards
      .filter((shard) => shard.state !== 'lost')
      .map((shard) => directory.putDescriptor(shard.appliance, shard.region, descriptor)),
  );
  const stale = results.find(
    (result) =>
      result.status === 'rejected' &&
      result.reason instanceof MemfabricError &&
      result.reason.code === ErrorCodes.STALE_GENERATION,
  );
  if (stale?.status === 'rejected') throw stale.reason;
  if (results.some((result) => result.status === 'fulfilled')) return;
  const first = results.find((result) => result.status === 'rejected');
  throw first?.status === 'rejected'
    ? first.reason
    : new MemfabricError(ErrorCodes.DATA_LOST, `region ${descriptor.name} has no shard left to describe it`);
}

/**
 * Every descriptor copy on the appliances the directory knows, read in parallel. An appliance
 * that does not answer, and a copy that fails its checksum, are reported through `warn` and
 * skipped.
 */
export async function scanCopies(
  directory: ApplianceDirectory,
  warn: (message: string) => void,
): Promise<Copy[]> {
  const listings = await Promise.all(
    directory.urls.map(async (url) => {
      try {
        return { url, regions: await directory.listRegions(url) };
      } catch (error) {
        warn(`appliance ${url} did not list its regions: ${(error as Error).message}`);
        return { url, regions: [] };
      }
    }),
  );
  const copies: Copy[] = [];
  for (const { url, regions } of listings) {
    for (const region of regions) {
      if (region.descriptor === undefined) continue;
      try {
        copies.push({
          appliance: url,
          region,
          descriptor: parseDescriptor(region.descriptor, `${region.name} at ${url}`),
        });
      } catch (error) {
        warn((error as Error).message);
      }
    }
  }
  return copies;
}

/** The newest descriptor of each region id among the copies, with the shards found at it. */
export function groupNewest(copies: Copy[]): CatalogEntry[] {
  const byId = new Map<string, CatalogEntry>();
  for (const copy of copies) {
    const entry = byId.get(copy.descriptor.id);
    if (!entry || copy.descriptor.generation > entry.descriptor.generation) {
      byId.set(copy.descriptor.id, { descriptor: copy.descriptor, shardsFound: [] });
    }
  }
  for (const copy of copies) {
    const entry = byId.get(copy.descriptor.id)!;
    const shard = entry.descriptor.shards.find(
      (s) => s.appliance === copy.appliance && s.region === copy.region.name,
    );
    if (shard && !entry.shardsFound.includes(shard.index)) entry.shardsFound.push(shard.index);
  }
  return [...byId.values()];
}
