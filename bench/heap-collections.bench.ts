/**
 * Heap collections (issue 9): get/set ops/s of HeapHashMap and HeapBTree with 1 M string keys and
 * 100-byte msgpack values, and the B+tree's ordered scan, each beside a JS Map of the same records
 * (the in-memory ceiling) measured in the same run. Runs standalone too:
 * `node --import tsx bench/heap-collections.bench.ts [--quick]`.
 */
import { AddressSpace, FramePool } from '../src/index.js';
import { HeapAllocator } from '../src/heap/allocator.js';
import { HeapBTree } from '../src/heap/btree.js';
import { HeapHashMap } from '../src/heap/hash-map.js';
import type { HeapMemory } from '../src/heap/memory.js';
import type { BenchContext, Suite } from './harness.js';

function memory(): HeapMemory {
  const pool = new FramePool({ pageSize: 4096, capacity: '1GiB' });
  const space = new AddressSpace(pool, { size: '16GiB' });
  // The heap's real allocator, formatted from the second page (page 0 left as a header would be).
  return { space, allocator: HeapAllocator.format(space, { base: 4096 }) };
}

interface Store {
  set(key: string, value: string): unknown;
  get(key: string): string | undefined;
}

function rate(ops: number, body: () => void): number {
  const start = performance.now();
  body();
  return ops / ((performance.now() - start) / 1000);
}

async function run(context: BenchContext): Promise<void> {
  const count = context.quick ? 200_000 : 1_000_000;
  const keys = Array.from({ length: count }, (_, i) => `user:${(i * 2654435761) % 4294967296}`);
  const value = 'v'.repeat(97); // packs to 99 bytes
  const order = Array.from({ length: count }, (_, i) => (i * 7919) % count);
  const fill = (store: Store) => rate(count, () => keys.forEach((key) => store.set(key, value)));
  // Reads are timed `repeats` times (the first run warms the JIT up); the best run counts.
  const read = (store: Store) => {
    let best = 0;
    for (let r = 0; r < Math.max(2, context.repeats); r++) {
      best = Math.max(
        best,
        rate(count, () => {
          for (const i of order) if (store.get(keys[i]!) === undefined) throw new Error('missing');
        }),
      );
    }
    return best;
  };
  const scan = (entries: () => Iterable<[string, string]>) => {
    let best = 0;
    for (let r = 0; r < Math.max(2, context.repeats); r++) {
      let rows = 0;
      best = Math.max(
        best,
        rate(count, () => {
          for (const entry of entries()) if (entry[1].length === 97) rows++;
        }),
      );
      if (rows !== count) throw new Error('scan lost rows');
    }
    return best;
  };
  // Warm every path up on small throwaway stores first, so insert rates are not JIT start-up.
  const warm = keys.slice(0, 20_000);
  const warmMap = new Map<string, string>();
  const warmHash = HeapHashMap.create<'string', 'msgpack', string>(memory(), {
    keys: 'string',
    values: 'msgpack',
  });
  const warmTree = HeapBTree.create<'string', 'msgpack', string>(memory(), {
    keys: 'string',
    values: 'msgpack',
  });
  for (const store of [warmMap, warmHash, warmTree] as Store[]) {
    for (const key of warm) store.set(key, value);
    for (const key of warm) store.get(key);
  }

  const map = new Map<string, string>();
  const mapSet = fill(map);
  const mapGet = read(map);
  const hash = HeapHashMap.create<'string', 'msgpack', string>(memory(), {
    keys: 'string',
    values: 'msgpack',
  });
  const hashSet = fill(hash);
  const hashGet = read(hash);
  const tree = HeapBTree.create<'string', 'msgpack', string>(memory(), { keys: 'string', values: 'msgpack' });
  const treeSet = fill(tree);
  const treeGet = read(tree);
  const treeScan = scan(() => tree.range());
  const mapScan = scan(() => map);
  const row = (id: string, unit: string, v: number, base: number) =>
    context.record({
      id,
      unit,
      value: v,
      baseline: 'JS Map, same records',
      baselineValue: base,
      higherIsBetter: true,
    });
  row(`heap hash map set, ${count} string keys, 100 B msgpack values`, 'ops/s', hashSet, mapSet);
  row(`heap hash map get (random)`, 'ops/s', hashGet, mapGet);
  row(`heap B+tree set (keys in hash order)`, 'ops/s', treeSet, mapSet);
  row(`heap B+tree get (random)`, 'ops/s', treeGet, mapGet);
  row(`heap B+tree ordered range scan`, 'rows/s', treeScan, mapScan);
}

export const heapCollectionsSuite: Suite = { name: 'heap-collections', run };

if (import.meta.url === `file://${process.argv[1]}`) {
  await run({
    quick: process.argv.includes('--quick'),
    repeats: 1,
    record: (row) =>
      console.log(
        `${row.id}: ${row.value.toFixed(0)} ${row.unit} (baseline ${row.baseline}: ${row.baselineValue.toFixed(0)}, ratio ${(row.value / row.baselineValue).toFixed(3)})`,
      ),
    log: console.log,
  });
}
