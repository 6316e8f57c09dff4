/**
 * The pre-copy engine: moves an AddressSpace's contents to a PageSink while the program keeps
 * writing, then stops writes for a short blackout and hands over. One engine for every
 * transport: a process-to-process migration over TCP (precopy.ts) and an appliance's region
 * migration over NBD (src/appliance/migration.ts) differ only in their sink and handover.
 *
 *   1. Round 1. s1 = advanceEpoch(); every present page is sent as it is now: data pages as
 *      data (a data page that reads as zeros as a zero page), zero pages as zero runs; holes
 *      are skipped (the sink starts as holes). sync() waits until the sink has applied it all.
 *   2. Round k ≥ 2. In one synchronous step: D = dirtyPages(s(k-1)); decide (`decideRound`);
 *      if another round, sk = advanceEpoch(), then send every page of D as it is now (data,
 *      zeros, or a hole), sync. In rounds (not the blackout) a page written again since the
 *      round began (epoch >= sk) is skipped: the next set has it (Xen's "skip" set).
 *   3. Blackout, when `decideRound` says so, in that same synchronous step: the gate closes
 *      (writes throw MF_MIGRATING and change nothing) and the epoch advances, so every later
 *      write to any page meets the gate. Send D, sync, then the transport's handover: it
 *      resolves only once the sink has acknowledged everything. Then, in one synchronous step,
 *      the gate marks the space moved (writes refused for good) and the transport commits.
 *      A failure or a cancel before the handover resolved reopens the gate: the source goes on
 *      with all its data, and the sink's partial copy is the transport's to discard.
 *
 * Why the sink ends equal to the source (the invariant of src/appliance/migration.ts): when
 * round k+1 starts at epoch s(k+1), every page whose bytes at the sink may differ from the
 * source has a write epoch ≥ s(k). A page is read when it is queued (synchronously, so its
 * bytes are those of that instant) and the sink applies pages in order; a write after the read
 * records an epoch ≥ s(k) because s(k) began before the round read anything. A page not sent in
 * round k was not dirty since s(k-1), so by induction the sink already had it; a page of D
 * skipped in round k had an epoch >= s(k) when skipped, so the next set has it. Round 1 is the
 * base: the sink starts as holes and every non-hole page is visited. In the blackout nothing
 * changes any more, so sending D makes the sink equal to the source at the blackout.
 *
 * When to black out (QEMU's rule, `decideRound`): the bandwidth B measured over the last
 * rounds (bytes the sink applied ÷ the time from the round's start until its sync resolved,
 * so socket buffers do not flatter it) times the downtime target, less the handover's round
 * trips, is what may remain: blackout once the dirty set's bytes fit. Otherwise another round;
 * a round whose dirty set did not halve raises auto-converge's throttle (throttle.ts). The
 * fallbacks: `maxRounds`, and a dirty set that stopped shrinking for NOT_CONVERGING_ROUNDS
 * rounds with nothing left to try (no auto-converge, or the throttle at its maximum): then the
 * blackout goes ahead over the target, and the report says so (stopReason, expected downtime).
 *
 * Hot path: per page, one page-table lookup, a compare against the zero page and a copy into
 * the sink's batch; no allocation and no await unless a batch is full (or a swapped-out page
 * must be fetched). The engine yields to the event loop between batches, so the program runs.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace } from '../memory/address-space.js';
import { NO_FRAME, ZERO_FRAME } from '../memory/frame-pool.js';
import { LEAF_ENTRIES } from '../memory/leaf-arena.js';
import { GATE_OPEN, MigrationGate } from './gate.js';
import type { ThrottleReport } from './throttle.js';
import { LEVEL_MAX } from './throttle.js';

export const MAX_DOWNTIME_DEFAULT_MS = 30;
export const MAX_DOWNTIME_MAX_MS = 3_600_000;
export const MAX_ROUNDS_DEFAULT = 30;
export const MAX_ROUNDS_MAX = 1000;
export const BLACKOUT_TIMEOUT_DEFAULT_MS = 10_000;
/** A round "shrinks" the dirty set when it leaves at most this fraction of the previous one (QEMU: 50%). */
export const SHRINK_RATIO = 0.5;
/** Rounds without a new smallest dirty set, with nothing left to try, before the blackout goes ahead anyway. */
export const NOT_CONVERGING_ROUNDS = 5;
/**
 * The bandwidth is measured over the latest rounds that together sent at least this much (the
 * last round alone when it is that large): a round of a few pages measures the round trip, not
 * the link, and would hold the blackout off for nothing.
 */
