/**
 * Heap values (issue 9): struct field reads and writes through cursors beside plain DataView
 * access to a Buffer of the same layout, and msgpack blob put/get beside msgpackr pack/unpack
 * alone. The allocator here is a bump pointer that does no bookkeeping, so the figures are the
 * values' own cost; the heap's real allocator adds its alloc/free on top of put.
 *
 * Runs in `npm run bench` once registered in bench/run.ts, or alone:
 *   node --import tsx bench/heap-values.bench.ts [--quick]
 */
import { Packr } from 'msgpackr';
import { AddressSpace, FramePool } from '../src/index.js';
import { BlobCodec, freeValue, getValue, putValue } from '../src/heap/blob.js';
import type { HeapAllocatorApi, HeapMemory } from '../src/heap/memory.js';
import { defineStruct, f64, i32, u16, u32 } from '../src/heap/struct.js';
import { interleaved, timeMs, type BenchContext, type Suite } from './harness.js';

/** Bump allocation, frees ignored: measures the values, not an allocator. */
class BumpAllocator implements HeapAllocatorApi {
  private next = 16;
  private readonly sizes = new Map<number, number>();
  alloc(bytes: number): number {
    const address = this.next;
    this.next += Math.ceil(Math.max(bytes, 16) / 16) * 16;
    this.sizes.set(address, bytes);
    return address;
  }
  free(address: number): void {
    this.sizes.delete(address);
  }
  realloc(address: number, bytes: number): number {
    return bytes <= this.usableSize(address) ? address : this.alloc(bytes);
  }
  usableSize(address: number): number {
    return Math.ceil(Math.max(this.sizes.get(address) ?? 0, 16) / 16) * 16;
  }
  reset(): void {
    this.next = 16;
    this.sizes.clear();
  }
}

function memory(): HeapMemory & { allocator: BumpAllocator } {
  const pool = new FramePool({ pageSize: 4096, capacity: '256MiB' });
  return { space: new AddressSpace(pool, { size: '4GiB' }), allocator: new BumpAllocator() };
}

const Record = defineStruct('BenchRecord', { id: u32, score: f64, delta: i32, flags: u16 });

function structFigures(context: BenchContext): void {
  const heap = memory();
  const count = 16_384; // 16k records of 32 bytes: 512 KiB, resident
  const addresses = new Float64Array(count);
  for (let i = 0; i < count; i++)
    addresses[i] = Record.alloc(heap, { id: i, score: i / 3, delta: -i, flags: i & 0xffff });
  const first = addresses[0]!;
  const span = addresses[count - 1]! + Record.size - first;
  const plain = Buffer.alloc(span);
  heap.space.read(first, plain);
  const view = new DataView(plain.buffer, plain.byteOffset, plain.byteLength);
  const offId = Record.offsetOf('id');
  const offScore = Record.offsetOf('score');
  const rounds = context.quick ? 40 : 100;
  const ops = rounds * count * 2; // two fields per record
  const mops = (ms: number): number => ops / (ms / 1000) / 1e6;
  const cursor = Record.cursor(heap);
  let sink = 0;

  const [readOurs, readBase] = interleaved(
    context.repeats,
    () =>
      mops(
        timeMs(() => {
          for (let r = 0; r < rounds; r++)
            for (let i = 0; i < count; i++) {
              cursor.at(addresses[i]!);
              sink += cursor.id + cursor.score;
            }
        }),
      ),
    () =>
      mops(
        timeMs(() => {
          for (let r = 0; r < rounds; r++)
            for (let i = 0; i < count; i++) {
              const at = addresses[i]! - first;
              sink += view.getUint32(at + offId, true) + view.getFloat64(at + offScore, true);
            }
        }),
      ),
  );
  context.record({
    id: 'struct field read (cursor.at + 2 fields, 16k records)',
    unit: 'M fields/s',
    value: readOurs,
    baseline: 'DataView reads of a Buffer, same layout',
    baselineValue: readBase,
    higherIsBetter: true,
  });

  const [writeOurs, writeBase] = interleaved(
    context.repeats,
    () =>
      mops(
        timeMs(() => {
          for (let r = 0; r < rounds; r++)
            for (let i = 0; i < count; i++) {
              cursor.at(addresses[i]!);
              cursor.id = r;
              cursor.score = i;
            }
        }),
      ),
    () =>
      mops(
        timeMs(() => {
          for (let r = 0; r < rounds; r++)
            for (let i = 0; i < count; i++) {
              const at = addresses[i]! - first;
              view.setUint32(at + offId, r, true);
              view.setFloat64(at + offScore, i, true);
            }
        }),
      ),
  );
  context.record({
    id: 'struct field write (cursor.at + 2 fields, 16k records)',
    unit: 'M fields/s',
    value: writeOurs,
    baseline: 'DataView writes of a Buffer, same layout',
    baselineValue: writeBase,
    higherIsBetter: true,
  });

  // One positioned cursor, one field: the accessor alone.
  const reads = rounds * count * 2;
  cursor.at(addresses[7]!);
  const at7 = addresses[7]! - first + offScore;
  const [oneOurs, oneBase] = interleaved(
    context.repeats,
    () =>
      reads /
      timeMs(() => {
        for (let i = 0; i < reads; i++) sink += cursor.score;
      }) /
      1e3,
    () =>
      reads /
      timeMs(() => {
        for (let i = 0; i < reads; i++) sink += view.getFloat64(at7, true);
      }) /
      1e3,
  );
  context.record({
    id: 'struct f64 field read, cursor positioned',
    unit: 'M reads/s',
    value: oneOurs,
    baseline: 'DataView.getFloat64',
    baselineValue: oneBase,
    higherIsBetter: true,
  });
  // The space's own accessor at the same address: what the cursor adds on top of it.
  const abs = addresses[7]! + offScore;
  const [spaceRead, cursorRead] = interleaved(
    context.repeats,
    () =>
      reads /
      timeMs(() => {
        for (let i = 0; i < reads; i++) sink += heap.space.readF64(abs);
      }) /
      1e3,
    () =>
      reads /
      timeMs(() => {
        for (let i = 0; i < reads; i++) sink += cursor.score;
      }) /
      1e3,
  );
  context.log(
    `space.readF64 alone: ${spaceRead.toPrecision(4)} M reads/s; cursor.score beside it: ${cursorRead.toPrecision(4)}`,
  );
  if (sink === 42) context.log('');
}

