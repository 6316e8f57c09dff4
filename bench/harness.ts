/**
 * The one benchmark harness. A suite measures figures; each figure is the median of repeated
 * runs, measured interleaved with its baseline (ours, baseline, ours, baseline, ...) in the
 * same process so that noise on this shared machine hits both alike.
 */

export interface Figure {
  id: string;
  unit: string;
  value: number;
  baseline: string;
  baselineValue: number;
  /** value / baselineValue. */
  ratio: number;
}

export interface Row extends Figure {
  /** Whether a larger value is better (throughput) or smaller (latency, memory). */
  higherIsBetter: boolean;
  /** The goal, stated the way the issue states it (for the printed table). */
  goal?: string;
  /** How busy the machine was while the figure's suite ran (filled in by the runner). */
  load?: SuiteLoad;
}

/**
 * The machine's 1-minute load average when a suite started and when it ended, beside its core
 * count. Figures are medians of interleaved runs, so noise hits ours and the baseline alike,
 * but a busy machine still changes absolute numbers and some ratios (a single-threaded server
 * against a multi-threaded one loses more when cores are scarce): a figure is reported with
 * the load it was taken under.
 */
export interface SuiteLoad {
  start: number;
  end: number;
  cores: number;
  /** Other work was running: see BUSY_START_PER_CORE and BUSY_END_PER_CORE. */
  busy: boolean;
}

/**
 * Thresholds, per core, above which a suite's figures are called loaded. A suite loads the
 * machine itself (servers, fio, up to six appliance processes): on a quiet 2-core machine the
 * 1-minute average read 1.0-2.7 at suite boundaries, the previous suite's load fading into the
 * next one's start. So a suite is busy when more than that was running: a start above 1.5
 * per core, or an end above 2 per core (other work put 8 to 28 on these 2 cores).
 */
export const BUSY_START_PER_CORE = 1.5;
export const BUSY_END_PER_CORE = 2;

export function suiteLoad(start: number, end: number, cores: number): SuiteLoad {
  const busy = start > BUSY_START_PER_CORE * cores || end > BUSY_END_PER_CORE * cores;
  return { start, end, cores, busy };
}

export function describeLoad(name: string, load: SuiteLoad): string {
  const text = `${name}: load average ${load.start.toFixed(2)} at start, ${load.end.toFixed(2)} at end, ${load.cores} cores`;
  return load.busy ? `${text}: BUSY, its figures are loaded (compare ratios, not absolute numbers)` : text;
}

export interface BenchContext {
  quick: boolean;
  /** Repeats per figure (medians are taken over these). */
  repeats: number;
  record(row: Omit<Row, 'ratio'>): void;
  log(message: string): void;
}

export interface Suite {
  name: string;
  run(context: BenchContext): Promise<void>;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export function percentile(sorted: Float64Array | number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1));
  return sorted[index]!;
}

/** Runs `body` once and returns the elapsed milliseconds. */
export function timeMs(body: () => void): number {
  const start = performance.now();
  body();
  return performance.now() - start;
}

/**
 * Measures ours and the baseline `repeats` times each, interleaved, and returns both medians.
 * Each sample function returns its own figure (a rate or a time).
 */
export function interleaved(repeats: number, ours: () => number, baseline: () => number): [number, number] {
  const a: number[] = [];
  const b: number[] = [];
  // One untimed round each to warm up the JIT and the caches.
  ours();
  baseline();
  for (let i = 0; i < repeats; i++) {
    a.push(ours());
    b.push(baseline());
  }
  return [median(a), median(b)];
}

/** `interleaved` for measurements that must await (a request, a restart). */
export async function interleavedAsync(
  repeats: number,
  ours: () => Promise<number>,
  baseline: () => Promise<number>,
): Promise<[number, number]> {
  await ours();
  await baseline();
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < repeats; i++) {
    a.push(await ours());
    b.push(await baseline());
  }
  return [median(a), median(b)];
}

export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return Math.round(value).toLocaleString('en-US');
  if (magnitude >= 100) return value.toFixed(1);
  if (magnitude >= 1) return value.toFixed(2);
  return value.toPrecision(3);
}

export function printTable(rows: Row[]): string {
  const header = ['figure', 'ours', 'unit', 'baseline', 'baseline value', 'ratio', 'better', 'goal'];
  const body = rows.map((row) => [
    row.id,
    formatNumber(row.value),
    row.unit,
    row.baseline,
    formatNumber(row.baselineValue),
    `${formatNumber(row.ratio)}x`,
    row.higherIsBetter ? 'higher' : 'lower',
    row.goal ?? '',
  ]);
  const widths = header.map((title, column) =>
    Math.max(title.length, ...body.map((line) => line[column]!.length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, column) => cell.padEnd(widths[column]!))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((width) => '-'.repeat(width))), ...body.map(line)].join('\n');
}