export const BANDWIDTH_WINDOW_BYTES = 16 * 1024 * 1024;
/** Rounds remembered for the bandwidth at most. */
const BANDWIDTH_ROUNDS_MAX = 64;
/** Pages visited (holes and zeros included) between two yields to the event loop. */
const VISIT_BATCH_PAGES = 1024;
/** Progress callbacks at most this often within a round. */
const PROGRESS_INTERVAL_MS = 100;

/**
 * Where pages go. Queue pages one at a time (consecutive pages of a kind make one run); a
 * queue call returns false when the sink's current batch is full: `await send()` and repeat.
 */
export interface PageSink {
  readonly pageSize: number;
  /** Queues page `page` with these bytes (copied before the call returns). */
  data(page: number, bytes: Uint8Array): boolean;
  /** Queues page `page` as a zero page (reads as zeros, holds no data). */
  zero(page: number): boolean;
  /** Queues page `page` as a hole (trimmed). */
  hole(page: number): boolean;
  /** Ships what is queued, waiting while the transport is full (backpressure). */
  send(): Promise<void>;
  /**
   * Ships what is queued and resolves once the sink has applied everything sent so far. May
   * return the sink's own measure of the bytes it took and how long they took to arrive.
   */
  sync(): Promise<SinkMeasure | void>;
  /** Bytes put on the transport so far (page data and run descriptions, framing included). */
  readonly bytesSent: number;
  /** The sink's round trip, ms, if it measures one (the handover costs two). */
  readonly rttMs?: number;
}

export interface SinkMeasure {
  bytes: number;
  ms: number;
}

/** The transport's end of the blackout. */
export interface Handover {
  /**
   * Tells the sink that everything was sent (the epoch the space stopped at) and resolves once
   * it acknowledged having applied all of it. Rejects if it cannot: the source then goes on.
   */
  handover(finalEpoch: number): Promise<void>;
  /** Called synchronously with the space being marked moved: the sink owns the state now. */
  commit(): void;
  /** Named in the moved space's refusals ("has moved to …"). */
  readonly destination: string;
  /**
   * Called synchronously in the step that closes the space's gate (the blackout begins), and
   * when a failure reopens it: for a transport with a gate of its own in front of the space
   * (an appliance region's, which answers NBD clients ESHUTDOWN with its own message).
   */
  gateClosed?(): void;
  gateReopened?(): void;
}

export interface PreCopyOptions {
  /** Longest blackout to aim for, ms (default 30). */
  maxDowntimeMs?: number;
  /** Slow writers when the copy does not converge (default true). */
  autoConverge?: boolean;
  /** Rounds (round 1 included) before the blackout at the latest (default 30). */
  maxRounds?: number;
  signal?: AbortSignal;
  onProgress?: (progress: MigrationProgress) => void;
  /** Round trip of one sync to the sink, if measured (added to the expected downtime). */
  rttMs?: number;
  /**
   * Give up a blackout that lasts this long (the sink stopped answering): the gate reopens and
   * the migration fails with MF_TIMEOUT. Default 10 000 ms.
   */
  blackoutTimeoutMs?: number;
}

export type MigrationPhase = 'connecting' | 'copying' | 'blackout' | 'done' | 'failed';

export interface MigrationProgress {
  phase: MigrationPhase;
  round: number;
  /** Pages sent so far (data, zero and hole pages), every round together. */
  pagesSent: number;
  bytesSent: number;
  /** Pages of the current round not yet sent (the blackout's, in the blackout). */
  pagesRemaining: number;
  /** The dirty set at the last decision, pages. */
  dirtyPages: number;
  /** Pages the program dirtied per second during the last round. */
  dirtyRatePagesPerSec: number;
  dirtyRateBytesPerSec: number;
  /** Bytes per second the sink applied over the last rounds. */
  bandwidthBytesPerSec: number;
  /** What a blackout would cost now, ms (the dirty set over the bandwidth, plus the handover). */
  expectedDowntimeMs: number;
  throttleLevel: number;
  elapsedMs: number;
}

