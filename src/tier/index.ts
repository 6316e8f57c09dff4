export {
  Pager,
  STORE_SIZE_DEFAULT,
  PREFETCH_DEFAULT,
  EVICT_BATCH_DEFAULT,
  type PagerOptions,
  type PagerStats,
} from './pager.js';
export type { PageStore, StoreSpec, NbdStoreTls } from './page-store.js';
export { openPageStore } from './open-store.js';
export { MemoryPageStore } from './memory-store.js';
export { FilePageStore } from './file-store.js';
export { FabricPageStore } from './fabric-store.js';
export {
  NbdPageStore,
  inspectNbdStore,
  readSlots,
  type NbdStoreSpec,
  type NbdStoreExport,
} from './nbd-store.js';
export type { StoreChannelStats } from './store-channel.js';
