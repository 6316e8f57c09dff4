/**
 * Auto-converge: slowing a program that dirties pages faster than a migration sends them.
 *
 * QEMU throttles a guest's vCPUs by a percentage it raises step by step while the copy does
 * not converge. Here the thing to slow is the write path of an AddressSpace, and the unit it
 * sees is a page becoming dirty (WriteGate.dirtied: once per page per epoch, never on the
 * writes that follow in the same epoch), so the throttle is a delay per newly dirtied page.
 *
 * The delay is computed from measurements, once per round (`adjust`):
 *
 *   R  = pages the program dirtied per second in the last round (counted here)
 *   B  = pages per second the sink applied in the last rounds (measured by the engine)
 *   p  = the throttle level, 0 (off) … LEVEL_MAX, raised by LEVEL_STEP each round that did
 *        not shrink the dirty set, starting at LEVEL_INITIAL
 *   the program's own time per dirtied page, unthrottled: w = 1/R − d_current (≥ 0)
 *   delay per page d = clamp(max(w · p/(1 − p), 1/(B · (1 − p)) − w), 0, DELAY_PER_PAGE_MAX)
 *
 * The first term is QEMU's throttle: the program loses a share p of its time, so its dirty
 * rate falls to (1 − p) of its own, whatever the bandwidth. The second holds the dirty rate at
 * most at (1 − p) of what the migration can send (it matters when the program dirties faster
 * than the link). Either way the slowdown grows with every round that does not converge.
 *
 * How the delay is served. Each dirtied page adds d to a debt. An async writer pays the debt
 * with `await writable()` (a timer sleep once the debt reaches ASYNC_SLEEP_MIN_MS; the event
 * loop, hence the migration, runs meanwhile). A sync writer that never awaits is parked in
 * `dirtied` itself once its debt reaches SYNC_PARK_AT_MS: Atomics.wait on a private
 * SharedArrayBuffer (allowed on Node's main thread), for at most PARK_MAX_MS at a time. A park
 * stops this thread, the sender included, but not the kernel's socket buffers nor the
 * destination applying what was sent, so when the network or the destination is the bottleneck
 * (the case that needs throttling) parking the writer gives the transfer time to catch up.
 *
 * Everything is bounded: the delay per page, the park per call, the debt (a writer is never
 * owed more than one park). The report says how much the program was slowed.
 */

/** First throttle level once a round fails to shrink the dirty set (QEMU's cpu-throttle-initial is 20%). */
export const LEVEL_INITIAL = 0.2;
/** Added per round that still does not shrink the dirty set (QEMU's cpu-throttle-increment is 10%). */
export const LEVEL_STEP = 0.1;
/** The most the throttle asks: the program's dirty rate held at 1% of the bandwidth. */
export const LEVEL_MAX = 0.99;
/** Longest delay charged for one dirtied page. */
export const DELAY_PER_PAGE_MAX_MS = 1;
/** A sync writer is parked once it owes this much delay… */
export const SYNC_PARK_AT_MS = 4;
/** …for at most this long per park (the debt beyond is forgiven: bounded pauses). */
export const PARK_MAX_MS = 5;
/** An async writer sleeps once it owes this much (a timer cannot sleep less). */
export const ASYNC_SLEEP_MIN_MS = 1;

export interface ThrottleReport {
  /** Highest level reached (0 = never throttled). */
  levelMax: number;
  /** Pages whose first write in an epoch was charged a delay. */
  pagesDelayed: number;
  /** Time writers spent parked (sync) or asleep in writable() (async), in ms. */
  delayMs: number;
  /** Of delayMs: parked synchronously. */
  parkedMs: number;
  /** Of delayMs: slept in writable(). */
  awaitedMs: number;
}

export interface ThrottleMeasure {
  /** Pages the sink applied per second in the last rounds. */
  bandwidthPagesPerSec: number;
  /** Whether the last round shrank the dirty set. */
  shrinking: boolean;
}