/** The progress of a migration that has sent nothing yet (or is not a pre-copy), in `phase`. */
export function idleProgress(phase: MigrationPhase, elapsedMs = 0): MigrationProgress {
  return {
    phase,
    round: 0,
    pagesSent: 0,
    bytesSent: 0,
    pagesRemaining: 0,
    dirtyPages: 0,
    dirtyRatePagesPerSec: 0,
    dirtyRateBytesPerSec: 0,
    bandwidthBytesPerSec: 0,
    expectedDowntimeMs: 0,
    throttleLevel: 0,
    elapsedMs,
  };
}

export interface RoundReport {
  round: number;
  /** Pages sent. */
  pages: number;
  /** Pages of the round's set not sent because they were written again during it (the next round has them). */
  skipped: number;
  bytes: number;
  ms: number;
  /** Pages dirtied while it ran (the next round's set). */
  dirtyAfter: number;
}

/** Why the pre-copy stopped; 'post-copy' for a migration that switched over at once (no rounds). */
export type StopReason = 'converged' | 'max-rounds' | 'not-converging' | 'post-copy';

export interface MigrationReport {
  rounds: RoundReport[];
  stopReason: StopReason;
  pagesSent: number;
  /** Pages passed over in their round because they were written again during it. */
  pagesSkipped: number;
  bytesSent: number;
  /** Pages in the blackout's set. */
  blackoutPages: number;
  dirtyRatePagesPerSec: number;
  dirtyRateBytesPerSec: number;
  bandwidthBytesPerSec: number;
  /** What the engine expected the blackout to cost when it started it, ms. */
  expectedDowntimeMs: number;
  /** The blackout as measured: gate closed to handover acknowledged, ms. */
  downtimeMs: number;
  totalMs: number;
  /** The space's epoch when its writes stopped (the destination continues from it). */
  finalEpoch: number;
  throttle: ThrottleReport;
}

export type RoundDecision =
  { action: 'round'; shrinking: boolean } | { action: 'blackout'; reason: StopReason };

export interface RoundState {
  /** The dirty set now, pages. */
  dirtyPages: number;
  /** Pages the previous round sent. */
  previousPages: number;
  /** The smallest dirty set so far, and how many decisions ago it was seen. */
  roundsSinceSmallest: number;
  pageSize: number;
  bandwidthBytesPerSec: number;
  rttMs: number;
  maxDowntimeMs: number;
  /** Rounds run so far. */
  round: number;
  maxRounds: number;
  autoConverge: boolean;
  throttleLevel: number;
}

/** The expected blackout for `pages` dirty pages: sending them at the bandwidth, plus two round trips. */
export function expectedDowntimeMs(
  pages: number,
  pageSize: number,
  bandwidthBytesPerSec: number,
  rttMs: number,
): number {
  if (pages === 0) return 2 * rttMs;
  if (!(bandwidthBytesPerSec > 0)) return Number.POSITIVE_INFINITY;
  return 2 * rttMs + ((pages * pageSize) / bandwidthBytesPerSec) * 1000;
}

/** The stop rule, alone so it can be tested with synthetic rates (see the file header). */
export function decideRound(state: RoundState): RoundDecision {
  const expected = expectedDowntimeMs(
    state.dirtyPages,
    state.pageSize,
    state.bandwidthBytesPerSec,
    state.rttMs,
  );
  // Nothing dirty: waiting cannot make the blackout (the handover alone) any shorter. A target of
  // 0 is never met, not even so: the copy runs to its fallbacks (a way to force rounds).
  if (expected <= state.maxDowntimeMs || (state.dirtyPages === 0 && state.maxDowntimeMs > 0)) {
    return { action: 'blackout', reason: 'converged' };
  }
  if (state.round >= state.maxRounds) return { action: 'blackout', reason: 'max-rounds' };
  const exhausted = !state.autoConverge || state.throttleLevel >= LEVEL_MAX;
  if (exhausted && state.roundsSinceSmallest >= NOT_CONVERGING_ROUNDS) {
    return { action: 'blackout', reason: 'not-converging' };
  }
  return { action: 'round', shrinking: state.dirtyPages <= state.previousPages * SHRINK_RATIO };
}

