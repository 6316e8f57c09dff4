/**
 * Builds a page store from its spec. The spec is plain data that may have crossed a worker
 * boundary (the pager's I/O worker opens its store from one), so it is checked here like any
 * input from outside: a wrong kind or a missing field is INVALID_ARGUMENT with a message, never
 * a TypeError from deep inside a store.
 */
import { invalidArgument } from '../errors.js';
import { FabricPageStore } from './fabric-store.js';
import { FilePageStore } from './file-store.js';
import { ImagePageStore } from './image-store.js';
import { MemoryPageStore } from './memory-store.js';
import { NbdPageStore } from './nbd-store.js';
import type { PageStore, StoreSpec } from './page-store.js';
import { checkStoreGeometry } from './store-guard.js';
import { TestPageStore } from './test-store.js';

export interface OpenStoreOptions {
  /** Bytes per slot: a power of two from 512 to 65536 (the pager's page size). */
  pageSize: number;
  /** Slots in the store. */
  capacity: number;
}

export async function openPageStore(spec: StoreSpec, options: OpenStoreOptions): Promise<PageStore> {
  if (typeof options !== 'object' || options === null) {
    throw invalidArgument('openPageStore needs options { pageSize, capacity }');
  }
  checkStoreGeometry(options.pageSize, options.capacity);
  const geometry = { pageSize: options.pageSize, capacity: options.capacity };
  if (typeof spec !== 'object' || spec === null) {
    throw invalidArgument(`page store spec ${String(spec)} must be an object with a kind`);
  }
  const kind: unknown = spec.kind;
  switch (spec.kind) {
    case 'memory':
      return new MemoryPageStore(geometry);
    case 'file':
      if (spec.directory !== undefined) {
        if (typeof spec.directory !== 'string' || spec.directory === '' || spec.path !== undefined) {
          throw invalidArgument(
            "a 'file' page store takes directory (a non-empty string, for a temporary swap file) or path, not both",
          );
        }
        return FilePageStore.open({ directory: spec.directory, ...geometry });
      }
      if (typeof spec.path !== 'string' || spec.path === '') {
        throw invalidArgument(
          "a 'file' page store needs path (the swap file to create or reuse) or directory (for a temporary one)",
        );
      }
      return FilePageStore.open({ path: spec.path, ...geometry });
    case 'fabric':
      return FabricPageStore.open(spec, geometry);
    case 'image':
      return ImagePageStore.open({
        path: spec.path,
        ...geometry,
        ...(spec.base ? { base: spec.base } : {}),
        ...(spec.readOnly ? { readOnly: true } : {}),
        ...(spec.powerLoss ? { powerLoss: spec.powerLoss } : {}),
        ...(spec.failWritesAfter === undefined ? {} : { failWritesAfter: spec.failWritesAfter }),
      });
    case 'nbd':
      return NbdPageStore.open(spec, geometry);
    case 'test':
      return new TestPageStore(spec, geometry);
    default:
      throw invalidArgument(
        `page store kind ${JSON.stringify(kind)} is not one of 'memory', 'file', 'fabric', 'nbd', 'image', 'test'`,
      );
  }
}
