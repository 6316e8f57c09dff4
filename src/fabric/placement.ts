/**
 * Placement: which appliances hold the shards of a new region. Each shard of a stripe goes to a
 * different appliance (so losing one appliance loses at most one shard of any stripe), chosen
 * by "power of two choices": pick two candidates at random, keep the one with more free memory.
 * That spreads load almost as evenly as always taking the emptiest, without sending every
 * concurrent allocation to the same appliance.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { ApplianceState } from './directory.js';

export interface PlacementRequest {
  shards: number;
  /** Bytes each shard may hold. */
  shardBytes: number;
  /** Appliances not to use (already holding a shard of this region, or known bad). */
  exclude?: ReadonlySet<string>;
  /** Accept appliances with less free memory than shardBytes (regions are allocated lazily). */
  overcommit?: boolean;
  random?: () => number;
}

export function place(appliances: ApplianceState[], request: PlacementRequest): ApplianceState[] {
  const random = request.random ?? Math.random;
  const candidates = appliances.filter(
    (a) =>
      a.reachable &&
      !request.exclude?.has(a.url) &&
      (request.overcommit || a.freeBytes >= request.shardBytes),
  );
  if (candidates.length < request.shards) {
    const reachable = appliances.filter((a) => a.reachable).length;
    throw new MemfabricError(
      ErrorCodes.PLACEMENT_FAILED,
      `need ${request.shards} appliances with ${request.shardBytes} bytes free each (one per shard), but only ` +
        `${candidates.length} of ${appliances.length} qualify (${reachable} reachable); add appliances, free memory, ` +
        'or ask for less redundancy',
    );
  }
  const chosen: ApplianceState[] = [];
  const pool = [...candidates];
  while (chosen.length < request.shards) {
    const a = Math.floor(random() * pool.length);
    let b = Math.floor(random() * (pool.length - 1));
    if (b >= a) b++;
    const pick = pool.length === 1 || pool[a]!.freeBytes >= pool[b]!.freeBytes ? a : b;
    chosen.push(pool[pick]!);
    pool.splice(pick, 1);
  }
  return chosen;
}
