/**
 * `memfabric heap create|info|check|compact FILE`: a thin command line over a heap image
 * (src/heap/heap.ts, src/heap/image.ts), for looking at and repairing space in an image no
 * process has open.
 *
 *   memfabric heap create app.heap [--size 1TiB] [--page-size 4096]
 *   memfabric heap info app.heap [--json]          (read-only: the file is not written)
 *   memfabric heap check app.heap [--json]         (read-only; reads every stored page)
 *   memfabric heap compact app.heap [--budget 64MiB] [--json]
 *
 * Exit status: 0 when all is well; 1 when `check` finds a problem or any command fails (the
 * error's message and code on stderr); 2 for a usage error (a bad option or argument).
 */
import { stat } from 'node:fs/promises';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { Heap } from '../heap/heap.js';
import { HEAP_SIZE_DEFAULT, HeapImage } from '../heap/image.js';
import type { AllocatorStats } from '../heap/allocator.js';
import { byteProgress } from './progress.js';
import { formatSize, parseSize } from '../size.js';
import { describeError } from './describe-error.js';

/** An image on an NBD export (Heap.open takes these too): nothing to stat. */
const NBD_URL = /^nbds?:\/\//i;

/** `heap check` found problems in the image. */
export const EXIT_PROBLEMS = 1;
/** A usage error, or a command that failed (a MemfabricError): 2, as for every memfabric command. */
export const EXIT_USAGE = 2;
export const EXIT_ERROR = 2;

export interface HeapInfo {
  path: string;
  pageSize: number;
  /** The heap's address-space size. */
  size: number;
  /** The committed checkpoint's generation; 0: never checkpointed (the heap is empty). */
  generation: number;
  /** When the committed checkpoint was taken (ms since the epoch) and as ISO 8601. */
  checkpointTime: number;
  checkpointDate: string;
  /** True for an image whose creator never committed a checkpoint: an empty heap. */
  empty: boolean;
  /**
   * The file's length, and the bytes the file system has allocated to it (it is sparse); null
   * for an image on an NBD export, which has no file here.
   */
  fileBytes: number | null;
  diskBytes: number | null;
  /** Highest image slot ever used, times the page size. */
  imageBytes: number;
  /** Pages the committed checkpoint names, and their bytes: what a compact image would hold. */
  storedPages: number;
  storedBytes: number;
  /** The allocator's figures; null for an empty heap. */
  allocator: AllocatorStats | null;
  /** Named roots: name -> address. */
  roots: Record<string, number>;
  /** Generations at which this heap's live forks were taken (each pins that checkpoint's pages). */
  forks: number[];
  /** When this heap is a fork: the image it shares pages with, and the generation it was forked at. */
  base: { path: string; generation: number } | null;
}

export interface HeapCheckReport {
  path: string;
  ok: boolean;
  generation: number;
  problems: string[];
}

export interface HeapCompactReport {
  path: string;
  beforeBytes: number;
  afterBytes: number;
  /** afterBytes / beforeBytes. */
  ratio: number;
  pages: number;
}

/**
 * Opens `path` read-only, runs `use` and closes it. An image at generation 0 (its creator died
 * before the first checkpoint) has no heap header yet — `Heap.open` refuses it read-only since
 * formatting would write — so `empty` is called with the bare image instead.
 */
async function withReadOnlyHeap<T>(
  path: string,
  budget: number | undefined,
  use: (heap: Heap) => Promise<T>,
  empty: (image: HeapImage) => Promise<T>,
): Promise<T> {
  const options = { path, readOnly: true, ...(budget === undefined ? {} : { budget }) };
  let heap: Heap;
  try {
    heap = await Heap.open({ ...options, checkpointIntervalMs: 0 });
  } catch (error) {
    if (!(error instanceof MemfabricError) || error.code !== ErrorCodes.HEAP_CORRUPT) throw error;
    // Only a generation-0 image is excused; anything else really is corrupt.
    const image = await HeapImage.open(options).catch(() => undefined);
    if (image === undefined) throw error;
    try {
      if (image.generation !== 0) throw error;
      return await empty(image);
    } finally {
      await image.close({ checkpoint: false });
    }
  }
  try {
    return await use(heap);
  } finally {
    await heap.close({ checkpoint: false });
  }
}

export async function heapCreate(options: {
  path: string;
  size: number;
  pageSize: number;
}): Promise<HeapInfo> {
  const heap = await Heap.create({ ...options, checkpointIntervalMs: 0 });
  // Create commits the formatted heap (generation 1): nothing more to checkpoint.
  await heap.close({ checkpoint: false });
  return heapInfo(options.path);
}

