/**
 * Tiered-memory figures (issue: tiered memory), each beside a baseline from the same run:
 *   - Zipf-skewed random 4 KiB reads of a space 8x its budget on the file store, beside the
 *     same reads of the space fully resident, and beside raw 4 KiB preads of the swap file;
 *   - a sequential scan of evicted pages with prefetch, beside the same scan without;
 *   - synchronous fault latency beside async (load) fault latency, p50 and p99;
 *   - store bytes used by an evicted clone workload with swap dedup, beside without.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FramePool } from '../src/memory/frame-pool.js';
import { AddressSpace } from '../src/memory/address-space.js';
import { Pager, type PagerOptions } from '../src/tier/pager.js';
import { median, percentile, type BenchContext, type Suite } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PAGE = 4096;

/** Fills every page with bytes of its own (its number in the first word), so none is zero or alike. */
function populate(space: AddressSpace, pages: number): void {
  const chunk = Buffer.alloc(256 * PAGE, 0x5a);
  for (let page = 0; page < pages; page += 256) {
    const n = Math.min(256, pages - page);
    for (let i = 0; i < n; i++) chunk.writeUInt32LE(page + i, i * PAGE);
    space.write(page * PAGE, n === 256 ? chunk : chunk.subarray(0, n * PAGE));
  }
}

/**
 * `count` page numbers from a Zipf distribution (exponent `s`) over `pages` pages, the ranks
 * scattered over the space by a multiplicative permutation so hot pages are not neighbours.
 */
function zipfPages(pages: number, count: number, s: number, seed: number): Float64Array {
  const cdf = new Float64Array(pages);
  let sum = 0;
  for (let rank = 0; rank < pages; rank++) {
    sum += 1 / (rank + 1) ** s;
    cdf[rank] = sum;
  }
  const out = new Float64Array(count);
  let state = seed >>> 0;
  const multiplier = 2654435761 % pages || 1;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const target = (state / 2 ** 32) * sum;
    let lo = 0;
    let hi = pages - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < target) lo = mid + 1;
      else hi = mid;
    }
    out[i] = (lo * multiplier) % pages;
  }
  return out;
}

/** Reads the listed pages, 4 KiB each; returns reads per second. */
function readPages(space: AddressSpace, pages: Float64Array, scratch: Buffer): number {
  const started = performance.now();
  for (let i = 0; i < pages.length; i++) space.read(pages[i]! * PAGE, scratch);
  return pages.length / ((performance.now() - started) / 1000);
}