export class Throttle {
  /** Current level, 0 … LEVEL_MAX. */
  level = 0;
  /** Current delay per dirtied page, ms. */
  delayPerPageMs = 0;
  private debtMs = 0;
  private dirtiedInWindow = 0;
  private windowStart = performance.now();
  private readonly report: ThrottleReport = {
    levelMax: 0,
    pagesDelayed: 0,
    delayMs: 0,
    parkedMs: 0,
    awaitedMs: 0,
  };
  /** Atomics.wait needs an Int32Array over shared memory; nobody ever notifies it. */
  private readonly parkWord = new Int32Array(new SharedArrayBuffer(4));

  constructor(private readonly enabled: boolean) {}

  /** Pages dirtied since the last `takeDirtyRate`, per second; restarts the window. */
  takeDirtyRate(): number {
    const now = performance.now();
    const seconds = Math.max(1e-6, (now - this.windowStart) / 1000);
    const rate = this.dirtiedInWindow / seconds;
    this.dirtiedInWindow = 0;
    this.windowStart = now;
    return rate;
  }

  /**
   * Once per round: raise the level when the dirty set did not shrink (never lower it during a
   * migration: QEMU keeps its throttle too, a program that slowed down once would speed up and
   * undo the convergence), and recompute the delay from the measured rates.
   */
  adjust(measure: ThrottleMeasure, dirtyPagesPerSec: number): void {
    if (!this.enabled) return;
    if (!measure.shrinking) {
      this.level = this.level === 0 ? LEVEL_INITIAL : Math.min(LEVEL_MAX, this.level + LEVEL_STEP);
      this.level = Math.round(this.level * 100) / 100;
      if (this.level > this.report.levelMax) this.report.levelMax = this.level;
    }
    this.delayPerPageMs = throttleDelayMs(
      this.level,
      measure.bandwidthPagesPerSec,
      dirtyPagesPerSec,
      this.delayPerPageMs,
    );
  }

  /** Called by the gate for each newly dirtied page: charges the delay, parks a sync writer in debt. */
  charge(): void {
    this.dirtiedInWindow++;
    const delay = this.delayPerPageMs;
    if (delay === 0) return;
    this.report.pagesDelayed++;
    this.debtMs += delay;
    if (this.debtMs >= SYNC_PARK_AT_MS) this.park();
  }

  /** Resolves once the caller has served its delay (async writers; see the file header). */
  async served(): Promise<void> {
    if (this.debtMs < ASYNC_SLEEP_MIN_MS) return;
    const owed = Math.min(this.debtMs, PARK_MAX_MS);
    this.debtMs = 0;
    const started = performance.now();
    await new Promise<void>((resolve) => setTimeout(resolve, owed));
    const slept = performance.now() - started;
    this.report.awaitedMs += slept;
    this.report.delayMs += slept;
  }

  /** Stops throttling (the copy is over); what is owed is forgiven. */
  stop(): void {
    this.delayPerPageMs = 0;
    this.debtMs = 0;
  }

  snapshot(): ThrottleReport {
    return {
      ...this.report,
      delayMs: round3(this.report.delayMs),
      parkedMs: round3(this.report.parkedMs),
      awaitedMs: round3(this.report.awaitedMs),
    };
  }

  private park(): void {
    const owed = Math.min(this.debtMs, PARK_MAX_MS);
    this.debtMs = 0;
    const started = performance.now();
    Atomics.wait(this.parkWord, 0, 0, owed);
    const parked = performance.now() - started;
    this.report.parkedMs += parked;
    this.report.delayMs += parked;
  }
}

/**
 * The delay per dirtied page (ms) at throttle level `level`: see the file header.
 * `currentDelayMs` is the delay the measured rate was observed under, so the writer's own
 * time per page is recovered from it.
 */
export function throttleDelayMs(
  level: number,
  bandwidthPagesPerSec: number,
  dirtyPagesPerSec: number,
  currentDelayMs: number,
): number {
  if (level <= 0 || !(dirtyPagesPerSec > 0)) return 0;
  const ownMsPerPage = Math.max(0, 1000 / dirtyPagesPerSec - currentDelayMs);
  const share = (ownMsPerPage * level) / (1 - level);
  const toBandwidth =
    bandwidthPagesPerSec > 0 ? 1000 / (bandwidthPagesPerSec * (1 - level)) - ownMsPerPage : 0;
  return Math.min(DELAY_PER_PAGE_MAX_MS, Math.max(0, share, toBandwidth));
}

function round3(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
