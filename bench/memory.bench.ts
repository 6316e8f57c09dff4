/**
 * Memory core figures (issue: foundation): resident page copies, random scalar reads, fork,
 * merger scan throughput and the clone-workload saving.
 */
import { randomFillSync } from 'node:crypto';
import { xxh64 } from '@node-rs/xxhash';
import { AddressSpace, FramePool, SamePageMerger } from '../src/index.js';
import { interleaved, timeMs, type Suite } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PAGE = 4096;

/** Fills a space with distinct pages quickly: random bytes, page number in the first 8. */
function fillUnique(space: AddressSpace, bytes: number, salt: number): void {
  const chunk = Buffer.allocUnsafe(Math.min(MiB, bytes));
  for (let offset = 0; offset < bytes; offset += chunk.length) {
    randomFillSync(chunk);
    for (let p = 0; p < chunk.length / PAGE; p++) {
      chunk.writeUInt32LE(offset / PAGE + p, p * PAGE);
      chunk.writeUInt32LE(salt, p * PAGE + 4);
    }
    space.write(offset, chunk);
  }
}

/**
 * Like fillUnique, but writes the pages in a random order, so consecutive pages do not get
 * consecutive frames (no span translations: every read goes through the page TLB).
 */
function fillScattered(space: AddressSpace, bytes: number, salt: number): void {
  const pages = bytes / PAGE;
  const order = Uint32Array.from({ length: pages }, (_, i) => i);
  for (let i = pages - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const page = Buffer.allocUnsafe(PAGE);
  for (let k = 0; k < pages; k++) {
    const p = order[k]!;
    randomFillSync(page);
    page.writeUInt32LE(p, 0);
    page.writeUInt32LE(salt, 4);
    space.write(p * PAGE, page);
  }
}

function pageCopies(context: Parameters<Suite['run']>[0]): void {
  // Working set: 256 pages (1 MiB), resident. Baseline: TypedArray.set from views of the very
  // same frames, so both copy the same bytes from the same cache lines.
  const pool = new FramePool({ capacity: 8 * MiB });
  const space = new AddressSpace(pool, { size: 64 * MiB });
  fillUnique(space, MiB, 1);
  const pages = 256;
  const views = Array.from({ length: pages }, (_, p) => pool.frameBytes(space.frameAt(p)));
  const target = new Uint8Array(PAGE);
  const ops = context.quick ? 400_000 : 1_000_000;
  const gbps = (ms: number) => (ops * PAGE) / (ms / 1000) / 1e9;
  const [readOurs, readBase] = interleaved(
    context.repeats,
    () =>
      gbps(
        timeMs(() => {
          for (let i = 0; i < ops; i++) space.read((i & (pages - 1)) * PAGE, target);
        }),
      ),
    () =>
      gbps(
        timeMs(() => {
          for (let i = 0; i < ops; i++) target.set(views[i & (pages - 1)]!);
        }),
      ),
  );
  context.record({
    id: 'resident 4 KiB page read (AddressSpace.read)',
    unit: 'GB/s',
    value: readOurs,
    baseline: 'TypedArray.set of the same bytes',
    baselineValue: readBase,
    higherIsBetter: true,
    goal: '>= 0.7x',
  });
  const source = new Uint8Array(PAGE).fill(7);
  const [writeOurs, writeBase] = interleaved(
    context.repeats,
    () =>
      gbps(
        timeMs(() => {
          for (let i = 0; i < ops; i++) space.write((i & (pages - 1)) * PAGE, source);
        }),
      ),
    () =>
      gbps(
        timeMs(() => {
          for (let i = 0; i < ops; i++) views[i & (pages - 1)]!.set(source);
        }),
      ),
  );
  context.record({
    id: 'resident 4 KiB page write (AddressSpace.write)',
    unit: 'GB/s',
    value: writeOurs,
    baseline: 'TypedArray.set into the same frames',
    baselineValue: writeBase,
    higherIsBetter: true,
    goal: '>= 0.7x',
  });
  space.destroy();
}

function randomScalarReads(
  context: Parameters<Suite['run']>[0],
  bytes: number,
  label: string,
  goal: string,
  scattered = false,
): void {
  const pool = new FramePool({ capacity: bytes + 4 * MiB });
  const space = new AddressSpace(pool, { size: bytes });
  if (scattered) fillScattered(space, bytes, 2);
  else fillUnique(space, bytes, 2);
  const direct = new ArrayBuffer(bytes);
  const directView = new DataView(direct);
  // The same bytes in one flat buffer, for the baseline.
  const chunk = new Uint8Array(MiB);
  const flat = new Uint8Array(direct);
  for (let offset = 0; offset < bytes; offset += Math.min(MiB, bytes)) {
    const part = chunk.subarray(0, Math.min(MiB, bytes));
    space.read(offset, part);
    flat.set(part, offset);
  }
  const count = 1 << 20;
  const addresses = new Float64Array(count);
  for (let i = 0; i < count; i++) addresses[i] = Math.floor(Math.random() * (bytes / 8)) * 8;
  const rounds = context.quick ? 4 : 10;
  const mops = (ms: number) => (rounds * count) / (ms / 1000) / 1e6;
  let sink = 0;
  const [ours, base] = interleaved(
    context.repeats,
    () =>
      mops(
        timeMs(() => {
          for (let r = 0; r < rounds; r++)
            for (let i = 0; i < count; i++) if (space.readF64(addresses[i]!) > 0) sink++;
        }),
      ),
    () =>
      mops(
        timeMs(() => {
          for (let r = 0; r < rounds; r++)
            for (let i = 0; i < count; i++) if (directView.getFloat64(addresses[i]!, true) > 0) sink++;
        }),
      ),
  );
  // Random bytes read as doubles are often NaN: the reads are counted, not summed, so the
  // result is used (and cannot be optimised away) without NaN poisoning it.
  if (sink < 0) context.log('unreachable');
  context.record({
    id: `random 8-byte reads over ${label}${scattered ? ' written in random page order' : ''} (readF64)`,
    unit: 'Mops/s',
    value: ours,
    baseline: `DataView on one ${label} buffer`,
    baselineValue: base,
    higherIsBetter: true,
    goal,
  });
  space.destroy();
}

function forkCost(context: Parameters<Suite['run']>[0]): void {
  const bytes = GiB;
  const pool = new FramePool({ capacity: bytes + 64 * MiB });
  const space = new AddressSpace(pool, { size: bytes });
  fillUnique(space, bytes, 3);
  const copy = new Uint8Array(bytes);
  const sourceFlat = new Uint8Array(bytes);
  sourceFlat.fill(1);
  const [ours, base] = interleaved(
    context.repeats,
    () => {
      let child: AddressSpace | undefined;
      const ms = timeMs(() => {
        child = space.fork();
      });
      child!.destroy();
      return ms;
    },
    () => timeMs(() => copy.set(sourceFlat)),
  );
  context.record({
    id: 'fork() of a fully written 1 GiB space',
    unit: 'ms',
    value: ours,
    baseline: 'copying 1 GiB (stop-and-copy clone)',
    baselineValue: base,
    higherIsBetter: false,
    goal: 'must not touch every page',
  });
  space.destroy();
}

function mergerScan(context: Parameters<Suite['run']>[0]): void {
  // Two spaces with the same 128 MiB of distinct pages: the scan hashes every page, indexes
  // the first copy and byte-compares then merges the second.
  const bytes = context.quick ? 64 * MiB : 128 * MiB;
  const samples: number[] = [];
  const baselines: number[] = [];
  for (let r = 0; r < context.repeats; r++) {
    const pool = new FramePool({ capacity: 2 * bytes + 16 * MiB });
    const merger = new SamePageMerger(pool, { quietEpochs: 0 });
    const a = new AddressSpace(pool, { size: bytes });
    const b = new AddressSpace(pool, { size: bytes });
    fillUnique(a, bytes, 4);
    const chunk = new Uint8Array(MiB);
    for (let offset = 0; offset < bytes; offset += MiB) {
      a.read(offset, chunk);
      b.write(offset, chunk);
    }
    merger.register(a);
    merger.register(b);
    const ms = timeMs(() => merger.scan());
    if (pool.used !== bytes / PAGE) throw new Error(`merge incomplete: ${pool.used} frames`);
    samples.push((2 * bytes) / (ms / 1000) / 1e9);
    // Baseline: xxh64 over the same number of bytes, page by page, from one flat buffer.
    const flat = Buffer.allocUnsafe(bytes);
    a.read(0, flat);
    const hashMs = timeMs(() => {
      for (let pass = 0; pass < 2; pass++)
        for (let offset = 0; offset < bytes; offset += PAGE) xxh64(flat.subarray(offset, offset + PAGE));
    });
    baselines.push((2 * bytes) / (hashMs / 1000) / 1e9);
    a.destroy();
    b.destroy();
    merger.destroy();
  }
  samples.sort((x, y) => x - y);
  baselines.sort((x, y) => x - y);
  context.record({
    id: 'merger scan: pages hashed, compared and merged',
    unit: 'GB/s',
    value: samples[samples.length >> 1]!,
    baseline: 'raw xxh64 of 4 KiB pages (@node-rs/xxhash)',
    baselineValue: baselines[baselines.length >> 1]!,
    higherIsBetter: true,
    goal: '>= 2 GB/s',
  });
}

function cloneWorkload(context: Parameters<Suite['run']>[0]): void {
  // One 256 MiB parent, 16 forks; each fork rewrites 10% of its pages with data unique to it
  // and 20% with data identical across forks. Ideal: parent + unique pages + one copy of the
  // shared 20%. Default merger settings (a page must stay unwritten through one scan).
  const parentBytes = context.quick ? 64 * MiB : 256 * MiB;
  const pages = parentBytes / PAGE;
  const forks = 16;
  const pool = new FramePool({ capacity: parentBytes * 6 });
  const merger = new SamePageMerger(pool);
  const parent = new AddressSpace(pool, { size: parentBytes });
  merger.register(parent);
  fillUnique(parent, parentBytes, 5);
  const uniqueCount = Math.floor(pages * 0.1);
  const sharedCount = Math.floor(pages * 0.2);
  const order = Uint32Array.from({ length: pages }, (_, i) => i);
  for (let i = pages - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const sharedPages = order.subarray(0, sharedCount);
  const noise = Buffer.allocUnsafe(MiB);
  randomFillSync(noise);
  const pageBuffer = Buffer.allocUnsafe(PAGE);
  const children: AddressSpace[] = [];
  for (let f = 0; f < forks; f++) {
    const child = parent.fork();
    children.push(child);
    for (let k = 0; k < sharedCount; k++) {
      const p = sharedPages[k]!;
      noise.copy(pageBuffer, 0, (p * 64) % (MiB - PAGE));
      pageBuffer.writeUInt32LE(p, 0);
      pageBuffer.writeUInt32LE(0xfeed, 4);
      child.write(p * PAGE, pageBuffer);
    }
    // Unique pages: a random 10% of the rest, differing per fork.
    for (let k = 0; k < uniqueCount; k++) {
      const p = order[sharedCount + Math.floor(Math.random() * (pages - sharedCount))]!;
      noise.copy(pageBuffer, 0, (p * 64 + f * 4096) % (MiB - PAGE));
      pageBuffer.writeUInt32LE(p, 0);
      pageBuffer.writeUInt32LE(f + 1, 4);
      child.write(p * PAGE, pageBuffer);
    }
  }
  // A fork may draw the same unique page twice; count the private frames actually made.
  const before = pool.used;
  const uniqueWritten = before - pages - forks * sharedCount;
  const ideal = pages + uniqueWritten + sharedCount;
  const idealSaving = before - ideal;
  for (let pass = 1; pass <= 3; pass++) {
    merger.scan();
    const saving = (before - pool.used) / idealSaving;
    context.record({
      id: `clone workload (16 forks of ${parentBytes / MiB} MiB): saving after pass ${pass}`,
      unit: '% of ideal',
      value: saving * 100,
      baseline: 'ideal saving (distinct pages only)',
      baselineValue: 100,
      higherIsBetter: true,
      goal: pass <= 2 ? '100% by pass 2' : '',
    });
  }
  context.record({
    id: `clone workload: frames used after merging`,
    unit: 'frames',
    value: pool.used,
    baseline: 'frames used before merging',
    baselineValue: before,
    higherIsBetter: false,
    goal: `ideal ${ideal}`,
  });
  const stats = merger.stats();
  context.log(
    `merger: shared ${stats.pagesShared}, sharing ${stats.pagesSharing}, unshared ${stats.pagesUnshared}, ` +
      `saved ${(stats.bytesSavedNet / MiB).toFixed(1)} MiB net of ${(stats.metadataBytes / MiB).toFixed(1)} MiB metadata`,
  );
  for (const child of children) child.destroy();
  parent.destroy();
  merger.destroy();
}

export const memorySuite: Suite = {
  name: 'memory',
  async run(context) {
    pageCopies(context);
    randomScalarReads(context, GiB, '1 GiB', '>= 0.5x');
    randomScalarReads(context, 256 * KiB, '256 KiB', '>= 0.7x');
    // The same 1 GiB, its pages written in random order: no page runs, so no span translations.
    randomScalarReads(context, GiB, '1 GiB', '', true);
    forkCost(context);
    mergerScan(context);
    cloneWorkload(context);
  },
};