export function checkPreCopyOptions(options: PreCopyOptions): {
  maxDowntimeMs: number;
  maxRounds: number;
  autoConverge: boolean;
  blackoutTimeoutMs: number;
} {
  const maxDowntimeMs = options.maxDowntimeMs ?? MAX_DOWNTIME_DEFAULT_MS;
  if (typeof maxDowntimeMs !== 'number' || !(maxDowntimeMs >= 0) || maxDowntimeMs > MAX_DOWNTIME_MAX_MS) {
    throw invalidArgument(
      `maxDowntimeMs ${String(maxDowntimeMs)} must be a number of ms from 0 to ${MAX_DOWNTIME_MAX_MS}`,
    );
  }
  const maxRounds = options.maxRounds ?? MAX_ROUNDS_DEFAULT;
  if (!Number.isInteger(maxRounds) || maxRounds < 1 || maxRounds > MAX_ROUNDS_MAX) {
    throw invalidArgument(
      `maxRounds ${String(maxRounds)} must be a whole number from 1 to ${MAX_ROUNDS_MAX}`,
    );
  }
  const autoConverge = options.autoConverge ?? true;
  if (typeof autoConverge !== 'boolean') throw invalidArgument('autoConverge must be true or false');
  const blackoutTimeoutMs = options.blackoutTimeoutMs ?? BLACKOUT_TIMEOUT_DEFAULT_MS;
  if (
    typeof blackoutTimeoutMs !== 'number' ||
    !(blackoutTimeoutMs > 0) ||
    blackoutTimeoutMs > MAX_DOWNTIME_MAX_MS
  ) {
    throw invalidArgument(
      `blackoutTimeoutMs ${String(blackoutTimeoutMs)} must be a number of ms above 0, at most ${MAX_DOWNTIME_MAX_MS}`,
    );
  }
  return { maxDowntimeMs, maxRounds, autoConverge, blackoutTimeoutMs };
}

/** A cancelled migration's error (the signal's reason when it is already a MemfabricError). */
export function cancelledError(signal: AbortSignal): MemfabricError {
  const reason: unknown = signal.reason;
  if (reason instanceof MemfabricError) return reason;
  return new MemfabricError(
    ErrorCodes.MIGRATING,
    'the migration was cancelled; the source keeps its data and its writes go on',
    { cause: reason },
  );
}

export class PreCopyEngine {
  readonly gate: MigrationGate;
  private readonly pageSize: number;
  private readonly maxDowntimeMs: number;
  private readonly maxRounds: number;
  private readonly autoConverge: boolean;
  private readonly blackoutTimeoutMs: number;
  private readonly zeroPage: Uint8Array;
  private readonly started = performance.now();
  private phase: MigrationPhase = 'copying';
  private round = 0;
  private pagesSent = 0;
  private roundPages = 0;
  private roundSent = 0;
  /** Pages of this round passed over because they were written again since it began. */
  private roundSkipped = 0;
  private pagesSkipped = 0;
  /** Pages written at or after this epoch are skipped (the next round sends them); none in the blackout. */
  private skipSince = Number.POSITIVE_INFINITY;
  private dirtyPages = 0;
  private dirtyRate = 0;
  private readonly history: { bytes: number; ms: number }[] = [];
  private bandwidth = 0;
  private rttMs: number;
  private lastProgress = 0;
  private visited = 0;
  private readonly rounds: RoundReport[] = [];