export async function heapInfo(path: string, budget?: number): Promise<HeapInfo> {
  const describe = async (image: HeapImage, heap: Heap | undefined): Promise<HeapInfo> => {
    const stats = image.stats();
    const file = NBD_URL.test(path) ? undefined : await stat(path);
    return {
      path,
      pageSize: stats.pageSize,
      size: stats.size,
      generation: stats.generation,
      checkpointTime: image.checkpointTime,
      checkpointDate: new Date(image.checkpointTime).toISOString(),
      empty: heap === undefined,
      fileBytes: file === undefined ? null : file.size,
      diskBytes: file === undefined ? null : file.blocks * 512,
      imageBytes: stats.imageBytes,
      storedPages: stats.storedPages,
      storedBytes: stats.storedPages * stats.pageSize,
      allocator: heap === undefined ? null : heap.stats().allocator,
      roots: heap === undefined ? {} : Object.fromEntries(heap.roots()),
      forks: image.forks(),
      base: image.base ?? null,
    };
  };
  return withReadOnlyHeap(
    path,
    budget,
    (heap) => describe(heap.image, heap),
    (image) => describe(image, undefined),
  );
}

export async function heapCheck(
  path: string,
  budget?: number,
  onProgress?: (bytesDone: number, bytesTotal: number) => void,
): Promise<HeapCheckReport> {
  return withReadOnlyHeap(
    path,
    budget,
    async (heap) => ({
      path,
      generation: heap.generation,
      ...(await heap.check(onProgress ? { onProgress } : {})),
    }),
    // No header or allocator yet: only the stored pages' checksums can be wrong.
    async (image) => {
      const problems = await image.verify(onProgress);
      return { path, generation: 0, ok: problems.length === 0, problems };
    },
  );
}

export async function heapCompact(
  path: string,
  budget?: number,
  onProgress?: (bytesDone: number, bytesTotal: number) => void,
): Promise<HeapCompactReport> {
  const report = await Heap.compact({
    path,
    ...(budget === undefined ? {} : { budget }),
    ...(onProgress ? { onProgress } : {}),
  });
  return {
    path,
    ...report,
    ratio: report.beforeBytes === 0 ? 1 : report.afterBytes / report.beforeBytes,
  };
}

export function formatHeapInfo(info: HeapInfo): string {
  const rows: [string, string][] = [
    ['page size', formatSize(info.pageSize)],
    ['heap size', formatSize(info.size)],
    [
      'generation',
      info.empty
        ? '0 (never checkpointed: the heap is empty)'
        : `${info.generation} (checkpoint ${info.checkpointDate})`,
    ],
    [
      'image',
      (info.fileBytes === null || info.diskBytes === null
        ? `on an NBD export, ${formatSize(info.imageBytes)} used`
        : `${formatSize(info.diskBytes)} on disk (file ${formatSize(info.fileBytes)})`) +
        `, ${info.storedPages} pages stored (${formatSize(info.storedBytes)})`,
    ],
  ];
  const a = info.allocator;
  if (a !== null) {
    rows.push(
      ['live', `${a.liveObjects} objects, ${formatSize(a.liveBytes)}`],
      [
        'heap',
        `${formatSize(a.heapBytes)} in pages, ${formatSize(a.freeBytes)} free ` +
          `(${formatSize(a.freeRunBytes)} in free runs), fragmentation ${(a.fragmentation * 100).toFixed(1)}%`,
      ],
      ['metadata', `${formatSize(a.metadataBytes)} (high water ${formatSize(a.topBytes)})`],
    );
  }
  const roots = Object.entries(info.roots);
  rows.push(['roots', roots.length === 0 ? 'none' : String(roots.length)]);
  for (const [name, address] of roots) rows.push([`  ${name}`, String(address)]);
  rows.push([
    'forks',
    info.forks.length === 0 ? 'none' : `${info.forks.length}, taken at generation ${info.forks.join(', ')}`,
  ]);
  if (info.base !== null) rows.push(['fork of', `${info.base.path} at generation ${info.base.generation}`]);
  const width = Math.max(...rows.map(([label]) => label.length));
  return [`heap ${info.path}`, ...rows.map(([label, value]) => `  ${label.padEnd(width)}  ${value}`)].join(
    '\n',
  );
}

export function formatHeapCheck(report: HeapCheckReport): string {
  if (report.ok) return `${report.path}: ok (generation ${report.generation})`;
  return [
    `${report.path}: ${report.problems.length} problem(s) at generation ${report.generation}`,
    ...report.problems.map((problem) => `  ${problem}`),
  ].join('\n');
}

