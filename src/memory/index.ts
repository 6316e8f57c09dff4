export {
  FramePool,
  PAGE_SIZE_DEFAULT,
  PAGE_SIZE_MAX,
  PAGE_SIZE_MIN,
  type FramePoolOptions,
} from './frame-pool.js';
export {
  AddressSpace,
  EXTENT_HOLE,
  EXTENT_ZERO,
  SPACE_BYTES_MAX,
  type AddressSpaceOptions,
  type SpaceStats,
  type WriteGate,
} from './address-space.js';
export {
  SamePageMerger,
  MAX_SHARING_DEFAULT,
  type MergerOptions,
  type MergerStats,
  type ScanBudget,
  type ScanResult,
  type BackgroundOptions,
} from './merger.js';
export { CPU_SHARE_DEFAULT, CPU_SHARE_MIN, checkCpuShare, checkSliceMs } from './merger-pace.js';