  constructor(
    readonly space: AddressSpace,
    private readonly sink: PageSink,
    private readonly options: PreCopyOptions = {},
  ) {
    const checked = checkPreCopyOptions(options);
    this.maxDowntimeMs = checked.maxDowntimeMs;
    this.maxRounds = checked.maxRounds;
    this.autoConverge = checked.autoConverge;
    this.blackoutTimeoutMs = checked.blackoutTimeoutMs;
    if (sink.pageSize !== space.pageSize) {
      throw invalidArgument(`the sink takes ${sink.pageSize}-byte pages, the space has ${space.pageSize}`);
    }
    this.pageSize = space.pageSize;
    this.zeroPage = new Uint8Array(this.pageSize);
    this.rttMs = sink.rttMs ?? options.rttMs ?? 0;
    this.gate = new MigrationGate(this.autoConverge);
  }

  /**
   * Runs the migration to its end: rounds, blackout, handover. Resolves with the report once
   * the space is marked moved; rejects (the gate reopened and taken off, the space writable
   * again with all its data) if anything fails or the signal aborts before the handover.
   */
  async run(transport: Handover): Promise<MigrationReport> {
    const space = this.space;
    const gate = this.gate;
    gate.install(space);
    let committed = false;
    try {
      // Round 1: every present page.
      let since = space.advanceEpoch();
      this.gate.throttle.takeDirtyRate();
      this.beginRound(1, presentPages(space));
      let roundStart = performance.now();
      let bytesBefore = this.sink.bytesSent;
      this.skipSince = since;
      await this.sendPresent();
      let previous = await this.endRound(roundStart, bytesBefore);
      let roundsSinceSmallest = 0;
      let smallest = Number.POSITIVE_INFINITY;
      let dirty: Float64Array;
      let stopReason: StopReason;
      for (;;) {
        // One synchronous step from taking the set to closing the gate or starting the round.
        dirty = space.dirtyPages(since);
        this.dirtyPages = dirty.length;
        this.rounds[this.rounds.length - 1]!.dirtyAfter = dirty.length;
        if (dirty.length < smallest) {
          smallest = dirty.length;
          roundsSinceSmallest = 0;
        } else roundsSinceSmallest++;
        const decision = decideRound({
          dirtyPages: dirty.length,
          previousPages: previous,
          roundsSinceSmallest,
          pageSize: this.pageSize,
          bandwidthBytesPerSec: this.bandwidth,
          rttMs: this.rttMs,
          maxDowntimeMs: this.maxDowntimeMs,
          round: this.round,
          maxRounds: this.maxRounds,
          autoConverge: this.autoConverge,
          throttleLevel: gate.throttle.level,
        });
        if (decision.action === 'blackout') {
          stopReason = decision.reason;
          gate.close();
          transport.gateClosed?.();
          break;
        }
        since = space.advanceEpoch();
        gate.throttle.adjust(
          { bandwidthPagesPerSec: this.bandwidth / this.pageSize, shrinking: decision.shrinking },
          this.dirtyRate,
        );
        this.beginRound(this.round + 1, dirty.length);
        roundStart = performance.now();
        bytesBefore = this.sink.bytesSent;
        this.skipSince = since;
        await this.sendPages(dirty);
        previous = await this.endRound(roundStart, bytesBefore);
      }
      // The blackout: the gate closed in the step that took `dirty`; now every write meets it.
      const finalEpoch = space.advanceEpoch();
      const expected = expectedDowntimeMs(dirty.length, this.pageSize, this.bandwidth, this.rttMs);
      const blackoutStart = performance.now();
      this.phase = 'blackout';
      this.roundPages = dirty.length;
      this.roundSent = 0;
      this.roundSkipped = 0;
      // Nothing is written any more: every page of the last set goes.
      this.skipSince = Number.POSITIVE_INFINITY;
      this.progress(true);
      // Writes wait on the blackout: a sink that stops answering must not hold them forever.
      await this.withinBlackout(async () => {
        await this.sendPages(dirty);
        await this.sink.sync();
        this.checkCancelled();
        await transport.handover(finalEpoch);
      });
      this.checkCancelled();
      // The point of no return, in one synchronous step.
      gate.moved(transport.destination);
      committed = true;
      this.phase = 'done';
      transport.commit();
      const downtimeMs = performance.now() - blackoutStart;
      this.progress(true);
      return {
        rounds: this.rounds,
        stopReason,
        pagesSent: this.pagesSent,
        pagesSkipped: this.pagesSkipped,
        bytesSent: this.sink.bytesSent,
        blackoutPages: dirty.length,
        dirtyRatePagesPerSec: round3(this.dirtyRate),
        dirtyRateBytesPerSec: round3(this.dirtyRate * this.pageSize),
        bandwidthBytesPerSec: round3(this.bandwidth),
        expectedDowntimeMs: round3(expected),
        downtimeMs: round3(downtimeMs),
        totalMs: round3(performance.now() - this.started),
        finalEpoch,
        throttle: gate.throttle.snapshot(),
      };
    } catch (error) {
      if (!committed) {
        const wasClosed = gate.state !== GATE_OPEN;
        gate.reopen();
        gate.uninstall(space);
        if (wasClosed) transport.gateReopened?.();
        this.phase = 'failed';
        this.progress(true);
      }
      throw error;
    }
  }

