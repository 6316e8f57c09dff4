/**
 * Pacing of the background same-page merger: its share of a core, the timed slices that keep
 * to it, and the meter that reports what it actually did.
 *
 * The merger works in slices: it scans for at most `sliceMs`, measures how long that took
 * (`work`), then sleeps `work × (1 − share) / share`, so that work / (work + sleep) = share
 * whatever the slice cost. Sleeping after the measured work (not a fixed interval) keeps the
 * share right when a slice ends early (a full scan done) or runs long (a busy machine). Timers
 * fire late, never early, so the share actually used is at most the one asked for.
 *
 * A full scan starts at most once per ROUND_INTERVAL_MIN_MS: each begins by advancing every
 * space's epoch (which drops its writable translations), and an appliance with little to scan
 * would otherwise start thousands a second and spend its share doing nothing useful.
 */
import { invalidArgument } from '../errors.js';

/** Share of one core the background merger uses unless told otherwise (a tenth). */
export const CPU_SHARE_DEFAULT = 0.1;
/** Below this the merger would scan nearly nothing; `stop()` (or no merger) is the way to turn it off. */
export const CPU_SHARE_MIN = 0.001;
/** Longest a slice holds the event loop, unless told otherwise. */
export const SLICE_MS_DEFAULT = 5;
export const SLICE_MS_MAX = 1000;
/** Earliest the next full scan may begin after the previous one began. */
export const ROUND_INTERVAL_MIN_MS = 100;
/** The rates reported cover between one and two of these windows. */
export const RATE_WINDOW_MS = 5000;

/** `value` if it is a share of a core from CPU_SHARE_MIN to 1; else a typed error naming `what`. */
export function checkCpuShare(value: unknown, what = 'cpuShare'): number {
  if (typeof value !== 'number' || !(value >= CPU_SHARE_MIN && value <= 1)) {
    throw invalidArgument(
      `${what} ${String(value)} must be a share of one core from ${CPU_SHARE_MIN} to 1 ` +
        `(0.1 = a tenth of a core); merging is turned off with --no-merge (merge: false), not a share of 0`,
    );
  }
  return value;
}

/** `value` if it is a slice length from 0.1 ms to SLICE_MS_MAX; else a typed error. */
export function checkSliceMs(value: unknown, what = 'sliceMs'): number {
  if (typeof value !== 'number' || !(value >= 0.1 && value <= SLICE_MS_MAX)) {
    throw invalidArgument(`${what} ${String(value)} must be from 0.1 to ${SLICE_MS_MAX} milliseconds`);
  }
  return value;
}

/** How long to sleep after a slice that worked `workMs`, so work / (work + sleep) = share. */
export function sleepAfterMs(workMs: number, share: number): number {
  return share >= 1 ? 0 : (workMs * (1 - share)) / share;
}

/**
 * Work time and pages visited over a sliding window of two buckets (the previous complete one
 * and the current one), so rates cover the last RATE_WINDOW_MS to 2 × RATE_WINDOW_MS. Numbers
 * only: recording allocates nothing.
 */
export class RateMeter {
  private previousStart: number;
  private previousWorkMs = 0;
  private previousPages = 0;
  private currentStart: number;
  private currentWorkMs = 0;
  private currentPages = 0;

  constructor(
    private readonly windowMs = RATE_WINDOW_MS,
    now = performance.now(),
  ) {
    this.previousStart = now;
    this.currentStart = now;
  }

  record(workMs: number, pages: number, now = performance.now()): void {
    this.roll(now);
    this.currentWorkMs += workMs;
    this.currentPages += pages;
  }

  /** Pages visited per second of wall time over the window. */
  pagesPerSecond(now = performance.now()): number {
    this.roll(now);
    const span = now - this.previousStart;
    return span <= 0 ? 0 : ((this.previousPages + this.currentPages) * 1000) / span;
  }

  /** Work time over wall time in the window: the share of one core actually used. */
  cpuShare(now = performance.now()): number {
    this.roll(now);
    const span = now - this.previousStart;
    return span <= 0 ? 0 : (this.previousWorkMs + this.currentWorkMs) / span;
  }

  private roll(now: number): void {
    const age = now - this.currentStart;
    if (age < this.windowMs) return;
    if (age >= 2 * this.windowMs) {
      // Idle for more than a window: the old bucket says nothing about the last one.
      this.previousStart = now - this.windowMs;
      this.previousWorkMs = 0;
      this.previousPages = 0;
    } else {
      this.previousStart = this.currentStart;
      this.previousWorkMs = this.currentWorkMs;
      this.previousPages = this.currentPages;
    }
    this.currentStart = now;
    this.currentWorkMs = 0;
    this.currentPages = 0;
  }
}