export function formatHeapCompact(report: HeapCompactReport): string {
  return (
    `${report.path}: ${formatSize(report.beforeBytes)} -> ${formatSize(report.afterBytes)} ` +
    `(${report.ratio.toFixed(2)}x, ${report.pages} pages copied)`
  );
}

function sizeOption(value: string): number {
  try {
    return parseSize(value);
  } catch (error) {
    throw new InvalidArgumentError(error instanceof Error ? error.message : String(error));
  }
}

/**
 * Runs a heap command's action: a MemfabricError is reported (message and code on stderr) and
 * exits 2, as every memfabric command does; anything else is a bug and propagates.
 */
function action<A extends unknown[]>(run: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await run(...args);
    } catch (error) {
      if (!(error instanceof MemfabricError)) throw error;
      console.error(describeError(error));
      process.exitCode = EXIT_ERROR;
    }
  };
}

/** Adds `heap create|info|check|compact` to the program. */
export function registerHeapCommands(program: Command): void {
  const heap = program
    .command('heap')
    .description('create, inspect, check and compact a persistent heap image')
    // Usage errors exit 2 (like failed commands); 1 means `heap check` found problems.
    // Set before the subcommands are added: they inherit it.
    .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : EXIT_USAGE));
  heap
    .command('create <file>')
    .description('create an empty heap image (refuses a file that exists)')
    .addOption(
      new Option('--size <size>', "the heap's address-space size (sparse: unused space costs nothing)")
        .argParser(sizeOption)
        .default(parseSize(HEAP_SIZE_DEFAULT), HEAP_SIZE_DEFAULT),
    )
    .addOption(
      new Option('--page-size <bytes>', 'page size: a power of two from 1024 to 65536')
        .argParser(sizeOption)
        .default(4096, '4 KiB'),
    )
    .option('--json', 'print JSON')
    .action(
      action(async (file: string, options: { size: number; pageSize: number; json?: boolean }) => {
        const info = await heapCreate({ path: file, size: options.size, pageSize: options.pageSize });
        console.log(
          options.json
            ? JSON.stringify(info, null, 2)
            : `created ${file}: a ${formatSize(info.size)} heap of ${formatSize(info.pageSize)} pages`,
        );
      }),
    );
  heap
    .command('info <file>')
    .description('print what a heap image holds (read-only: the file is not written)')
    .option('--budget <size>', 'memory used while reading the image (default 64MiB)', sizeOption)
    .option('--json', 'print JSON')
    .action(
      action(async (file: string, options: { budget?: number; json?: boolean }) => {
        const info = await heapInfo(file, options.budget);
        console.log(options.json ? JSON.stringify(info, null, 2) : formatHeapInfo(info));
      }),
    );
  heap
    .command('check <file>')
    .description(
      "verify every stored page's checksum, the heap header and the allocator (read-only); exit 1 on any problem",
    )
    .option('--budget <size>', 'memory used while reading the image (default 64MiB)', sizeOption)
    .option('--json', 'print JSON')
    .action(
      action(async (file: string, options: { budget?: number; json?: boolean }) => {
        const report = await withBar(`checking ${file}`, (onProgress) =>
          heapCheck(file, options.budget, onProgress),
        );
        console.log(options.json ? JSON.stringify(report, null, 2) : formatHeapCheck(report));
        if (!report.ok) process.exitCode = EXIT_PROBLEMS;
      }),
    );
  heap
    .command('compact <file>')
    .description('give free space back to the file system: rewrite the image holding only its stored pages')
    .option('--budget <size>', 'memory used while copying (default 64MiB)', sizeOption)
    .option('--json', 'print JSON')
    .action(
      action(async (file: string, options: { budget?: number; json?: boolean }) => {
        const report = await withBar(`compacting ${file}`, (onProgress) =>
          heapCompact(file, options.budget, onProgress),
        );
        console.log(options.json ? JSON.stringify(report, null, 2) : formatHeapCompact(report));
      }),
    );
}

/** Runs `work` with a progress bar (on a terminal only) fed by its (bytesDone, bytesTotal) reports. */
async function withBar<T>(
  label: string,
  work: (onProgress: (bytesDone: number, bytesTotal: number) => void) => Promise<T>,
): Promise<T> {
  const bar = byteProgress(label, 0);
  try {
    return await work((done, total) => bar.update(done, total));
  } finally {
    bar.stop();
  }
}