async function zipfFigures(context: BenchContext, dir: string): Promise<void> {
  const spaceBytes = context.quick ? 1 * GiB : 4 * GiB;
  const budget = spaceBytes / 8;
  const pages = spaceBytes / PAGE;
  const reads = context.quick ? 200_000 : 1_000_000;
  const path = join(dir, 'zipf.swap');
  const pager = await Pager.open({ budget, store: { kind: 'file', path }, prefetch: 0 });
  const space = pager.createSpace({ size: spaceBytes });
  const resident = new AddressSpace(new FramePool({ capacity: spaceBytes }), { size: spaceBytes });
  const started = performance.now();
  populate(space, pages);
  populate(resident, pages);
  await pager.flush();
  context.log(
    `zipf: populated 2 x ${spaceBytes / GiB} GiB in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  const scratch = Buffer.alloc(PAGE);
  const fd = openSync(path, 'r');
  const slotsWritten = pager.stats().slotsInUse;
  const ours: number[] = [];
  const fully: number[] = [];
  const pread: number[] = [];
  const hitRatios: number[] = [];
  try {
    for (let r = 0; r < context.repeats; r++) {
      const sequence = zipfPages(pages, reads, 0.99, 7 + r);
      readPages(space, sequence.subarray(0, reads >> 2), scratch); // warm the resident set
      const before = pager.stats().faults;
      ours.push(readPages(space, sequence, scratch));
      hitRatios.push(1 - (pager.stats().faults - before) / reads);
      fully.push(readPages(resident, sequence, scratch));
      // Raw pread of the swap file: the same skew over the slots the pager wrote.
      const readStart = performance.now();
      for (let i = 0; i < sequence.length; i++) {
        readSync(fd, scratch, 0, PAGE, (1 + (sequence[i]! % slotsWritten)) * PAGE);
      }
      pread.push(reads / ((performance.now() - readStart) / 1000));
    }
  } finally {
    closeSync(fd);
    space.destroy();
    resident.destroy();
    await pager.close();
  }
  const spaceLabel = `${spaceBytes / GiB} GiB space, ${budget / MiB} MiB budget, file store, Zipf 0.99`;
  context.log(`zipf: hit ratio ${(median(hitRatios) * 100).toFixed(1)}% (${spaceLabel})`);
  context.record({
    id: `tier zipf 4K reads (${spaceLabel}) vs fully resident`,
    unit: 'reads/s',
    value: median(ours),
    baseline: 'the same reads, space fully resident',
    baselineValue: median(fully),
    higherIsBetter: true,
  });
  context.record({
    id: `tier zipf 4K reads (${spaceLabel}) vs raw pread`,
    unit: 'reads/s',
    value: median(ours),
    baseline: 'raw 4 KiB pread of the swap file, same skew',
    baselineValue: median(pread),
    higherIsBetter: true,
  });
  context.record({
    id: 'tier zipf hit ratio',
    unit: '%',
    value: median(hitRatios) * 100,
    baseline: 'budget / space (uniform access)',
    baselineValue: (budget / spaceBytes) * 100,
    higherIsBetter: true,
  });
}

async function openPopulated(
  options: PagerOptions,
  bytes: number,
): Promise<{ pager: Pager; space: AddressSpace }> {
  const pager = await Pager.open(options);
  const space = pager.createSpace({ size: bytes });
  populate(space, bytes / PAGE);
  return { pager, space };
}

async function scanFigures(context: BenchContext, dir: string): Promise<void> {
  const bytes = (context.quick ? 128 : 512) * MiB;
  const budget = 32 * MiB;
  const withPrefetch = await openPopulated(
    { budget, prefetch: 16, store: { kind: 'file', path: join(dir, 'scan-a.swap') } },
    bytes,
  );
  const without = await openPopulated(
    { budget, prefetch: 0, store: { kind: 'file', path: join(dir, 'scan-b.swap') } },
    bytes,
  );
  const scratch = Buffer.alloc(PAGE);
  const scan = ({ pager, space }: { pager: Pager; space: AddressSpace }): number => {
    pager.shrink(0);
    const started = performance.now();
    for (let offset = 0; offset < bytes; offset += PAGE) space.read(offset, scratch);
    return bytes / ((performance.now() - started) / 1000) / 1e6;
  };
  const ours: number[] = [];
  const base: number[] = [];
  try {
    for (let r = 0; r < context.repeats; r++) {
      ours.push(scan(withPrefetch));
      base.push(scan(without));
    }
  } finally {
    for (const { pager, space } of [withPrefetch, without]) {
      space.destroy();
      await pager.close();
    }
  }
  context.record({
    id: `tier sequential scan of evicted pages, prefetch 16 (${bytes / MiB} MiB, file store)`,
    unit: 'MB/s',
    value: median(ours),
    baseline: 'the same scan, prefetch off',
    baselineValue: median(base),
    higherIsBetter: true,
  });
}

async function faultLatencyFigures(context: BenchContext, dir: string): Promise<void> {
  const bytes = 64 * MiB;
  const { pager, space } = await openPopulated(
    { budget: 8 * MiB, prefetch: 0, store: { kind: 'file', path: join(dir, 'faults.swap') } },
    bytes,
  );
  const pages = bytes / PAGE;
  const samples = context.quick ? 2000 : 8000;
  const sync: number[] = [];
  const async: number[] = [];
  try {
    await pager.flush();
    let state = 99;
    const randomSwappedPage = (): number => {
      for (;;) {
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        const page = state % pages;
        if (space.frameAt(page) < 0) return page;
      }
    };
    for (let i = 0; i < samples; i++) {
      if (i % 512 === 0) pager.shrink(0);
      const a = randomSwappedPage();
      let started = performance.now();
      space.readU8(a * PAGE);
      sync.push((performance.now() - started) * 1000);
      const b = randomSwappedPage();
      started = performance.now();
      await space.load(b * PAGE, 1);
      space.readU8(b * PAGE);
      async.push((performance.now() - started) * 1000);
    }
  } finally {
    space.destroy();
    await pager.close();
  }
  sync.sort((x, y) => x - y);
  async.sort((x, y) => x - y);
  for (const [label, fraction] of [
    ['p50', 0.5],
    ['p99', 0.99],
  ] as const) {
    context.record({
      id: `tier fault latency ${label}: async (await load) vs sync (Atomics.wait), file store`,
      unit: 'µs',
      value: percentile(async, fraction),
      baseline: `sync fault ${label}`,
      baselineValue: percentile(sync, fraction),
      higherIsBetter: false,
    });
  }
}

/** Store bytes for the clone workload: a parent, 8 forks writing some shared and some own pages. */
async function cloneStoreBytes(dedup: boolean, dir: string, name: string): Promise<number> {
  const pager = await Pager.open({
    budget: 16 * MiB,
    prefetch: 0,
    dedup,
    store: { kind: 'file', path: join(dir, name) },
  });
  const parent = pager.createSpace({ size: 256 * MiB });
  populate(parent, 8192); // 32 MiB of parent pages
  const forks = Array.from({ length: 8 }, () => parent.fork());
  const page = Buffer.alloc(PAGE, 0x33);
  forks.forEach((fork, i) => {
    // Each fork rewrites 2048 parent pages with the same new bytes (say, a patched library),
    // and writes 512 pages of its own.
    for (let p = 0; p < 2048; p++) {
      page.writeUInt32LE(p, 0);
      page.writeUInt32LE(0xc0ffee, 4);
      fork.write(p * PAGE, page);
    }
    for (let p = 0; p < 512; p++) {
      page.writeUInt32LE(p, 0);
      page.writeUInt32LE(i + 1, 4);
      fork.write((10_000 + p) * PAGE, page);
    }
  });
  pager.shrink(0);
  const bytes = pager.stats().slotsInUse * PAGE;
  for (const space of [parent, ...forks]) space.destroy();
  await pager.close();
  return bytes;
}

async function dedupFigures(context: BenchContext, dir: string): Promise<void> {
  const withDedup: number[] = [];
  const without: number[] = [];
  for (let r = 0; r < Math.min(3, context.repeats); r++) {
    withDedup.push(await cloneStoreBytes(true, dir, `dedup-${r}.swap`));
    without.push(await cloneStoreBytes(false, dir, `nodedup-${r}.swap`));
  }
  context.record({
    id: 'tier swap dedup: store bytes for 8 evicted forks (32 MiB parent, 8 MiB shared + 2 MiB own writes each)',
    unit: 'MiB',
    value: median(withDedup) / MiB,
    baseline: 'the same workload, dedup off',
    baselineValue: median(without) / MiB,
    higherIsBetter: false,
  });
}

export const tierSuite: Suite = {
  name: 'tier',
  async run(context) {
    const dir = await mkdtemp(join(tmpdir(), 'memfabric-bench-tier-'));
    try {
      await zipfFigures(context, dir);
      await scanFigures(context, dir);
      await faultLatencyFigures(context, dir);
      await dedupFigures(context, dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};
