/**
 * memfabric's public API. Everything exported here is documented in README.md and docs/;
 * anything else is internal and may change.
 */
export { MemfabricError, ErrorCodes, type ErrorCode } from './errors.js';
export { parseSize, formatSize } from './size.js';
export {
  FramePool,
  AddressSpace,
  SamePageMerger,
  EXTENT_HOLE,
  EXTENT_ZERO,
  PAGE_SIZE_DEFAULT,
  PAGE_SIZE_MIN,
  PAGE_SIZE_MAX,
  SPACE_BYTES_MAX,
  MAX_SHARING_DEFAULT,
  type FramePoolOptions,
  type AddressSpaceOptions,
  type SpaceStats,
  type MergerOptions,
  type MergerStats,
  type ScanBudget,
  type ScanResult,
} from './memory/index.js';
export {
  Appliance,
  Region,
  RegionRegistry,
  DEFAULT_REGION_NAME,
  NBD_PORT_DEFAULT,
  HTTP_PORT_DEFAULT,
  type ApplianceOptions,
  type ApplianceStats,
  type Endpoint,
  type RegionInfo,
  type RegionStats,
  type CreateRegionOptions,
} from './appliance/index.js';
export {
  NbdServer,
  NbdClient,
  NbdConnectionGroup,
  NbdRequestError,
  NbdOptionError,
  errnoForError,
  type NbdBlockSizes,
  type NbdConnectionGroupOptions,
  type NbdClientOptions,
  type NbdServerAddress,
  type NbdTransmissionFlags,
  type NbdExtent,
  type NbdExportInfo,
  type NbdExportListing,
  type NbdServerOptions,
  type NbdLimits,
  type NbdExport,
  type NbdExportDirectory,
  type NbdLogger,
  type NbdStats,
} from './nbd/index.js';
export {
  Fabric,
  ExternalRegion,
  LocalRegion,
  FileRegion,
  ReedSolomonCodec,
  StripeBatch,
  place,
  shardGeometry,
  type FabricOptions,
  type AllocateOptions,
  type Redundancy,
  type RegionHealth,
  type ScrubResult,
  type MemoryRegion,
  type MemoryType,
  type ApplianceState,
  type ShardStatus,
} from './fabric/index.js';
export { resolveRegion, type ResolvedRegion, type ResolveOptions } from './fabric/follow.js';
export {
  Pager,
  openPageStore,
  MemoryPageStore,
  FilePageStore,
  FabricPageStore,
  STORE_SIZE_DEFAULT,
  PREFETCH_DEFAULT,
  EVICT_BATCH_DEFAULT,
  type PagerOptions,
  type PagerStats,
  type PageStore,
  type StoreSpec,
  type StoreChannelStats,
} from './tier/index.js';
export { type MigrateOptions, type MigrationStatus, type MigrationState } from './appliance/migration.js';
export { type MovedTo } from './appliance/region.js';
export {
  SubAllocator,
  ChunkView,
  claimChunk,
  type Chunk,
  type ClaimRequest,
  type ClaimChunkOptions,
  type SubAllocatorOptions,
} from './fabric/suballocation.js';