  /** Whether the handover happened (the space is moved; nothing can stop the migration now). */
  get committed(): boolean {
    return this.phase === 'done';
  }

  /** Where the migration stands. */
  progress(force = false): MigrationProgress {
    const progress: MigrationProgress = {
      phase: this.phase,
      round: this.round,
      pagesSent: this.pagesSent,
      bytesSent: this.sink.bytesSent,
      pagesRemaining: Math.max(0, this.roundPages - this.roundSent - this.roundSkipped),
      dirtyPages: this.dirtyPages,
      dirtyRatePagesPerSec: round3(this.dirtyRate),
      dirtyRateBytesPerSec: round3(this.dirtyRate * this.pageSize),
      bandwidthBytesPerSec: round3(this.bandwidth),
      expectedDowntimeMs: round3(
        expectedDowntimeMs(this.dirtyPages, this.pageSize, this.bandwidth, this.rttMs),
      ),
      throttleLevel: this.gate.throttle.level,
      elapsedMs: round3(performance.now() - this.started),
    };
    if (this.options.onProgress && (force || performance.now() - this.lastProgress >= PROGRESS_INTERVAL_MS)) {
      this.lastProgress = performance.now();
      try {
        this.options.onProgress(progress);
      } catch {
        // A failing progress callback must not fail the migration.
      }
    }
    return progress;
  }

