/**
 * Rebalancing when an appliance joins the fleet: the controller moves shards from the fullest
 * appliances to the new one with the appliances' own migration (pre-copy while clients keep
 * writing, a short blackout; docs/appliance.md), until the new one holds its share.
 *
 *   planRebalance  which shards to move (pure: the catalog's regions and the live appliances in,
 *                  moves out), so the rule is testable on its own;
 *   moveShard      one move: start the migration, wait for it to end, and see that the
 *                  region's descriptor records the new home. A region a client has open is
 *                  recorded by that client (it follows its shard and publishes the next
 *                  generation); one nobody has open is reopened by the controller, which
 *                  follows the shard the same way, and detached.
 *
 * The rule: only `ready` regions with every shard live are touched; a region never gets two
 * shards on one appliance; a shard moves only from an appliance holding at least two more
 * shards than the new one, and the new one takes at most its share (total shards over live
 * appliances, rounded down).
 */
import { setTimeout as delay } from 'node:timers/promises';
import { adminRequest } from '../appliance/admin-client.js';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { ApplianceDirectory } from '../fabric/directory.js';
import type { Fabric } from '../fabric/fabric.js';
import type { CatalogEntry } from './catalog.js';

/** How long one shard's migration may take before the move is given up (it keeps running). */
const MOVE_MS_MAX = 120_000;
const POLL_MS = 50;

export interface ShardMove {
  tenant: string;
  name: string;
  shard: number;
  region: string;
  from: string;
  to: string;
}

/** The moves that give `joined` its share of the live shards (see the rule above). */
export function planRebalance(
  entries: CatalogEntry[],
  live: ReadonlySet<string>,
  joined: string,
): ShardMove[] {
  if (!live.has(joined)) return [];
  const count = new Map<string, number>([...live].map((url) => [url, 0]));
  const movable: Array<{ entry: CatalogEntry; index: number }> = [];
  for (const entry of entries) {
    const d = entry.descriptor;
    const healthy = d.state === 'ready' && d.shards.every((s) => s.state === 'live' && live.has(s.appliance));
    for (const shard of d.shards) {
      if (shard.state === 'live' && live.has(shard.appliance)) {
        count.set(shard.appliance, count.get(shard.appliance)! + 1);
      }
    }
    if (healthy && !d.shards.some((s) => s.appliance === joined)) {
      for (const shard of d.shards) movable.push({ entry, index: shard.index });
    }
  }
  const total = [...count.values()].reduce((a, b) => a + b, 0);
  const share = Math.floor(total / live.size);
  const moves: ShardMove[] = [];
  const moved = new Set<string>(); // region ids already given a shard on `joined`
  while (count.get(joined)! < share) {
    // The fullest appliance that still has a movable shard of a region not yet moved.
    let best: { entry: CatalogEntry; index: number } | undefined;
    for (const candidate of movable) {
      const d = candidate.entry.descriptor;
      if (moved.has(d.id)) continue;
      const from = d.shards[candidate.index]!.appliance;
      if (count.get(from)! < count.get(joined)! + 2) continue;
      if (!best || count.get(from)! > count.get(best.entry.descriptor.shards[best.index]!.appliance)!)
        best = candidate;
    }
    if (!best) break;
    const d = best.entry.descriptor;
    const shard = d.shards[best.index]!;
    moved.add(d.id);
    count.set(shard.appliance, count.get(shard.appliance)! - 1);
    count.set(joined, count.get(joined)! + 1);
    moves.push({
      tenant: d.tenant,
      name: d.name,
      shard: shard.index,
      region: shard.region,
      from: shard.appliance,
      to: joined,
    });
  }
  return moves;
}

/**
 * Moves one shard and waits until the region's descriptor records its new home (through its
 * owner, or by reopening it here when nobody has it open). Throws what went wrong.
 */
export async function moveShard(
  move: ShardMove,
  directory: ApplianceDirectory,
  fabric: Fabric,
  options: {
    token?: string;
    readPlacement: () => Promise<{ appliance: string; region: string } | undefined>;
  },
): Promise<void> {
  const source = directory.target(move.from);
  const owned = await regionOpen(move, directory, fabric);
  await adminRequest(source, 'POST', `/v1/regions/${encodeURIComponent(move.region)}/migrate`, {
    target: move.to,
    ...(options.token !== undefined ? { targetToken: options.token } : {}),
  });
  const deadline = Date.now() + MOVE_MS_MAX;
  for (;;) {
    const status = await adminRequest<{ state: string; error?: { message?: string } }>(
      source,
      'GET',
      `/v1/regions/${encodeURIComponent(move.region)}/migration`,
    );
    if (status.state === 'done') break;
    if (status.state === 'failed') {
      throw new MemfabricError(
        ErrorCodes.MIGRATING,
        `moving shard ${move.shard} of ${move.name} to ${move.to} failed: ${status.error?.message ?? 'unknown'}`,
      );
    }
    if (Date.now() > deadline) {
      throw new MemfabricError(
        ErrorCodes.MIGRATING,
        `moving shard ${move.shard} of ${move.name} took over ${MOVE_MS_MAX} ms`,
      );
    }
    await delay(POLL_MS);
  }
  if (!owned) {
    // Nobody has it open: reopen it here (open follows the moved shard, and its first flush
    // publishes the new home), then let go.
    const region = await fabric.open(move.name, { tenant: move.tenant });
    await region.detach();
  }
  // Either way, the catalog must name the new home before the move counts as done.
  while (Date.now() < deadline) {
    const now = await options.readPlacement();
    if (now && now.appliance === move.to) return;
    await delay(POLL_MS);
  }
  throw new MemfabricError(
    ErrorCodes.MIGRATING,
    `shard ${move.shard} of ${move.name} moved to ${move.to}, but its owner has not recorded it yet`,
  );
}

/** Whether a client has the region open (a shard with NBD connections). */
async function regionOpen(move: ShardMove, directory: ApplianceDirectory, fabric: Fabric): Promise<boolean> {
  const [info] = (await fabric.list({ tenant: move.tenant })).filter((r) => r.name === move.name);
  if (!info) return false;
  const found = await Promise.all(
    info.shards.map((s) => directory.getRegion(s.appliance, s.region).catch(() => undefined)),
  );
  return found.some((region) => region !== undefined && 'connections' in region && region.connections > 0);
}
