/**
 * What the examples in docs/heap-collections.md import as 'memfabric' until src/index.ts exports
 * the collections, plus the `memory` they take as given (a space with the test allocator).
 */
export * from '../../src/index.js';
export { HeapHashMap } from '../../src/heap/hash-map.js';
export { HeapBTree } from '../../src/heap/btree.js';
import { freshMemory } from './colls-fixtures.js';

export const memory = freshMemory();
