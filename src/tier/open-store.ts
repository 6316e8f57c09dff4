/**
 * Builds a page store from its spec. The spec is plain data that may have crossed a worker
 * boundary (the pager's I/O worker opens its store from one), so it is checked here like any
 * input from outside: a wrong kind or a missing field is INVALID_ARGUMENT with a message, never
 * a TypeError from deep inside a store.
 */
import { invalidArgument } from '../errors.js';
import type { PageStore, StoreSpec } from './page-store.js';
import { checkStoreGeometry } from './store-guard.js';

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
    // Each store's module is loaded when a spec names it: the pager's worker thread starts by
    // opening its store, and loading every store (the fabric's and NBD clients among them)
    // would cost each start, a heap's reopen included, tens of milliseconds.
    case 'memory': {
      const { MemoryPageStore } = await import('./memory-store.js');
      return new MemoryPageStore(geometry);
    }
    case 'file': {
      if (spec.directory !== undefined) {
        if (typeof spec.directory !== 'string' || spec.directory === '' || spec.path !== undefined) {
          throw invalidArgument(
            "a 'file' page store takes directory (a non-empty string, for a temporary swap file) or path, not both",
          );
        }
        const { FilePageStore } = await import('./file-store.js');
        return FilePageStore.open({ directory: spec.directory, ...geometry });
      }
      if (typeof spec.path !== 'string' || spec.path === '') {
        throw invalidArgument(
          "a 'file' page store needs path (the swap file to create or reuse) or directory (for a temporary one)",
        );
      }
      const { FilePageStore } = await import('./file-store.js');
      return FilePageStore.open({ path: spec.path, ...geometry });
    }
    case 'fabric': {
      const { FabricPageStore } = await import('./fabric-store.js');
      return FabricPageStore.open(spec, geometry);
    }
    case 'image': {
      const { ImagePageStore } = await import('./image-store.js');
      return ImagePageStore.open({
        path: spec.path,
        ...geometry,
        ...(spec.base ? { base: spec.base } : {}),
        ...(spec.readOnly ? { readOnly: true } : {}),
        ...(spec.powerLoss ? { powerLoss: spec.powerLoss } : {}),
        ...(spec.failWritesAfter === undefined ? {} : { failWritesAfter: spec.failWritesAfter }),
      });
    }
    case 'nbd': {
      const { NbdPageStore } = await import('./nbd-store.js');
      return NbdPageStore.open(spec, geometry);
    }
    case 'migration-source': {
      const { MigrationSourceStore } = await import('./migration-source-store.js');
      return MigrationSourceStore.open(spec, geometry);
    }
    case 'test': {
      const { TestPageStore } = await import('./test-store.js');
      return new TestPageStore(spec, geometry);
    }
    default:
      throw invalidArgument(
        `page store kind ${JSON.stringify(kind)} is not one of 'memory', 'file', 'fabric', 'nbd', 'image', 'migration-source', 'test'`,
      );
  }
}
