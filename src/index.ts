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