/** A typical ~200-byte document. */
function document(i: number): unknown {
  return {
    id: i,
    name: `customer ${i}`,
    email: `customer${i}@example.com`,
    createdAt: new Date(1_700_000_000_000 + i),
    active: i % 3 !== 0,
    score: i * 1.25,
    tags: ['gold', 'emea', `t${i % 7}`],
    address: { street: `${i} Long Street`, city: 'Springfield', zip: '12345' },
    orders: [i, i + 1, i + 2],
  };
}

function blobFigures(context: BenchContext): void {
  const heap = memory();
  const count = context.quick ? 20_000 : 50_000;
  const docs = Array.from({ length: count }, (_, i) => document(i));
  const packr = new Packr({
    structuredClone: true,
    useRecords: true,
    copyBuffers: true,
    int64AsType: 'bigint',
    useBigIntExtension: true,
  });
  const packed = docs.map((d) => Buffer.from(packr.pack(d)));
  context.log(`document: ${packed[0]!.length} msgpack bytes self-contained`);
  const kops = (ms: number): number => count / ms;
  const addresses = new Float64Array(count);
  let sink = 0;

  const [putOurs, putBase] = interleaved(
    context.repeats,
    () => {
      heap.allocator.reset();
      return kops(
        timeMs(() => {
          for (let i = 0; i < count; i++) addresses[i] = putValue(heap, docs[i]);
        }),
      );
    },
    () =>
      kops(
        timeMs(() => {
          for (let i = 0; i < count; i++) sink += packr.pack(docs[i]).length;
        }),
      ),
  );
  context.record({
    id: 'blob putValue (~200-byte document)',
    unit: 'k ops/s',
    value: putOurs,
    baseline: 'msgpackr pack alone',
    baselineValue: putBase,
    higherIsBetter: true,
  });

  const [getOurs, getBase] = interleaved(
    context.repeats,
    () =>
      kops(
        timeMs(() => {
          for (let i = 0; i < count; i++) sink += getValue<{ id: number }>(heap, addresses[i]!).id;
        }),
      ),
    () =>
      kops(
        timeMs(() => {
          for (let i = 0; i < count; i++) sink += (packr.unpack(packed[i]!) as { id: number }).id;
        }),
      ),
  );
  context.record({
    id: 'blob getValue (~200-byte document)',
    unit: 'k ops/s',
    value: getOurs,
    baseline: 'msgpackr unpack alone',
    baselineValue: getBase,
    higherIsBetter: true,
  });
  for (let i = 0; i < count; i++) freeValue(heap, addresses[i]!);

  heap.allocator.reset();
  const codec = BlobCodec.create(heap);
  codec.put(docs[0]);
  const codecAddresses = new Float64Array(count);
  const [codecPut, codecGet] = interleaved(
    context.repeats,
    () =>
      kops(
        timeMs(() => {
          for (let i = 0; i < count; i++) codecAddresses[i] = codec.put(docs[i]);
        }),
      ),
    () =>
      kops(
        timeMs(() => {
          for (let i = 0; i < count; i++) sink += codec.get<{ id: number }>(codecAddresses[i]!).id;
        }),
      ),
  );
  context.log(
    `BlobCodec (shared structures): put ${codecPut.toPrecision(4)} k ops/s, get ${codecGet.toPrecision(4)} k ops/s, ${heap.space.readU32(codecAddresses[1]! + 4)} msgpack bytes`,
  );
  if (sink === 42) context.log('');
}

export const heapValuesSuite: Suite = {
  name: 'heap-values',
  async run(context) {
    structFigures(context);
    blobFigures(context);
  },
};

if (import.meta.url === `file://${process.argv[1]}`) {
  const quick = process.argv.includes('--quick');
  await heapValuesSuite.run({
    quick,
    repeats: quick ? 3 : 7,
    record(row) {
      console.log(
        `${row.id}: ${row.value.toPrecision(4)} ${row.unit} | ${row.baseline}: ${row.baselineValue.toPrecision(4)} | ratio ${(row.value / row.baselineValue).toFixed(2)}`,
      );
    },
    log(message) {
      console.log(`  ${message}`);
    },
  });
}
