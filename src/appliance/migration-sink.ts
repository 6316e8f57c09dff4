/**
 * The pre-copy engine's PageSink (src/migrate/engine.ts) for a region migration: pages go to
 * the target appliance's region over one NBD connection, at the same offsets.
 *
 * Consecutive pages of one kind make one run, and a run is one NBD request: data pages a WRITE
 * (at most COPY_RUN_PAGES_MAX pages), zero pages a WRITE_ZEROES with NO_HOLE (the target keeps
 * them as zero pages, not holes), holes a TRIM (the target's region is a memfabric region, which
 * punches the hole). A run's length is clipped at the region's end (a partial last page).
 *
 * Slots: COPY_INFLIGHT_MAX of them, each with a buffer of COPY_RUN_PAGES_MAX pages; the open run
 * holds one and keeps it while its request is in flight (an NBD write holds its buffer until
 * answered). A page that would start a run when no slot is free is not taken (the queue call
 * returns false) and the engine awaits send(), which waits for a slot: that is the
 * backpressure. The first failed request fails the sink: send() and sync() throw it.
 *
 * Ordering: the target applies one connection's requests in order and each page is queued at
 * most once per round, and sync() drains every request before the engine starts the next round,
 * which is what the engine's invariant asks of a sink. sync() does not FLUSH: the target
 * applies a write to its memory before it answers, and durability (a file-backed target) is the
 * handover's business (its final FLUSH).
 *
 * Hot path: a data page is one copy into the open run's buffer; no allocation per page.
 */
import type { PageSink, SinkMeasure } from '../migrate/engine.js';
import type { NbdClient } from '../nbd/index.js';

/** Pages per NBD WRITE (128 KiB with 4 KiB pages). */
export const COPY_RUN_PAGES_MAX = 32;
/**
 * NBD requests the copy keeps in flight to the target. A blackout's dirty set is mostly
 * scattered pages, one request each, so requests in flight, not bytes, bound how fast it goes:
 * with 8 (the old copier's figure) a blackout of 500 scattered pages took 63 round trips of 8.
 * 32 slots cost 4 MiB of buffers (4 KiB pages) while a migration runs.
 */
export const COPY_INFLIGHT_MAX = 32;
/** Bytes per WRITE_ZEROES or TRIM (bounds the work one request costs the target). */
export const COPY_ZERO_BYTES_MAX = 64 * 1024 * 1024;
/** An NBD request header: what a run costs on the wire beside its data. */
const REQUEST_HEADER_BYTES = 28;

const RUN_NONE = 0;
const RUN_DATA = 1;
const RUN_ZERO = 2;
const RUN_HOLE = 3;

export class NbdPageSink implements PageSink {
  readonly pageSize: number;
  bytesSent = 0;
  /** Requests answered with an error: the first one, thrown by send() and sync(). */
  private failure: unknown = undefined;
  private readonly buffers: Uint8Array[] = [];
  /** Indexes of idle slots; free.length + inFlight + (open run ? 1 : 0) === COPY_INFLIGHT_MAX. */
  private readonly free: number[] = [];
  private inFlight = 0;
  private waiters: Array<() => void> = [];
  /** The open run: its kind, first page, page count and slot. */
  private runKind = RUN_NONE;
  private runFirst = 0;
  private runCount = 0;
  private runSlot = -1;
  /** The measure sync() reports: bytes issued since the last sync, from the first issue on. */
  private measureBytes = 0;
  private measureStart = -1;

  constructor(
    private readonly client: NbdClient,
    pageSize: number,
    /** The region's size in bytes (its last page may be partial). */
    private readonly size: number,
  ) {
    this.pageSize = pageSize;
    for (let i = 0; i < COPY_INFLIGHT_MAX; i++) {
      this.buffers.push(new Uint8Array(COPY_RUN_PAGES_MAX * pageSize));
      this.free.push(i);
    }
  }

  data(page: number, bytes: Uint8Array): boolean {
    if (
      this.runKind !== RUN_DATA ||
      page !== this.runFirst + this.runCount ||
      this.runCount >= COPY_RUN_PAGES_MAX
    ) {
      if (!this.startRun(RUN_DATA, page)) return false;
    }
    this.buffers[this.runSlot]!.set(bytes, this.runCount * this.pageSize);
    this.runCount++;
    return true;
  }

  zero(page: number): boolean {
    return this.extend(RUN_ZERO, page);
  }

  hole(page: number): boolean {
    return this.extend(RUN_HOLE, page);
  }

  async send(): Promise<void> {
    this.issue();
    while (this.free.length === 0 && this.failure === undefined) await this.idle();
    this.check();
  }

  async sync(): Promise<SinkMeasure | void> {
    this.issue();
    while (this.inFlight > 0) await this.idle();
    this.check();
    if (this.measureStart < 0) return undefined;
    const measure = { bytes: this.measureBytes, ms: performance.now() - this.measureStart };
    this.measureBytes = 0;
    this.measureStart = -1;
    return measure;
  }

  /** Zero and hole pages: extend the open run of that kind, or start one. */
  private extend(kind: number, page: number): boolean {
    if (
      this.runKind !== kind ||
      page !== this.runFirst + this.runCount ||
      (this.runCount + 1) * this.pageSize > COPY_ZERO_BYTES_MAX
    ) {
      if (!this.startRun(kind, page)) return false;
    }
    this.runCount++;
    return true;
  }

  /** Issues the open run and opens one at `page`; false (nothing taken) when no slot is free. */
  private startRun(kind: number, page: number): boolean {
    this.issue();
    const slot = this.free.pop();
    if (slot === undefined) return false;
    this.runKind = kind;
    this.runFirst = page;
    this.runCount = 0;
    this.runSlot = slot;
    return true;
  }

  /** Sends the open run as one request; its slot is released when the target answers. */
  private issue(): void {
    if (this.runKind === RUN_NONE) return;
    const slot = this.runSlot;
    const offset = this.runFirst * this.pageSize;
    const length = Math.min(this.runCount * this.pageSize, this.size - offset);
    const kind = this.runKind;
    this.runKind = RUN_NONE;
    this.runSlot = -1;
    if (length <= 0) {
      this.free.push(slot);
      return;
    }
    const request =
      kind === RUN_DATA
        ? this.client.write(offset, this.buffers[slot]!.subarray(0, length))
        : kind === RUN_ZERO
          ? this.client.writeZeroes(offset, length, { noHole: true })
          : this.client.trim(offset, length);
    const bytes = REQUEST_HEADER_BYTES + (kind === RUN_DATA ? length : 0);
    this.bytesSent += bytes;
    this.measureBytes += bytes;
    if (this.measureStart < 0) this.measureStart = performance.now();
    this.inFlight++;
    request.then(
      () => this.release(slot),
      (error: unknown) => {
        this.failure ??= error;
        this.release(slot);
      },
    );
  }

  private release(slot: number): void {
    this.inFlight--;
    this.free.push(slot);
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves when a request in flight is answered. */
  private idle(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}
