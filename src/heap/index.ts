/** The persistent heap (seed 003, seed 001): see docs/heap.md. */
export { Heap, ROOT_NAME_MAX, CHECKPOINT_INTERVAL_DEFAULT_MS, type HeapOptions, type HeapStats } from './heap.js';
export {
  HeapImage,
  HEAP_SIZE_DEFAULT,
  HEAP_BUDGET_DEFAULT,
  type HeapImageOptions,
  type HeapImageStats,
  type CheckpointReport,
  type CompactReport,
} from './image.js';
export { HeapAllocator, type AllocatorStats, type AllocatorCheckResult } from './allocator.js';
export type { HeapMemory, HeapAllocatorApi } from './memory.js';
export {
  Struct,
  defineStruct,
  STRUCT_TAG_BYTES,
  array,
  bool,
  bytes,
  f32,
  f64,
  i16,
  i32,
  i64,
  i8,
  ref,
  string,
  u16,
  u32,
  u64,
  u8,
  type ArrayCursor,
  type ArrayType,
  type BytesType,
  type CursorMethods,
  type FieldType,
  type Fields,
  type FieldLayout,
  type RefType,
  type ScalarName,
  type ScalarType,
  type StringType,
  type StructCursor,
  type StructInit,
  type StructObject,
} from './struct.js';
export {
  putValue,
  getValue,
  replaceValue,
  freeValue,
  valueByteLength,
  BlobCodec,
  BLOB_BYTES_MAX,
  type BlobCodecOptions,
} from './blob.js';
export { HeapHashMap } from './hash-map.js';
export { HeapBTree, type RangeOptions } from './btree.js';
export type { HeapKey, CollectionOptions, CheckResult as CollectionCheckResult } from './collection.js';
export type { KeyKind, KeyOf } from './key-codec.js';
export type { ValueKind, ValueOf } from './value-codec.js';
