/**
 * Restart figures (issue 12): how long an appliance takes to load its file-backed regions,
 * by region count and size, each beside a baseline measured interleaved in the same run:
 *
 *   - N regions of 1 GiB each holding D MiB of data: loading them (scan metadata and extent
 *     maps, read the data runs, map non-zero pages with merging) vs reading the same data
 *     bytes of the same image files with plain fs reads (open, read in 4 MiB chunks, close)
 *     and doing nothing with them — the I/O floor. Ours also copies every page into fresh frame
 *     memory (a new pool per sample, as a restarted process has), so it pays the kernel's
 *     first-touch page faults, which reading into one reused buffer does not;
 *   - a sparse region holding 4 KiB, loaded by its extent map, vs the same region loaded the
 *     way a version 1 image (no map) is: a full read of its virtual size (what every restart
 *     did before the map). At 1 TiB the full read is not run (it would take minutes); the 1 TiB
 *     load is shown beside a plain read of its one 4 KiB page.
 *
 * In-process through RegionRegistry (the loading path the appliance runs after it listens),
 * so process start-up does not blur the figures. Data is written once per configuration
 * (untimed) into a temporary directory removed at the end. The page cache is warm for both
 * sides alike.
 */
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegionRegistry } from '../src/appliance/index.js';
import { FramePool } from '../src/index.js';
import { interleavedAsync, type BenchContext, type Suite } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const CHUNK = 4 * MiB;

/** Distinct pages (so merging cannot shrink the work): page i of region r gets its own bytes. */
function fillPage(page: Buffer, region: number, index: number): Buffer {
  for (let i = 0; i < page.length; i += 4)
    page.writeUInt32LE((Math.imul(region + 1, 0x9e3779b1) ^ Math.imul(index + 1, 40503) ^ i) >>> 0, i);
  return page;
}

async function makeRegions(dir: string, count: number, size: number, dataBytes: number): Promise<void> {
  const pool = new FramePool({ capacity: Math.max(16 * MiB, count * dataBytes + 16 * MiB) });
  const registry = new RegionRegistry({ pool, dataDir: dir });
  const page = Buffer.alloc(4096);
  for (let r = 0; r < count; r++) {
    const region = await registry.create({ name: `r${r}`, size, file: true });
    // Data in the middle of the region, so neither side gets it for free at offset 0.
    for (let at = 0; at < dataBytes; at += page.length)
      region.write(size / 2 + at, fillPage(page, r, at / 4096));
    await region.flush();
  }
  await registry.close();
}

/** Scans and loads every region in `dir`; returns the elapsed ms. */
async function loadAll(dir: string, capacity: number): Promise<number> {
  const registry = new RegionRegistry({ pool: new FramePool({ capacity }), dataDir: dir });
  const start = performance.now();
  await registry.scanDataDir();
  await registry.loadPending();
  const elapsed = performance.now() - start;
  if (registry.pendingRegions().length > 0) throw new Error(JSON.stringify(registry.pendingRegions()));
  await registry.close();
  return elapsed;
}

/** Plain fs: reads `length` bytes at `offset` of each image, 4 MiB at a time; returns ms. */
async function readImages(paths: string[], offset: number, length: number): Promise<number> {
  const buffer = Buffer.alloc(Math.min(CHUNK, length));
  const start = performance.now();
  for (const path of paths) {
    const handle = await open(path, 'r');
    for (let at = 0; at < length; at += buffer.length) {
      await handle.read(buffer, 0, Math.min(buffer.length, length - at), offset + at);
    }
    await handle.close();
  }
  return performance.now() - start;
}

/** Rewrites region `name`'s metadata as version 1 (no extent map), as an older appliance left it. */
function asVersion1(dir: string, name: string): void {
  const path = join(dir, `${name}.region.json`);
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, 'utf8')), version: 1 }));
}

async function run(context: BenchContext): Promise<void> {
  const configurations: Array<[number, number]> = context.quick
    ? [
        [1, 4 * MiB],
        [16, 4 * MiB],
        [4, 32 * MiB],
      ]
    : [
        [1, 16 * MiB],
        [16, 16 * MiB],
        [64, 4 * MiB],
        [4, 128 * MiB],
      ];
  for (const [count, dataBytes] of configurations) {
    const dir = mkdtempSync(join(tmpdir(), 'memfabric-bench-restart-'));
    try {
      await makeRegions(dir, count, GiB, dataBytes);
      const paths = Array.from({ length: count }, (_, r) => join(dir, `r${r}.img`));
      const [ours, floor] = await interleavedAsync(
        context.repeats,
        () => loadAll(dir, count * dataBytes + 16 * MiB),
        () => readImages(paths, GiB / 2, dataBytes),
      );
      context.record({
        id: `restart: load ${count} region(s) × ${dataBytes / MiB} MiB of data (1 GiB each)`,
        unit: 'ms',
        value: ours,
        baseline: 'plain fs.read of the same data bytes',
        baselineValue: floor,
        higherIsBetter: false,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  // Sparse: 4 KiB in a 1 GiB region, by the extent map vs a full read (a version 1 image).
  for (const [size, label] of [
    [GiB, '1 GiB'],
    [TiB, '1 TiB'],
  ] as const) {
    const mapped = mkdtempSync(join(tmpdir(), 'memfabric-bench-restart-'));
    const full = mkdtempSync(join(tmpdir(), 'memfabric-bench-restart-'));
    try {
      await makeRegions(mapped, 1, size, 4 * KiB);
      if (size === GiB) {
        await makeRegions(full, 1, size, 4 * KiB);
        asVersion1(full, 'r0');
      }
      const [ours, baseline] = await interleavedAsync(
        context.repeats,
        () => loadAll(mapped, 16 * MiB),
        size === GiB
          ? // A version 1 load migrates to version 2; undo that so every sample reads in full.
            async () => {
              const ms = await loadAll(full, 16 * MiB);
              asVersion1(full, 'r0');
              return ms;
            }
          : () => readImages([join(mapped, 'r0.img')], size / 2, 4 * KiB),
      );
      context.record({
        id: `restart: load a sparse ${label} region holding 4 KiB (extent map)`,
        unit: 'ms',
        value: ours,
        baseline: size === GiB ? 'full read of the image (version 1, no map)' : 'plain fs.read of its 4 KiB',
        baselineValue: baseline,
        higherIsBetter: false,
      });
    } finally {
      rmSync(mapped, { recursive: true, force: true });
      rmSync(full, { recursive: true, force: true });
    }
  }
}

export const restartSuite: Suite = { name: 'restart', run };
