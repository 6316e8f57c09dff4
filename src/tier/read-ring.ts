/**
 * The read ring: how the main thread asks the store worker for pages, apart from the destage
 * queue so reads never wait behind destaging. Hand-written on purpose (the fault path).
 *
 * One SharedArrayBuffer:
 *   header       HEADER_WORDS int32; each word has one writer (P = main thread, C = worker).
 *   descriptors  R records of DESC_WORDS int32: status, slot, segment, error code, async flag.
 *   offsets      R float64: byte offset of the destination frame in its segment.
 *   submit       an int32 ring of R descriptor numbers (P pushes, C pops).
 *
 * A descriptor's life: FREE --P--> PENDING --C--> DONE | ERROR --P--> FREE. Only the main
 * thread allocates descriptors (from two pools: R_SYNC for blocking reads, the rest for async
 * reads, so a blocking read never waits for an async read's continuation to run), so the
 * submit ring never holds more than R numbers: 0 <= submitHead - submitTail <= R.
 *
 * The worker writes the page straight into the frame (segments are SharedArrayBuffers), marks
 * the descriptor, bumps DONE (the counter blocking readers wait on; bumps are notified once per
 * microtask, so a batch costs one wake-up) and, for an async read, notifies the status word
 * its Atomics.waitAsync waits on.
 */
import { waitAsync } from './atomics-wait.js';

export const READ_SYNC_DESCRIPTORS = 32;
export const READ_ASYNC_DESCRIPTORS = 96;
/** R, a power of two: the submit ring indexes with R - 1. */
const DESCRIPTORS = READ_SYNC_DESCRIPTORS + READ_ASYNC_DESCRIPTORS;
if ((DESCRIPTORS & (DESCRIPTORS - 1)) !== 0) throw new Error('read ring descriptors must be a power of two');

// Header words.
const R_DOORBELL = 0; // (P) bumped after each submission (and by C to wake itself); C waits on it
const R_PARKED = 1; // (C) 1 while the worker waits on the doorbell
const R_SUBMIT_HEAD = 2; // (P)
const R_DONE = 3; // (C) completions; blocking readers wait on it
const R_STATE = 4; // (C) worker state, below
const R_HEARTBEAT = 5; // (C) bumped every HEARTBEAT_MS while the worker lives
const R_READS = 6; // (C) pages read from the store
const R_READ_ERRORS = 7; // (C)
const R_FROM_QUEUE = 8; // (P) pages served from the destage queue's staging (read-your-writes)
const R_READ_WAITS = 9; // (P) times the main thread blocked for the worker
const HEADER_WORDS = 16;

const DESC_WORDS = 8;
const D_STATUS = 0;
const D_SLOT = 1;
const D_SEGMENT = 2;
const D_ERR = 3;
const D_ASYNC = 4;

export const DESC_FREE = 0;
export const DESC_PENDING = 1;
export const DESC_DONE = 2;
export const DESC_ERROR = 3;

export const WORKER_STARTING = 0;
export const WORKER_READY = 1;
export const WORKER_CRASHED = 2;
export const WORKER_CLOSED = 3;

export const HEARTBEAT_MS = 100;

const DESC_BASE = HEADER_WORDS;
const SUBMIT_BASE = DESC_BASE + DESCRIPTORS * DESC_WORDS;
const INT32_WORDS = SUBMIT_BASE + DESCRIPTORS;
const OFFSETS_BYTE = Math.ceil((INT32_WORDS * 4) / 8) * 8;
const RING_BYTES = OFFSETS_BYTE + DESCRIPTORS * 8;

export interface ReadRingStats {
  /** Pages read from the store. */
  storeReads: number;
  readErrors: number;
  readsFromQueue: number;
  readWaits: number;
}

class RingView {
  readonly sab: SharedArrayBuffer;
  protected readonly i32: Int32Array;
  protected readonly offsets: Float64Array;

  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.i32 = new Int32Array(sab, 0, INT32_WORDS);
    this.offsets = new Float64Array(sab, OFFSETS_BYTE, DESCRIPTORS);
  }

  get state(): number {
    return Atomics.load(this.i32, R_STATE);
  }

  get heartbeat(): number {
    return Atomics.load(this.i32, R_HEARTBEAT);
  }

  stats(): ReadRingStats {
    return {
      storeReads: Atomics.load(this.i32, R_READS),
      readErrors: Atomics.load(this.i32, R_READ_ERRORS),
      readsFromQueue: this.i32[R_FROM_QUEUE],
      readWaits: this.i32[R_READ_WAITS],
    };
  }
}

