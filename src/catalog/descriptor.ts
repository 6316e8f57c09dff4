/**
 * A fabric region's descriptor: what a client needs to reopen the region in another process
 * (name, size, redundancy, which appliance holds which shard), with a generation number and a
 * checksum, as a RAID member's superblock describes its array.
 *
 * Every shard carries a copy (the appliance keeps it beside the shard's region, see
 * docs/fabric.md), so a region can be found and reopened from any appliance that holds one of
 * its shards, with no service beyond the appliances. The generation grows by one with every
 * change of the shard list (a rebuild, a shard that moved): among the copies found, the highest
 * generation is the truth, and a shard that is not in it (a stale shard that came back after
 * its replacement was built) is never read.
 *
 * The checksum (xxh64 over the canonical JSON of every other field) catches a descriptor that
 * was damaged or edited by hand; a copy that fails it is ignored like a missing one.
 */
import { xxh64 } from '@node-rs/xxhash';
import type { Endpoint } from '../appliance/appliance.js';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { Redundancy } from '../fabric/external-region.js';

export const DESCRIPTOR_FORMAT = 1;
/** A serialized descriptor larger than this is refused (30 shards fit in about 6 KiB). */
export const DESCRIPTOR_BYTES_MAX = 16 * 1024;

/**
 * `creating`: shards are being made; a region left in this state by a client that died is
 * half-made and may be collected. `ready`: usable. `deleting`: being freed; never reopened.
 */
export type RegionState = 'creating' | 'ready' | 'deleting';

export interface ShardPlacement {
  index: number;
  /** The appliance's admin URL, as the fabric that placed it knew it. */
  appliance: string;
  /** The shard's region name on that appliance. */
  region: string;
  /** Where that appliance served NBD when the shard was placed (a hint; stats are the truth). */
  nbd: Endpoint;
  /**
   * `live`: holds the region's bytes. `rebuilding`: a replacement being filled (written, never
   * read; if its client dies, the next one rebuilds it again). `lost`: missed writes; never read
   * again, even if its appliance comes back.
   */
  state: 'live' | 'rebuilding' | 'lost';
}

export interface RegionDescriptor {
  format: typeof DESCRIPTOR_FORMAT;
  /** Random id of this region: two regions made under one name at different times differ. */
  id: string;
  name: string;
  tenant: string;
  size: number;
  pageSize: number;
  redundancy: Redundancy;
  generation: number;
  state: RegionState;
  shards: ShardPlacement[];
  /** Milliseconds since the epoch when the region was created (for collecting half-made ones). */
  createdAt: number;
  /** xxh64 (hex) of the canonical JSON of every other field. */
  checksum: string;
}

export type UnsealedDescriptor = Omit<RegionDescriptor, 'checksum'>;

/** JSON with object keys sorted, so equal descriptors have equal bytes whatever built them. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function checksumOf(descriptor: UnsealedDescriptor): string {
  return xxh64(Buffer.from(canonical(descriptor)))
    .toString(16)
    .padStart(16, '0');
}

/** The descriptor with its checksum. */
export function sealDescriptor(descriptor: UnsealedDescriptor): RegionDescriptor {
  const { checksum: _ignored, ...fields } = descriptor as RegionDescriptor;
  return { ...fields, checksum: checksumOf(fields) };
}

/** The same region at the next generation with `changes` applied, sealed. */
export function nextGeneration(
  descriptor: RegionDescriptor,
  changes: Partial<Pick<RegionDescriptor, 'shards' | 'state'>>,
): RegionDescriptor {
  const { checksum: _ignored, ...fields } = descriptor;
  return sealDescriptor({ ...fields, ...changes, generation: descriptor.generation + 1 });
}

/**
 * Checks that `value` is a well-formed descriptor whose checksum matches; returns it typed.
 * Throws MF_CORRUPT_DESCRIPTOR saying what is wrong (callers that scan many copies catch it and
 * skip the copy).
 */
export function parseDescriptor(value: unknown, where: string): RegionDescriptor {
  const bad = (why: string): MemfabricError =>
    new MemfabricError(
      ErrorCodes.CORRUPT_DESCRIPTOR,
      `the region descriptor on ${where} is unusable (${why}); the copies on the region's other shards are used instead`,
    );
  if (value === null || typeof value !== 'object') throw bad('not an object');
  const d = value as Partial<RegionDescriptor>;
  if (d.format !== DESCRIPTOR_FORMAT) throw bad(`format ${String(d.format)}, expected ${DESCRIPTOR_FORMAT}`);
  if (typeof d.id !== 'string' || typeof d.name !== 'string' || typeof d.tenant !== 'string') {
    throw bad('id, name or tenant missing');
  }
  if (
    !Number.isSafeInteger(d.size) ||
    !Number.isSafeInteger(d.pageSize) ||
    !Number.isSafeInteger(d.generation)
  ) {
    throw bad('size, pageSize or generation is not a whole number');
  }
  if (d.state !== 'creating' && d.state !== 'ready' && d.state !== 'deleting')
    throw bad(`state ${String(d.state)}`);
  if (!Array.isArray(d.shards) || d.shards.length === 0) throw bad('no shards');
  for (const [i, shard] of d.shards.entries()) {
    if (
      shard === null ||
      typeof shard !== 'object' ||
      shard.index !== i ||
      typeof shard.appliance !== 'string' ||
      typeof shard.region !== 'string' ||
      (shard.state !== 'live' && shard.state !== 'rebuilding' && shard.state !== 'lost')
    ) {
      throw bad(`shard ${i} is malformed`);
    }
  }
  if (typeof d.checksum !== 'string') throw bad('no checksum');
  const { checksum, ...fields } = d as RegionDescriptor;
  if (checksumOf(fields) !== checksum) throw bad('checksum mismatch');
  return d as RegionDescriptor;
}
