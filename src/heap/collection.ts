/**
 * What the heap's two collections (HeapHashMap, HeapBTree) share: their creation options, the
 * result of their structural checks, and the limits that follow from the node size.
 */
import { invalidArgument } from '../errors.js';
import type { KeyKind } from './key-codec.js';
import type { HeapMemory } from './memory.js';
import type { ValueKind } from './value-codec.js';

export type HeapKey = string | number | Uint8Array;

/** How a collection stores its keys and values, fixed at creation. */
export interface CollectionOptions<KK extends KeyKind = KeyKind, VK extends ValueKind = ValueKind> {
  keys: KK;
  values: VK;
  /** Bytes per bucket/node. Default: the space's page size (one node = one page). 512 to 65536. */
  nodeSize?: number;
}

/** Result of a structural check: `ok` when `problems` is empty. */
export interface CheckResult {
  ok: boolean;
  problems: string[];
}

export const NODE_SIZE_MIN = 512;
export const NODE_SIZE_MAX = 65536;

/** Longest key a collection with nodes of `nodeSize` bytes accepts: a quarter node, less headers. */
export function keyMaxFor(nodeSize: number): number {
  return Math.floor(nodeSize / 4) - 16;
}

/** Longest packed msgpack value kept inline in a node; longer ones get a blob of their own. */
export function inlineMaxFor(nodeSize: number): number {
  return Math.floor(nodeSize / 8) - 2;
}

export function nodeSizeFor(memory: HeapMemory, nodeSize: number | undefined): number {
  const size = nodeSize ?? memory.space.pageSize;
  if (!Number.isInteger(size) || size < NODE_SIZE_MIN || size > NODE_SIZE_MAX) {
    throw invalidArgument(`nodeSize ${size} must be a whole number of bytes from 512 to 65536`);
  }
  return size;
}