/** The main thread's side. */
export class ReadRingProducer extends RingView {
  private readonly syncFree: Int32Array;
  private syncFreeCount: number;
  private readonly asyncFree: Int32Array;
  private asyncFreeCount: number;
  private submitHead = 0;
  private fromQueue = 0;
  private readWaits = 0;

  static create(): ReadRingProducer {
    return new ReadRingProducer(new SharedArrayBuffer(RING_BYTES));
  }

  private constructor(sab: SharedArrayBuffer) {
    super(sab);
    this.syncFree = new Int32Array(READ_SYNC_DESCRIPTORS);
    for (let i = 0; i < READ_SYNC_DESCRIPTORS; i++) this.syncFree[i] = READ_SYNC_DESCRIPTORS - 1 - i;
    this.syncFreeCount = READ_SYNC_DESCRIPTORS;
    this.asyncFree = new Int32Array(READ_ASYNC_DESCRIPTORS);
    for (let i = 0; i < READ_ASYNC_DESCRIPTORS; i++) this.asyncFree[i] = DESCRIPTORS - 1 - i;
    this.asyncFreeCount = READ_ASYNC_DESCRIPTORS;
  }

  get syncFreeDescriptors(): number {
    return this.syncFreeCount;
  }

  /** A free blocking-read descriptor; the caller checked syncFreeDescriptors > 0. */
  takeSync(): number {
    return this.syncFree[--this.syncFreeCount];
  }

  /** A free async-read descriptor, or -1 when all are in use. */
  takeAsync(): number {
    return this.asyncFreeCount === 0 ? -1 : this.asyncFree[--this.asyncFreeCount];
  }

  release(d: number): void {
    Atomics.store(this.i32, DESC_BASE + d * DESC_WORDS + D_STATUS, DESC_FREE);
    if (d < READ_SYNC_DESCRIPTORS) this.syncFree[this.syncFreeCount++] = d;
    else this.asyncFree[this.asyncFreeCount++] = d;
  }

  /** Fills descriptor d and publishes it (the worker sees it at the next doorbell). */
  submit(d: number, slot: number, segment: number, offset: number): void {
    const i32 = this.i32;
    const base = DESC_BASE + d * DESC_WORDS;
    i32[base + D_SLOT] = slot;
    i32[base + D_SEGMENT] = segment;
    i32[base + D_ERR] = 0;
    i32[base + D_ASYNC] = d >= READ_SYNC_DESCRIPTORS ? 1 : 0;
    this.offsets[d] = offset;
    Atomics.store(i32, base + D_STATUS, DESC_PENDING);
    i32[SUBMIT_BASE + (this.submitHead & (DESCRIPTORS - 1))] = d;
    this.submitHead = (this.submitHead + 1) | 0;
    Atomics.store(i32, R_SUBMIT_HEAD, this.submitHead);
  }

  /** Wakes the worker's read loop if it sleeps. */
  ring(): void {
    Atomics.add(this.i32, R_DOORBELL, 1);
    if (Atomics.load(this.i32, R_PARKED) !== 0) Atomics.notify(this.i32, R_DOORBELL, 1);
  }

  status(d: number): number {
    return Atomics.load(this.i32, DESC_BASE + d * DESC_WORDS + D_STATUS);
  }

  errorCode(d: number): number {
    return this.i32[DESC_BASE + d * DESC_WORDS + D_ERR];
  }

  slot(d: number): number {
    return this.i32[DESC_BASE + d * DESC_WORDS + D_SLOT];
  }

  /** The completion counter a blocking reader passes to waitDone. */
  done(): number {
    return Atomics.load(this.i32, R_DONE);
  }

  /** Blocks while the completion counter is `seen`, at most sliceMs; returns false on timeout. */
  waitDone(seen: number, sliceMs: number): boolean {
    return Atomics.wait(this.i32, R_DONE, seen, sliceMs) !== 'timed-out';
  }

