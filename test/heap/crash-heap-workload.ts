/**
 * The heap-level crash workload: map inserts and deletes (a HeapHashMap of msgpack values),
 * struct allocations, field writes and frees (ids kept in a HeapBTree of refs), with
 * checkpoints. Operations are drawn from a seed and from the model's current state, so the
 * writer and the checker, starting from the same recovered state, agree on every step.
 */
import { defineStruct, f64, string, u32 } from '../../src/heap/struct.js';
import type { Heap } from '../../src/heap/heap.js';
import { HeapBTree } from '../../src/heap/btree.js';
import { HeapHashMap } from '../../src/heap/hash-map.js';

export const Item = defineStruct('CrashItem', { id: u32, x: f64, tag: string(16) });
export const HEAP_BUDGET = '512KiB';

export interface Model {
  kv: Map<number, { n: number; s: string }>;
  items: Map<number, { x: number; tag: string }>;
}

export type HeapOp =
  | { kind: 'put'; key: number; value: { n: number; s: string } }
  | { kind: 'del'; key: number }
  | { kind: 'new'; id: number; x: number; tag: string }
  | { kind: 'edit'; id: number; x: number }
  | { kind: 'drop'; id: number }
  | { kind: 'checkpoint' };

export interface Collections {
  kv: HeapHashMap<number, { n: number; s: string }>;
  items: HeapBTree<number, number>;
}

/** The collections at the heap's roots, created on first use (before the first checkpoint). */
export function collections(heap: Heap): Collections {
  if (heap.root('kv') === 0) {
    heap.setRoot('kv', HeapHashMap.create(heap, { keys: 'number', values: 'msgpack' }).address);
    heap.setRoot('items', HeapBTree.create(heap, { keys: 'number', values: 'ref' }).address);
  }
  return {
    kv: HeapHashMap.open(heap, heap.root('kv'), { keys: 'number', values: 'msgpack' }),
    items: HeapBTree.open(heap, heap.root('items'), { keys: 'number', values: 'ref' }),
  };
}

/** What the heap holds now, as a model. */
export function readModel(heap: Heap, c: Collections): Model {
  const cursor = Item.cursor(heap);
  const items = new Map<number, { x: number; tag: string }>();
  for (const [id, address] of c.items.entries()) {
    cursor.at(address);
    items.set(id, { x: cursor.x, tag: cursor.tag });
  }
  return { kv: new Map(c.kv.entries()), items };
}

/** The next operation for `seed`'s generator state and the model (which it then updates). */
export function* heapOperations(seed: number, model: Model): Generator<HeapOp> {
  let x = seed >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const pick = (keys: Iterable<number>): number | undefined => {
    const sorted = [...keys].sort((a, b) => a - b);
    return sorted.length === 0 ? undefined : sorted[next() % sorted.length];
  };
  let nextId = Math.max(0, ...model.items.keys()) + 1;
  for (;;) {
    const roll = next() % 100;
    let op: HeapOp;
    if (roll < 40) op = { kind: 'put', key: next() % 400, value: { n: next(), s: 'v'.repeat(next() % 300) } };
    else if (roll < 52) op = { kind: 'del', key: pick(model.kv.keys()) ?? 0 };
    else if (roll < 70) op = { kind: 'new', id: nextId++, x: next() / 7, tag: `t${next() % 1000}` };
    else if (roll < 82) op = { kind: 'edit', id: pick(model.items.keys()) ?? -1, x: next() / 3 };
    else if (roll < 92) op = { kind: 'drop', id: pick(model.items.keys()) ?? -1 };
    else op = { kind: 'checkpoint' };
    applyToModel(model, op);
    yield op;
  }
}

function applyToModel(model: Model, op: HeapOp): void {
  if (op.kind === 'put') model.kv.set(op.key, op.value);
  else if (op.kind === 'del') model.kv.delete(op.key);
  else if (op.kind === 'new') model.items.set(op.id, { x: op.x, tag: op.tag });
  else if (op.kind === 'edit' && model.items.has(op.id)) model.items.get(op.id)!.x = op.x;
  else if (op.kind === 'drop') model.items.delete(op.id);
}

export function applyToHeap(heap: Heap, c: Collections, op: HeapOp): void {
  const cursor = Item.cursor(heap);
  if (op.kind === 'put') c.kv.set(op.key, op.value);
  else if (op.kind === 'del') c.kv.delete(op.key);
  else if (op.kind === 'new') c.items.set(op.id, Item.alloc(heap, { id: op.id, x: op.x, tag: op.tag }));
  else if (op.kind === 'edit') {
    const address = c.items.get(op.id);
    if (address !== undefined) cursor.at(address).x = op.x;
  } else if (op.kind === 'drop') {
    const address = c.items.get(op.id);
    if (address !== undefined) {
      Item.free(heap, address);
      c.items.delete(op.id);
    }
  }
}

/** The model after the first `count` operations of `seed` from `base`. */
export function heapModelAfter(seed: number, count: number, base: Model): Model {
  const model: Model = {
    kv: new Map(base.kv),
    items: new Map([...base.items].map(([id, item]) => [id, { ...item }])),
  };
  if (count === 0) return model;
  let i = 0;
  for (const _op of heapOperations(seed, model)) {
    if (++i >= count) break;
  }
  return model;
}
