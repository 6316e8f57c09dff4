export {
  Fabric,
  REQUEST_TIMEOUT_MS_DEFAULT,
  type FabricOptions,
  type AllocateOptions,
  type OpenOptions,
  type DeleteOptions,
  type FabricRegionInfo,
} from './fabric.js';
export {
  ExternalRegion,
  BATCH_STRIPES,
  shardGeometry,
  describeRedundancy,
  type Redundancy,
  type RegionHealth,
  type ScrubResult,
  type ExternalRegionStats,
  type ShardGeometry,
  type RebuildOptions,
  type RebuildProgress,
} from './external-region.js';
export type { MemoryRegion, MemoryType } from './memory-region.js';
export { LocalRegion } from './local-region.js';
export { FileRegion } from './file-region.js';
export { ApplianceDirectory, type ApplianceAccess, type ApplianceState } from './directory.js';
export { place, type PlacementRequest } from './placement.js';
export { ReedSolomonCodec, SendRuns, StripeBatch } from './codec.js';
export type { ShardState, ShardStatus } from './shard.js';