  /** Waits (without blocking) while descriptor d is PENDING, at most sliceMs. */
  async waitStatus(d: number, sliceMs: number): Promise<void> {
    const r = waitAsync(this.i32, DESC_BASE + d * DESC_WORDS + D_STATUS, DESC_PENDING, sliceMs);
    if (r.async) await r.value;
  }

  /** Waits (without blocking) while the completion counter is `seen`, at most sliceMs. */
  async waitDoneAsync(seen: number, sliceMs: number): Promise<void> {
    const r = waitAsync(this.i32, R_DONE, seen, sliceMs);
    if (r.async) await r.value;
  }

  countFromQueue(): void {
    this.i32[R_FROM_QUEUE] = ++this.fromQueue;
  }

  countWait(): void {
    this.i32[R_READ_WAITS] = ++this.readWaits;
  }
}

/** The worker's side. */
export class ReadRingConsumer extends RingView {
  private submitTail = 0;
  private notifyPending = false;
  private readonly notifyDone = (): void => {
    this.notifyPending = false;
    Atomics.notify(this.i32, R_DONE);
  };

  constructor(sab: SharedArrayBuffer) {
    super(sab);
    this.submitTail = Atomics.load(this.i32, R_SUBMIT_HEAD);
  }

  /** The next submitted descriptor, or -1. */
  take(): number {
    if (this.submitTail === Atomics.load(this.i32, R_SUBMIT_HEAD)) return -1;
    const d = this.i32[SUBMIT_BASE + (this.submitTail & (DESCRIPTORS - 1))];
    this.submitTail = (this.submitTail + 1) | 0;
    return d;
  }

  /** Whether a submission waits (cheap: one load). */
  get hasWork(): boolean {
    return this.submitTail !== Atomics.load(this.i32, R_SUBMIT_HEAD);
  }

  slot(d: number): number {
    return this.i32[DESC_BASE + d * DESC_WORDS + D_SLOT];
  }

  segment(d: number): number {
    return this.i32[DESC_BASE + d * DESC_WORDS + D_SEGMENT];
  }

  offset(d: number): number {
    return this.offsets[d];
  }

  /** Marks d DONE (code 0) or ERROR with a code number, and wakes its waiter. */
  complete(d: number, codeNumber: number): void {
    const i32 = this.i32;
    const base = DESC_BASE + d * DESC_WORDS;
    if (codeNumber === 0) {
      Atomics.add(i32, R_READS, 1);
      Atomics.store(i32, base + D_STATUS, DESC_DONE);
    } else {
      i32[base + D_ERR] = codeNumber;
      Atomics.add(i32, R_READ_ERRORS, 1);
      Atomics.store(i32, base + D_STATUS, DESC_ERROR);
    }
    Atomics.add(i32, R_DONE, 1);
    if (i32[base + D_ASYNC] !== 0) Atomics.notify(i32, base + D_STATUS);
    if (!this.notifyPending) {
      this.notifyPending = true;
      queueMicrotask(this.notifyDone);
    }
  }

  doorbell(): number {
    return Atomics.load(this.i32, R_DOORBELL);
  }

  async waitDoorbell(seen: number): Promise<void> {
    Atomics.store(this.i32, R_PARKED, 1);
    const r = waitAsync(this.i32, R_DOORBELL, seen);
    if (r.async) await r.value;
    Atomics.store(this.i32, R_PARKED, 0);
  }

  /** Wakes the read loop from the worker's own thread (to stop it). */
  wake(): void {
    Atomics.add(this.i32, R_DOORBELL, 1);
    Atomics.notify(this.i32, R_DOORBELL);
  }

  setState(state: number): void {
    Atomics.store(this.i32, R_STATE, state);
  }

  beat(): void {
    Atomics.add(this.i32, R_HEARTBEAT, 1);
  }

  /** Wakes every waiter on this ring (the worker is dying or closing). */
  wakeAll(): void {
    Atomics.notify(this.i32, R_DONE);
    for (let d = 0; d < DESCRIPTORS; d++) Atomics.notify(this.i32, DESC_BASE + d * DESC_WORDS + D_STATUS);
  }
}