  /**
   * Runs the blackout's work, failing with MF_TIMEOUT after `blackoutTimeoutMs` (the work is
   * then left to settle: the caller aborts the transport, and without a handover nothing of it
   * can commit).
   */
  private async withinBlackout(work: () => Promise<void>): Promise<void> {
    const limitMs = this.blackoutTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new MemfabricError(
              ErrorCodes.TIMEOUT,
              `the destination did not take the blackout's pages and the handover within ${limitMs} ms; the migration is abandoned and the source writes again`,
            ),
          ),
        limitMs,
      );
    });
    const running = work();
    running.catch(() => undefined);
    try {
      await Promise.race([running, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private beginRound(round: number, pages: number): void {
    this.round = round;
    this.roundPages = pages;
    this.roundSent = 0;
    this.roundSkipped = 0;
    this.progress(true);
  }

  /** Syncs, measures the round's bandwidth and the dirty rate; returns the pages it sent. */
  private async endRound(roundStart: number, bytesBefore: number): Promise<number> {
    const measure = await this.sink.sync();
    this.checkCancelled();
    const ms = performance.now() - roundStart;
    const bytes = this.sink.bytesSent - bytesBefore;
    this.history.push(measure && measure.ms > 0 ? { bytes: measure.bytes, ms: measure.ms } : { bytes, ms });
    if (this.history.length > BANDWIDTH_ROUNDS_MAX) this.history.shift();
    let sumBytes = 0;
    let sumMs = 0;
    for (let i = this.history.length - 1; i >= 0 && sumBytes < BANDWIDTH_WINDOW_BYTES; i--) {
      sumBytes += this.history[i]!.bytes;
      sumMs += this.history[i]!.ms;
    }
    if (sumMs > 0 && sumBytes > 0) this.bandwidth = (sumBytes / sumMs) * 1000;
    if (this.sink.rttMs !== undefined) this.rttMs = this.sink.rttMs;
    this.dirtyRate = this.gate.throttle.takeDirtyRate();
    this.rounds.push({
      round: this.round,
      pages: this.roundSent,
      skipped: this.roundSkipped,
      bytes,
      ms: round3(ms),
      dirtyAfter: 0,
    });
    this.progress(true);
    // The set the round started with (what the next one must shrink), skipped pages included.
    return this.roundPages;
  }

  /** Round 1: every page of every present leaf that is not a hole. */
  private async sendPresent(): Promise<void> {
    const leaves: number[] = [];
    this.space.forEachLeaf((_leaf, firstPage) => leaves.push(firstPage));
    const pages = this.space.pages;
    for (const firstPage of leaves) {
      const end = Math.min(pages, firstPage + LEAF_ENTRIES);
      for (let page = firstPage; page < end; page++) {
        // Holes are skipped: the sink starts as holes.
        if (this.space.isDestroyed) throw destroyedError();
        if (this.space.frameAt(page) === NO_FRAME) continue;
        const pending = this.sendPage(page);
        if (pending !== undefined) await pending;
      }
    }
    await this.sink.send();
  }

  /** Sends each of the ascending, distinct `pages` as it is now. */
  private async sendPages(pages: Float64Array): Promise<void> {
    for (let i = 0; i < pages.length; i++) {
      if (this.space.isDestroyed) throw destroyedError();
      const pending = this.sendPage(pages[i]!);
      if (pending !== undefined) await pending;
    }
    await this.sink.send();
  }

  /**
   * Queues one page as it is now. Resolves at once (no await) unless the batch is full, a
   * yield is due, or the page must first be fetched from a page store.
   */
  private sendPage(page: number): Promise<void> | void {
    const space = this.space;
    const sink = this.sink;
    if (space.pageEpoch(page) >= this.skipSince) {
      // Written again since this round began: the next round (or the blackout) sends it as it
      // will be then, so sending it now would only cost bytes (Xen's "skip" set).
      this.roundSkipped++;
      this.pagesSkipped++;
      if (++this.visited >= VISIT_BATCH_PAGES) return this.pause();
      return undefined;
    }
    const entry = space.frameAt(page);
    if (entry < 0 && space.pool.paging) return this.fetchThenSend(page);
    let queued: boolean;
    if (entry === NO_FRAME) queued = sink.hole(page);
    else if (entry === ZERO_FRAME) queued = sink.zero(page);
    else {
      const bytes = space.borrowPageForRead(page);
      queued = Buffer.compare(bytes, this.zeroPage) === 0 ? sink.zero(page) : sink.data(page, bytes);
    }
    if (!queued) return this.sendThenRetry(page);
    this.pagesSent++;
    this.roundSent++;
    if (++this.visited >= VISIT_BATCH_PAGES) return this.pause();
    return undefined;
  }

  private async sendThenRetry(page: number): Promise<void> {
    await this.sink.send();
    this.checkCancelled();
    this.progress();
    await this.sendPage(page);
  }

  private async fetchThenSend(page: number): Promise<void> {
    const offset = page * this.pageSize;
    await this.space.load(offset, Math.min(this.pageSize, this.space.size - offset));
    this.checkCancelled();
    // Resident now (unless evicted again at once: then it is read synchronously).
    const entry = this.space.frameAt(page);
    if (entry < 0) {
      this.space.borrowPageForRead(page);
    }
    await this.sendPage(page);
  }

  private async pause(): Promise<void> {
    this.visited = 0;
    await yieldToEventLoop();
    this.checkCancelled();
    this.progress();
  }

  private checkCancelled(): void {
    const signal = this.options.signal;
    if (signal?.aborted) throw cancelledError(signal);
  }
}

/** Pages that are not holes: data, zero and swapped-out pages (round 1's work). */
function presentPages(space: AddressSpace): number {
  const stats = space.stats();
  return stats.dataPages + stats.zeroPages + stats.swappedPages;
}

function destroyedError(): MemfabricError {
  return new MemfabricError(
    ErrorCodes.DESTROYED,
    'the address space was destroyed during its migration; the migration stops',
  );
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}
