/**
 * The destage queue: one bounded logical queue through which evicted pages (writes) and freed
 * swap slots (discards) travel from the pager to its page store (seed 004: a write destager
 * and a delete destager drain one logical queue whose delete slots adapt).
 *
 * Hand-written on purpose: this is the product's data path between the program and its store.
 *
 * Everything lives in ONE SharedArrayBuffer so the producer (the main thread: the pager, which
 * evicts synchronously inside ordinary calls) and the consumer (the destager, in the store's
 * worker thread) work on the same memory with Atomics:
 *
 *   header     HEADER_WORDS int32 words; each word has exactly one writer (P = producer,
 *              C = consumer), so counters need no read-modify-write across threads.
 *   entries    Q records of ENTRY_WORDS int32: state, op, slot, seq, err.
 *   submit     an int32 ring of Q entry numbers, in sequence order (P pushes, C pops).
 *   complete   an int32 ring of Q entry numbers, in completion order (C pushes, P pops).
 *   staging    Q * pageSize bytes: entry e's payload is at staging[e * pageSize].
 *
 * Entry life:  FREE --P--> QUEUED --C--> IN_FLIGHT --C--> DONE | FAILED --P--> FREE.
 * Only the producer allocates and frees entries; the consumer only moves them forward. A write's
 * payload is copied into its staging buffer at admission, so the caller's frame can be reused at
 * once, and it stays there until the producer frees the entry, so the producer can serve reads
 * of a slot whose write has not reached the store (read-your-writes). A FAILED entry is kept
 * while it is the newest operation of its slot: the program still reads its bytes from staging.
 *
 * Both rings hold at most Q numbers because an entry is pushed once per life:
 *   0 <= submitHead - submitTail <= Q  and  0 <= completeHead - completeTail <= Q.
 * Occupancy (entries not FREE) never exceeds Q, and highWater records its maximum:
 *   writesLive + deletesLive + failedHeld + free == Q.
 *
 * Ordering: every admitted operation gets the next sequence number and is pushed to the submit
 * ring in that order; the destager starts an entry only when no earlier entry for the same slot
 * is QUEUED or IN_FLIGHT (see destager.ts). Discards that found no admissible entry wait in a
 * producer-side backlog and get their sequence number when admitted; that is safe because a
 * backlogged discard is always the newest operation of its slot (a later write to the slot
 * cancels it, a later discard of it is a no-op).
 *
 * After a failure. The first failed store operation makes the store failed for good: no write
 * is admitted again (the call that needed one throws STORE_FAILED and changes nothing), and
 * only a failed WRITE is kept (its bytes are what the program last gave the slot); a failed
 * discard is freed at once (nobody refers to its slot). Discards are no longer sent at all:
 * they are dropped, and so is the backlog, so freeing a space full of swapped pages costs no
 * store round trips and nothing waits behind entries that will never be freed. flush() then
 * rejects at once. What a failed store still does is serve reads of slots that reached it.
 */
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import { waitAsync } from './atomics-wait.js';
import { MISSING, SlotMap } from './slot-map.js';

// Entry states.
export const ENTRY_FREE = 0;
export const ENTRY_QUEUED = 1;
export const ENTRY_IN_FLIGHT = 2;
export const ENTRY_DONE = 3;
export const ENTRY_FAILED = 4;

// Operations.
export const OP_WRITE = 1;
export const OP_DISCARD = 2;

export const QUEUE_ENTRIES_DEFAULT = 256;
export const QUEUE_ENTRIES_MAX = 65536;

// Header words. (P) written by the producer only, (C) by the consumer only.
const H_ENTRIES = 0; // layout: Q
const H_PAGE_SIZE = 1; // layout: pageSize
const H_SUBMIT_HEAD = 2; // (P) entries pushed to the submit ring
const H_COMPLETE_HEAD = 3; // (C) entries pushed to the completion ring: the counter blocked writers wait on
const H_DOORBELL = 4; // (P) bumped after each submission or request (and by C to wake itself); C waits on it
const H_CONSUMER_PARKED = 5; // (C) 1 while the consumer waits on the doorbell
const H_OCCUPIED = 6; // (P) entries not FREE
const H_HIGH_WATER = 7; // (P) maximum of H_OCCUPIED
const H_DELETE_SLOTS = 8; // (P) current delete allowance
const H_BACKLOG = 9; // (P) discards waiting in the backlog
const H_BLOCKED = 10; // (P) writes waiting for an entry
const H_WRITE_WAITS = 11; // (P) times a write had to wait
const H_WRITES_LIVE = 12; // (P)
const H_DELETES_LIVE = 13; // (P)
const H_SUPERSEDED = 14; // (P) operations dropped because a later one on the same slot made them moot
const H_FLUSH_REQ = 15; // (P) number of the latest flush request
const H_FLUSH_TARGET = 16; // (P) that flush's barrier: the last sequence number before it
const H_FLUSH_DONE = 17; // (C) number of the latest flush completed
const H_FAILED_CODE = 18; // (C) first failure (error code number), 0 while none
const H_FAILED_SLOT = 19; // (C) slot of the first failure, -1 for a store flush
const H_WRITES_DONE = 20; // (C) writes that reached the store
const H_DISCARDS_DONE = 21; // (C) discards that reached the store
const H_OPS_FAILED = 22; // (C)
const H_STOP = 23; // (P) the consumer should stop
const H_DROPPED = 24; // (P) discards never sent: the store had failed, or the queue was retired
const HEADER_WORDS = 32;

// Entry fields.
const ENTRY_WORDS = 8;
const E_STATE = 0;
const E_OP = 1;
const E_SLOT = 2;
const E_SEQ = 3;
const E_ERR = 4;

const STAGING_ALIGN = 64;
const WAIT_SLICE_MS_DEFAULT = 50;
const BACKLOG_INITIAL = 256;
/** Backlogged discards are stored in the newest-operation map as BACKLOG_BASE - ring index. */
const BACKLOG_BASE = -2;

/** Error codes travel through shared memory as small numbers: index in ErrorCodes + 1. */
const CODE_LIST = Object.values(ErrorCodes) as ErrorCode[];

export function errorCodeNumber(code: unknown): number {
  const i = CODE_LIST.indexOf(code as ErrorCode);
  return i < 0 ? CODE_LIST.indexOf(ErrorCodes.STORE_FAILED) + 1 : i + 1;
}

export function errorCodeFromNumber(n: number): ErrorCode {
  return CODE_LIST[n - 1] ?? ErrorCodes.STORE_FAILED;
}

/** The error code of anything a store rejected with (STORE_FAILED when it carries none). */
export function errorCodeOf(error: unknown): ErrorCode {
  return error instanceof MemfabricError ? error.code : ErrorCodes.STORE_FAILED;
}

/** Sequence numbers are int32 and wrap: a precedes-or-equals b. */
export function seqLE(a: number, b: number): boolean {
  return ((a - b) | 0) <= 0;
}

interface Layout {
  entries: number;
  pageSize: number;
  entryBase: number; // int32 index of entry 0
  submitBase: number; // int32 index of the submit ring
  completeBase: number; // int32 index of the completion ring
  stagingOffset: number; // byte offset of staging
  bytes: number;
}

function layoutOf(entries: number, pageSize: number): Layout {
  const entryBase = HEADER_WORDS;
  const submitBase = entryBase + entries * ENTRY_WORDS;
  const completeBase = submitBase + entries;
  const words = completeBase + entries;
  const stagingOffset = Math.ceil((words * 4) / STAGING_ALIGN) * STAGING_ALIGN;
  return {
    entries,
    pageSize,
    entryBase,
    submitBase,
    completeBase,
    stagingOffset,
    bytes: stagingOffset + entries * pageSize,
  };
}

function readLayout(sab: SharedArrayBuffer): Layout {
  const header = new Int32Array(sab, 0, HEADER_WORDS);
  return layoutOf(header[H_ENTRIES], header[H_PAGE_SIZE]);
}

export interface DestageQueueOptions {
  pageSize: number;
  /** Slots of the store: operations name a slot in [0, slots). */
  slots: number;
  /** Q, a power of two. Default 256. */
  entries?: number;
  /** Entries the delete allowance never drops below (default Q/16, at least 1). */
  deleteFloor?: number;
  /** Entries always left to writes (default Q/4, at least 1). */
  writeFloor?: number;
  /** Longest single Atomics wait; liveness is checked between slices. Default 50 ms. */
  waitSliceMs?: number;
  /** Called between wait slices and before admitting; throws when the consumer is gone. */
  checkConsumer?: () => void;
  /** Words for the first failure's message (the consumer knows the store's message). */
  failureDetail?: () => string | undefined;
  /** The error underneath the first failure, for its `cause`. */
  failureCause?: () => unknown;
  /** Told true when an asynchronous wait starts and false when it ends (to ref a worker). */
  keepAlive?: (waiting: boolean) => void;
}

export interface DestageQueueStats {
  entries: number;
  /** Entries not FREE now. */
  queued: number;
  queueHighWater: number;
  deleteSlots: number;
  backlog: number;
  blockedWrites: number;
  writeWaits: number;
  writesLive: number;
  deletesLive: number;
  superseded: number;
  /** Discards never sent to the store because it had failed (or the queue was retired). */
  dropped: number;
  writesDone: number;
  discardsDone: number;
  failed: number;
}

interface AsyncWriter {
  slot: number;
  src: Uint8Array;
  resolve: () => void;
  reject: (error: unknown) => void;
}

function checkEntries(entries: number): void {
  if (
    !Number.isInteger(entries) ||
    entries < 4 ||
    entries > QUEUE_ENTRIES_MAX ||
    (entries & (entries - 1)) !== 0
  ) {
    throw invalidArgument(
      `queue entries must be a power of two from 4 to ${QUEUE_ENTRIES_MAX}, got ${entries}`,
    );
  }
}

/**
 * The producer side: admission, the discard backlog, read-your-writes lookups and flush.
 *
 * Admission policy for deletes. Deletes may hold at most `deleteSlots` entries, recomputed at
 * every admission decision from the pending work of each kind:
 *
 *   pendingWrites  = writes in the queue + writes blocked waiting for an entry
 *   pendingDeletes = discards in the queue + discards in the backlog
 *   deleteSlots    = clamp(ceil(Q * pendingDeletes / (pendingWrites + pendingDeletes)),
 *                          deleteFloor, Q - writeFloor)
 *
 * and writes may take a free entry only beyond those still reserved for waiting discards
 * (min(deleteSlots, pendingDeletes) - deletesLive). Why: the queue is shared, so each kind gets
 * a share proportional to its demand; the floor keeps deletes from starving under a write storm
 * (freed store space is eventually reclaimed, and a discard never waits behind an unbounded
 * number of writes), and the ceiling keeps at least writeFloor entries for writes, because a
 * write that finds no entry blocks the program (evictions happen inside synchronous calls)
 * while a discard only waits in the backlog. Entries already held are never taken back: when
 * the allowance shrinks, deletes above it drain before new ones are admitted.
 */
export class DestageQueue {
  readonly sab: SharedArrayBuffer;
  readonly entries: number;
  readonly pageSize: number;
  readonly slots: number;
  readonly deleteFloor: number;
  readonly writeFloor: number;

  private readonly i32: Int32Array;
  private readonly staging: Buffer;
  private readonly layout: Layout;
  private readonly mask: number;
  private readonly waitSliceMs: number;
  private readonly checkConsumer: (() => void) | undefined;
  private readonly failureDetail: (() => string | undefined) | undefined;
  private readonly failureCause: (() => unknown) | undefined;
  private readonly keepAlive: ((waiting: boolean) => void) | undefined;

  /** Free entries, a stack. */
  private readonly free: Int32Array;
  private freeCount: number;
  /** 1 for a completed FAILED entry kept because it is the newest operation of its slot. */
  private readonly heldFailed: Uint8Array;
  private failedHeld = 0;
  /**
   * Newest pending operation of each slot that has one: an entry number (>= 0), or
   * BACKLOG_BASE - i for a discard at backlog ring index i.
   */
  private readonly newest: SlotMap;
  private writesLive = 0;
  private deletesLive = 0;
  private deleteSlots: number;
  private seq = 0;
  private submitHead = 0;
  private completeTail = 0;
  private occupied = 0;
  private highWater = 0;
  private blocked = 0;
  private writeWaits = 0;
  private superseded = 0;
  private dropped = 0;

  /** The discard backlog: a growable power-of-two ring of slots; -1 marks a cancelled one. */
  private backlog: Int32Array;
  private backlogHead = 0; // absolute positions (plain numbers: exact to 2^53)
  private backlogTail = 0;
  private backlogLive = 0;
  /** Backlog position a flush waits to pass (-1 when none): everything queued before it. */
  private flushBacklogEnd = -1;

  private readonly asyncWriters: AsyncWriter[] = [];
  private pumping = false;
  private flushIssued = 0;
  private flushChain: Promise<void> = Promise.resolve();
  private closed = false;

  static create(options: DestageQueueOptions): DestageQueue {
    const entries = options.entries ?? QUEUE_ENTRIES_DEFAULT;
    checkEntries(entries);
    if (!Number.isInteger(options.pageSize) || options.pageSize <= 0 || options.pageSize % 8 !== 0) {
      throw invalidArgument(`pageSize must be a positive multiple of 8, got ${options.pageSize}`);
    }
    const layout = layoutOf(entries, options.pageSize);
    const sab = new SharedArrayBuffer(layout.bytes);
    const header = new Int32Array(sab, 0, HEADER_WORDS);
    header[H_ENTRIES] = entries;
    header[H_PAGE_SIZE] = options.pageSize;
    return new DestageQueue(sab, options);
  }

  private constructor(sab: SharedArrayBuffer, options: DestageQueueOptions) {
    this.sab = sab;
    this.layout = readLayout(sab);
    this.entries = this.layout.entries;
    this.pageSize = this.layout.pageSize;
    if (!Number.isInteger(options.slots) || options.slots <= 0) {
      throw invalidArgument(`slots must be a positive integer, got ${options.slots}`);
    }
    this.slots = options.slots;
    const q = this.entries;
    this.deleteFloor = options.deleteFloor ?? Math.max(1, q >>> 4);
    this.writeFloor = options.writeFloor ?? Math.max(1, q >>> 2);
    if (this.deleteFloor < 1 || this.writeFloor < 1 || this.deleteFloor + this.writeFloor > q) {
      throw invalidArgument(
        `deleteFloor (${this.deleteFloor}) and writeFloor (${this.writeFloor}) must be >= 1 and sum to at most ${q}`,
      );
    }
    this.i32 = new Int32Array(sab, 0, this.layout.completeBase + q);
    this.staging = Buffer.from(sab, this.layout.stagingOffset, q * this.pageSize);
    this.mask = q - 1;
    this.waitSliceMs = options.waitSliceMs ?? WAIT_SLICE_MS_DEFAULT;
    this.checkConsumer = options.checkConsumer;
    this.failureDetail = options.failureDetail;
    this.failureCause = options.failureCause;
    this.keepAlive = options.keepAlive;
    this.free = new Int32Array(q);
    for (let e = 0; e < q; e++) this.free[e] = q - 1 - e;
    this.freeCount = q;
    this.heldFailed = new Uint8Array(q);
    this.newest = new SlotMap(q * 2);
    this.backlog = new Int32Array(BACKLOG_INITIAL);
    this.deleteSlots = this.deleteFloor;
    this.i32[H_DELETE_SLOTS] = this.deleteSlots;
  }

  // ---------------------------------------------------------------- writes

  /**
   * Copies `src` (pageSize bytes) into a queue entry for `slot`. Blocks (Atomics.wait on the
   * completion counter) only while no entry is admissible. Throws STORE_FAILED, changing
   * nothing, once the store has failed an operation; STORE_CLOSED after close.
   */
  enqueueWrite(slot: number, src: Uint8Array): void {
    this.checkWrite(slot, src);
    if (this.asyncWriters.length > 0) this.dropAsyncWriter(slot);
    this.pump();
    if (!this.writeAdmissible()) this.blockForWrite();
    this.admitWrite(slot, src);
    this.ring();
  }

  /**
   * Like enqueueWrite without blocking the thread: resolves once the bytes are in the queue
   * (src must stay unchanged until then). A later operation on the same slot while it waits
   * supersedes it: it resolves without writing.
   */
  enqueueWriteAsync(slot: number, src: Uint8Array): Promise<void> {
    try {
      this.checkWrite(slot, src);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.asyncWriters.length > 0) this.dropAsyncWriter(slot);
    this.pump();
    if (this.asyncWriters.length === 0 && this.writeAdmissible()) {
      this.admitWrite(slot, src);
      this.ring();
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.asyncWriters.push({ slot, src, resolve, reject });
      this.blocked++;
      this.writeWaits++;
      this.i32[H_BLOCKED] = this.blocked;
      this.i32[H_WRITE_WAITS] = this.writeWaits;
      this.startPumping();
    });
  }

  /** Whether a write could be admitted now without waiting. */
  writeAdmissible(): boolean {
    this.recomputeDeleteSlots();
    const pendingDeletes = this.deletesLive + this.backlogLive;
    const reserved = Math.max(0, Math.min(this.deleteSlots, pendingDeletes) - this.deletesLive);
    return this.freeCount > reserved;
  }

  private checkWrite(slot: number, src: Uint8Array): void {
    this.checkOpen();
    this.checkSlot(slot);
    if (src.length !== this.pageSize) {
      throw invalidArgument(`a page write takes exactly ${this.pageSize} bytes, got ${src.length}`);
    }
    if (Atomics.load(this.i32, H_FAILED_CODE) !== 0) throw this.failureError();
  }

  private blockForWrite(): void {
    this.blocked++;
    this.writeWaits++;
    this.i32[H_BLOCKED] = this.blocked;
    this.i32[H_WRITE_WAITS] = this.writeWaits;
    try {
      for (;;) {
        const seen = Atomics.load(this.i32, H_COMPLETE_HEAD);
        this.pump();
        if (Atomics.load(this.i32, H_FAILED_CODE) !== 0) throw this.failureError();
        if (this.writeAdmissible()) return;
        Atomics.wait(this.i32, H_COMPLETE_HEAD, seen, this.waitSliceMs);
        this.checkConsumer?.();
        this.checkOpen();
      }
    } finally {
      this.blocked--;
      this.i32[H_BLOCKED] = this.blocked;
    }
  }

  private admitWrite(slot: number, src: Uint8Array): void {
    const e = this.takeEntry();
    this.replaceNewest(slot);
    this.staging.set(src, e * this.pageSize);
    this.writesLive++;
    this.i32[H_WRITES_LIVE] = this.writesLive;
    this.submit(e, OP_WRITE, slot);
  }

  // ---------------------------------------------------------------- discards

  /** Queues forgetting `slot`. Never blocks: with no admissible entry it waits in the backlog. */
  enqueueDiscard(slot: number): void {
    this.checkOpen();
    this.checkSlot(slot);
    if (this.asyncWriters.length > 0) this.dropAsyncWriter(slot);
    if (this.hasFailed) {
      // A failed store is sent no more discards (see the overview): forget the slot here.
      this.replaceNewest(slot);
      this.countDropped(1);
      return;
    }
    const prev = this.newest.get(slot);
    if (prev !== MISSING) {
      // Already being discarded: the pending discard makes the slot read as zeros.
      if (
        prev < 0 ||
        (this.heldFailed[prev] === 0 && this.i32[this.entryIndex(prev) + E_OP] === OP_DISCARD)
      ) {
        this.superseded++;
        this.i32[H_SUPERSEDED] = this.superseded;
        return;
      }
    }
    this.pump();
    if (this.backlogLive === 0 && this.deleteAdmissible()) {
      this.admitDiscard(slot);
      this.ring();
    } else {
      this.replaceNewest(slot);
      this.backlogPush(slot);
      this.startPumping();
    }
  }

  private deleteAdmissible(): boolean {
    this.recomputeDeleteSlots();
    return this.freeCount > 0 && this.deletesLive < this.deleteSlots;
  }

  private admitDiscard(slot: number): void {
    const e = this.takeEntry();
    this.replaceNewest(slot);
    this.deletesLive++;
    this.i32[H_DELETES_LIVE] = this.deletesLive;
    this.submit(e, OP_DISCARD, slot);
  }

  private backlogPush(slot: number): void {
    if (this.backlogTail - this.backlogHead === this.backlog.length) this.growBacklog();
    const i = this.backlogTail & (this.backlog.length - 1);
    this.backlog[i] = slot;
    this.backlogTail++;
    this.backlogLive++;
    this.i32[H_BACKLOG] = this.backlogLive;
    this.newest.set(slot, BACKLOG_BASE - i);
  }

  /**
   * Called when the backlog ring is full: drops cancelled discards, and doubles the ring when
   * more than half of it is live. The ring never holds more than 2 * slots positions, since
   * live discards name distinct slots. Ring indices change, so the map of newest operations is
   * updated, and so is the barrier of a flush waiting for the backlog (it counts positions).
   */
  private growBacklog(): void {
    const old = this.backlog;
    const oldMask = old.length - 1;
    const length = this.backlogLive * 2 > old.length ? old.length * 2 : old.length;
    const next = new Int32Array(length);
    const mask = length - 1;
    const barrier = this.flushBacklogEnd;
    let q = this.backlogHead;
    let newBarrier = barrier;
    for (let p = this.backlogHead; p < this.backlogTail; p++) {
      if (p === barrier) newBarrier = q;
      const slot = old[p & oldMask];
      if (slot < 0) continue;
      next[q & mask] = slot;
      this.newest.set(slot, BACKLOG_BASE - (q & mask));
      q++;
    }
    if (barrier === this.backlogTail) newBarrier = q;
    this.flushBacklogEnd = newBarrier;
    this.backlogTail = q;
    this.backlog = next;
  }

  /** Admits backlogged discards, oldest first, while the delete allowance has room. */
  private admitBacklog(): boolean {
    let admitted = false;
    const mask = this.backlog.length - 1;
    while (this.backlogHead !== this.backlogTail) {
      const slot = this.backlog[this.backlogHead & mask];
      if (slot < 0) {
        this.backlogHead++;
        continue;
      }
      if (!this.deleteAdmissible()) break;
      this.backlogHead++;
      this.backlogLive--;
      this.i32[H_BACKLOG] = this.backlogLive;
      this.newest.delete(slot);
      this.admitDiscard(slot);
      admitted = true;
    }
    return admitted;
  }

  // ---------------------------------------------------------------- shared bookkeeping

  private checkOpen(): void {
    if (this.closed) {
      throw new MemfabricError(ErrorCodes.STORE_CLOSED, 'the page store channel is closed; open a new one');
    }
  }

  private checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots) {
      throw outOfRange(`slot ${slot} is outside the store's [0, ${this.slots})`);
    }
  }

  private entryIndex(e: number): number {
    return this.layout.entryBase + e * ENTRY_WORDS;
  }

  private takeEntry(): number {
    const e = this.free[--this.freeCount];
    this.occupied++;
    if (this.occupied > this.highWater) {
      this.highWater = this.occupied;
      this.i32[H_HIGH_WATER] = this.highWater;
    }
    this.i32[H_OCCUPIED] = this.occupied;
    return e;
  }

  private freeEntry(e: number): void {
    Atomics.store(this.i32, this.entryIndex(e) + E_STATE, ENTRY_FREE);
    this.free[this.freeCount++] = e;
    this.occupied--;
    this.i32[H_OCCUPIED] = this.occupied;
  }

  /**
   * A new operation on `slot` is about to become its newest: whatever it supersedes that the
   * producer still holds goes (a kept FAILED entry is freed, a backlogged discard is cancelled).
   * Live entries stay: the destager orders them by sequence.
   */
  private replaceNewest(slot: number): void {
    const prev = this.newest.get(slot);
    if (prev === MISSING) return;
    if (prev < 0) {
      this.backlog[BACKLOG_BASE - prev] = -1;
      this.backlogLive--;
      this.i32[H_BACKLOG] = this.backlogLive;
      this.superseded++;
      this.i32[H_SUPERSEDED] = this.superseded;
    } else if (this.heldFailed[prev] === 1) {
      this.heldFailed[prev] = 0;
      this.failedHeld--;
      this.freeEntry(prev);
    }
    this.newest.delete(slot);
  }

  private submit(e: number, op: number, slot: number): void {
    const base = this.entryIndex(e);
    this.seq = (this.seq + 1) | 0;
    const i32 = this.i32;
    i32[base + E_OP] = op;
    i32[base + E_SLOT] = slot;
    i32[base + E_SEQ] = this.seq;
    i32[base + E_ERR] = 0;
    Atomics.store(i32, base + E_STATE, ENTRY_QUEUED);
    this.newest.set(slot, e);
    i32[this.layout.submitBase + (this.submitHead & this.mask)] = e;
    this.submitHead = (this.submitHead + 1) | 0;
    Atomics.store(i32, H_SUBMIT_HEAD, this.submitHead);
  }

  /** Wakes the consumer if it sleeps. */
  private ring(): void {
    Atomics.add(this.i32, H_DOORBELL, 1);
    if (Atomics.load(this.i32, H_CONSUMER_PARKED) !== 0) Atomics.notify(this.i32, H_DOORBELL);
  }

  private recomputeDeleteSlots(): void {
    const pendingWrites = this.writesLive + this.blocked;
    const pendingDeletes = this.deletesLive + this.backlogLive;
    const total = pendingWrites + pendingDeletes;
    if (total === 0) return;
    const q = this.entries;
    const share = Math.ceil((q * pendingDeletes) / total);
    const slots = Math.min(q - this.writeFloor, Math.max(this.deleteFloor, share));
    if (slots !== this.deleteSlots) {
      this.deleteSlots = slots;
      this.i32[H_DELETE_SLOTS] = slots;
    }
  }

  /** Takes in completions and admits backlogged discards. Cheap when nothing changed. */
  pump(): void {
    if (this.backlogLive > 0 && this.hasFailed) this.dropBacklog();
    let admittedAny = false;
    if (Atomics.load(this.i32, H_COMPLETE_HEAD) !== this.completeTail) {
      this.drainCompletions();
      if (this.backlogLive > 0) admittedAny = this.admitBacklog();
    } else if (this.backlogLive > 0 && this.freeCount > 0) {
      admittedAny = this.admitBacklog();
    }
    if (admittedAny) this.ring();
  }

  private drainCompletions(): void {
    const i32 = this.i32;
    const head = Atomics.load(i32, H_COMPLETE_HEAD);
    const completeBase = this.layout.completeBase;
    while (this.completeTail !== head) {
      const e = i32[completeBase + (this.completeTail & this.mask)];
      this.completeTail = (this.completeTail + 1) | 0;
      const base = this.entryIndex(e);
      const state = Atomics.load(i32, base + E_STATE);
      const slot = i32[base + E_SLOT];
      if (i32[base + E_OP] === OP_WRITE) this.writesLive--;
      else this.deletesLive--;
      const isNewest = this.newest.get(slot) === e;
      // Only a failed write holds bytes the program may still read (see the overview).
      if (state === ENTRY_FAILED && isNewest && i32[base + E_OP] === OP_WRITE) {
        this.heldFailed[e] = 1;
        this.failedHeld++;
      } else {
        if (isNewest) this.newest.delete(slot);
        this.freeEntry(e);
      }
    }
    i32[H_WRITES_LIVE] = this.writesLive;
    i32[H_DELETES_LIVE] = this.deletesLive;
  }

  // ---------------------------------------------------------------- async pumping

  private startPumping(): void {
    if (this.pumping) return;
    this.pumping = true;
    void this.pumpLoop();
  }

  /**
   * One asynchronous loop on the main thread admits backlogged discards and waiting async
   * writes as completions arrive (Atomics.waitAsync on the completion counter).
   */
  private async pumpLoop(): Promise<void> {
    this.keepAlive?.(true);
    try {
      while (!this.closed && (this.backlogLive > 0 || this.asyncWriters.length > 0)) {
        const seen = Atomics.load(this.i32, H_COMPLETE_HEAD);
        this.pump();
        let admitted = false;
        while (this.asyncWriters.length > 0) {
          if (Atomics.load(this.i32, H_FAILED_CODE) !== 0) {
            this.rejectAsyncWriters(this.failureError());
            break;
          }
          if (!this.writeAdmissible()) break;
          const w = this.asyncWriters.shift()!;
          this.blocked--;
          this.i32[H_BLOCKED] = this.blocked;
          this.admitWrite(w.slot, w.src);
          admitted = true;
          w.resolve();
        }
        if (admitted) this.ring();
        if (this.backlogLive === 0 && this.asyncWriters.length === 0) break;
        const r = waitAsync(this.i32, H_COMPLETE_HEAD, seen, this.waitSliceMs);
        if (r.async) await r.value;
        try {
          this.checkConsumer?.();
        } catch (error) {
          this.rejectAsyncWriters(error);
          break;
        }
      }
    } finally {
      this.pumping = false;
      this.keepAlive?.(false);
    }
  }

  private dropAsyncWriter(slot: number): void {
    const writers = this.asyncWriters;
    for (let i = 0; i < writers.length; i++) {
      if (writers[i].slot === slot) {
        const w = writers[i];
        writers.splice(i, 1);
        this.blocked--;
        this.i32[H_BLOCKED] = this.blocked;
        this.superseded++;
        this.i32[H_SUPERSEDED] = this.superseded;
        w.resolve();
        return;
      }
    }
  }

  private rejectAsyncWriters(error: unknown): void {
    const writers = this.asyncWriters.splice(0);
    this.blocked -= writers.length;
    this.i32[H_BLOCKED] = this.blocked;
    for (const w of writers) w.reject(error);
  }

  // ---------------------------------------------------------------- reads

  /**
   * Read-your-writes: when `slot` has a pending operation, writes what the program last gave
   * it into dst[dstOffset, dstOffset + pageSize) (the newest write's staged bytes, or zeros
   * after a discard) and returns true. Returns false when the store must be asked.
   */
  lookup(slot: number, dst: Uint8Array, dstOffset: number): boolean {
    this.pump();
    if (this.asyncWriters.length > 0) {
      for (let i = this.asyncWriters.length - 1; i >= 0; i--) {
        const w = this.asyncWriters[i];
        if (w.slot === slot) {
          dst.set(w.src, dstOffset);
          return true;
        }
      }
    }
    const e = this.newest.get(slot);
    if (e === MISSING) return false;
    if (e < 0 || this.i32[this.entryIndex(e) + E_OP] === OP_DISCARD) {
      dst.fill(0, dstOffset, dstOffset + this.pageSize);
      return true;
    }
    const from = e * this.pageSize;
    this.staging.copy(dst, dstOffset, from, from + this.pageSize);
    return true;
  }

  // ---------------------------------------------------------------- flush

  /**
   * Waits until every operation queued before the call (backlog included) reached the store,
   * then until the consumer flushed the store. Throws the first failure (STORE_FAILED).
   */
  flushSync(): void {
    this.checkOpen();
    if (this.hasFailed) throw this.failureError();
    // No discard can join the backlog during this call, so an empty backlog is the barrier.
    for (;;) {
      const seen = Atomics.load(this.i32, H_COMPLETE_HEAD);
      this.pump();
      if (this.hasFailed) throw this.failureError();
      if (this.backlogLive === 0) break;
      Atomics.wait(this.i32, H_COMPLETE_HEAD, seen, this.waitSliceMs);
      this.checkConsumer?.();
    }
    this.waitFlushSync(this.flushIssued);
    const request = this.requestFlush();
    this.waitFlushSync(request);
    this.pump();
    if (Atomics.load(this.i32, H_FAILED_CODE) !== 0) throw this.failureError();
  }

  flush(): Promise<void> {
    const run = this.flushChain.then(() => this.flushAsync());
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  private async flushAsync(): Promise<void> {
    this.checkOpen();
    // A failed store makes nothing durable any more: say so at once (see the overview).
    if (this.hasFailed) throw this.failureError();
    // Discards may join the backlog while this waits; the barrier is the backlog's tail now
    // (flushes run one at a time, so one barrier field suffices).
    this.flushBacklogEnd = this.backlogTail;
    this.keepAlive?.(true);
    try {
      for (;;) {
        const seen = Atomics.load(this.i32, H_COMPLETE_HEAD);
        this.pump();
        if (this.hasFailed) throw this.failureError();
        this.checkOpen();
        if (this.backlogHead >= this.flushBacklogEnd || this.backlogLive === 0) break;
        const r = waitAsync(this.i32, H_COMPLETE_HEAD, seen, this.waitSliceMs);
        if (r.async) await r.value;
        this.checkConsumer?.();
      }
      this.flushBacklogEnd = -1;
      await this.waitFlushAsync(this.flushIssued);
      const request = this.requestFlush();
      await this.waitFlushAsync(request);
    } finally {
      this.flushBacklogEnd = -1;
      this.keepAlive?.(false);
    }
    this.pump();
    if (Atomics.load(this.i32, H_FAILED_CODE) !== 0) throw this.failureError();
  }

  private requestFlush(): number {
    this.flushIssued = (this.flushIssued + 1) | 0;
    this.i32[H_FLUSH_TARGET] = this.seq;
    Atomics.store(this.i32, H_FLUSH_REQ, this.flushIssued);
    this.ring();
    return this.flushIssued;
  }

  private flushPending(request: number): boolean {
    return ((Atomics.load(this.i32, H_FLUSH_DONE) - request) | 0) < 0;
  }

  /**
   * Waits for flush `request`. A failure recorded meanwhile ends the wait at once: the flush
   * cannot succeed, and its answer must not wait for operations stuck on a failing store.
   */
  private waitFlushSync(request: number): void {
    while (this.flushPending(request)) {
      Atomics.wait(this.i32, H_FLUSH_DONE, Atomics.load(this.i32, H_FLUSH_DONE), this.waitSliceMs);
      if (this.flushPending(request)) this.checkWaiting();
    }
  }

  private async waitFlushAsync(request: number): Promise<void> {
    while (this.flushPending(request)) {
      const r = waitAsync(this.i32, H_FLUSH_DONE, Atomics.load(this.i32, H_FLUSH_DONE), this.waitSliceMs);
      if (r.async) await r.value;
      if (this.flushPending(request)) this.checkWaiting();
    }
  }

  /** Between wait slices: throws when the store failed, the queue closed or the consumer died. */
  private checkWaiting(): void {
    if (this.hasFailed) throw this.failureError();
    this.checkOpen();
    this.checkConsumer?.();
  }

  private get hasFailed(): boolean {
    return Atomics.load(this.i32, H_FAILED_CODE) !== 0;
  }

  private countDropped(count: number): void {
    this.dropped += count;
    this.i32[H_DROPPED] = this.dropped;
  }

  /** Drops every backlogged discard (the store failed or the queue is retired). */
  private dropBacklog(): void {
    const mask = this.backlog.length - 1;
    for (let p = this.backlogHead; p < this.backlogTail; p++) {
      const slot = this.backlog[p & mask];
      if (slot >= 0) this.newest.delete(slot);
    }
    this.countDropped(this.backlogLive);
    this.backlogHead = this.backlogTail;
    this.backlogLive = 0;
    this.i32[H_BACKLOG] = 0;
  }

  // ---------------------------------------------------------------- failure, close, stats

  /** The first failure the consumer recorded, or undefined. */
  failure(): MemfabricError | undefined {
    return Atomics.load(this.i32, H_FAILED_CODE) === 0 ? undefined : this.failureError();
  }

  private failureError(): MemfabricError {
    const slot = this.i32[H_FAILED_SLOT];
    const what = slot < 0 ? 'flushing the page store' : `an operation on slot ${slot}`;
    const detail = this.failureDetail?.();
    const cause = this.failureCause?.();
    return new MemfabricError(
      ErrorCodes.STORE_FAILED,
      `the page store failed ${what}${detail === undefined ? '' : `: ${detail}`}; ` +
        'it accepts no more writes (pages not yet written stay readable in memory)',
      cause === undefined ? undefined : { cause },
    );
  }

  /** Refuses further operations and asks the consumer to stop. Waiting async writes reject. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.rejectAsyncWriters(new MemfabricError(ErrorCodes.STORE_CLOSED, 'the page store channel was closed'));
    Atomics.store(this.i32, H_STOP, 1);
    Atomics.add(this.i32, H_DOORBELL, 1);
    Atomics.notify(this.i32, H_DOORBELL);
  }

  /**
   * Called once the consumer is gone (after close): takes in its last completions and lets go
   * of everything still held — kept failed writes, backlogged discards — so the queue ends
   * empty. Entries the consumer never completed (it was killed mid-operation) stay counted.
   */
  retire(): void {
    this.close();
    this.drainCompletions();
    for (let e = 0; e < this.entries; e++) {
      if (this.heldFailed[e] === 0) continue;
      this.heldFailed[e] = 0;
      this.failedHeld--;
      this.newest.delete(this.i32[this.entryIndex(e) + E_SLOT]);
      this.freeEntry(e);
    }
    if (this.backlogLive > 0) this.dropBacklog();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  stats(): DestageQueueStats {
    this.pump();
    return queueStats(this.i32);
  }
}

function queueStats(i32: Int32Array): DestageQueueStats {
  return {
    entries: i32[H_ENTRIES],
    queued: i32[H_OCCUPIED],
    queueHighWater: i32[H_HIGH_WATER],
    deleteSlots: i32[H_DELETE_SLOTS],
    backlog: i32[H_BACKLOG],
    blockedWrites: i32[H_BLOCKED],
    writeWaits: i32[H_WRITE_WAITS],
    writesLive: i32[H_WRITES_LIVE],
    deletesLive: i32[H_DELETES_LIVE],
    superseded: i32[H_SUPERSEDED],
    dropped: i32[H_DROPPED],
    writesDone: Atomics.load(i32, H_WRITES_DONE),
    discardsDone: Atomics.load(i32, H_DISCARDS_DONE),
    failed: Atomics.load(i32, H_OPS_FAILED),
  };
}

/**
 * The consumer side, used by the destager in the store's worker: pops submitted entries in
 * sequence order, moves them to IN_FLIGHT and DONE/FAILED, publishes completions, records the
 * first failure and answers flush requests.
 */
export class DestageQueueConsumer {
  readonly entries: number;
  readonly pageSize: number;
  private readonly i32: Int32Array;
  private readonly layout: Layout;
  private readonly mask: number;
  /** Entry e's staging bytes, one view per entry made once. */
  readonly staging: Uint8Array[];
  private submitTail = 0;
  private completeHead = 0;
  private flushHandled = 0;

  constructor(sab: SharedArrayBuffer) {
    this.layout = readLayout(sab);
    this.entries = this.layout.entries;
    this.pageSize = this.layout.pageSize;
    checkEntries(this.entries);
    this.i32 = new Int32Array(sab, 0, this.layout.completeBase + this.entries);
    this.mask = this.entries - 1;
    this.staging = [];
    for (let e = 0; e < this.entries; e++) {
      this.staging.push(new Uint8Array(sab, this.layout.stagingOffset + e * this.pageSize, this.pageSize));
    }
    this.submitTail = Atomics.load(this.i32, H_SUBMIT_HEAD);
    this.completeHead = Atomics.load(this.i32, H_COMPLETE_HEAD);
    this.flushHandled = Atomics.load(this.i32, H_FLUSH_DONE);
  }

  /** The next submitted entry in sequence order, or -1. */
  take(): number {
    if (this.submitTail === Atomics.load(this.i32, H_SUBMIT_HEAD)) return -1;
    const e = this.i32[this.layout.submitBase + (this.submitTail & this.mask)];
    this.submitTail = (this.submitTail + 1) | 0;
    return e;
  }

  op(e: number): number {
    return this.i32[this.layout.entryBase + e * ENTRY_WORDS + E_OP];
  }

  slot(e: number): number {
    return this.i32[this.layout.entryBase + e * ENTRY_WORDS + E_SLOT];
  }

  seq(e: number): number {
    return this.i32[this.layout.entryBase + e * ENTRY_WORDS + E_SEQ];
  }

  state(e: number): number {
    return Atomics.load(this.i32, this.layout.entryBase + e * ENTRY_WORDS + E_STATE);
  }

  start(e: number): void {
    Atomics.store(this.i32, this.layout.entryBase + e * ENTRY_WORDS + E_STATE, ENTRY_IN_FLIGHT);
  }

  /** Marks e DONE (code 0) or FAILED with `code`, publishes the completion and wakes producers. */
  complete(e: number, code: ErrorCode | 0): void {
    const i32 = this.i32;
    const base = this.layout.entryBase + e * ENTRY_WORDS;
    if (code === 0) {
      if (i32[base + E_OP] === OP_WRITE) Atomics.add(i32, H_WRITES_DONE, 1);
      else Atomics.add(i32, H_DISCARDS_DONE, 1);
      Atomics.store(i32, base + E_STATE, ENTRY_DONE);
    } else {
      i32[base + E_ERR] = errorCodeNumber(code);
      Atomics.add(i32, H_OPS_FAILED, 1);
      this.recordFailure(code, i32[base + E_SLOT]);
      Atomics.store(i32, base + E_STATE, ENTRY_FAILED);
    }
    i32[this.layout.completeBase + (this.completeHead & this.mask)] = e;
    this.completeHead = (this.completeHead + 1) | 0;
    Atomics.store(i32, H_COMPLETE_HEAD, this.completeHead);
    Atomics.notify(i32, H_COMPLETE_HEAD);
  }

  /**
   * Hands back an entry that will never start (the store is closing): FAILED with STORE_CLOSED,
   * but neither counted as a failed operation nor recorded as the store's failure.
   */
  abandon(e: number): void {
    const i32 = this.i32;
    const base = this.layout.entryBase + e * ENTRY_WORDS;
    i32[base + E_ERR] = errorCodeNumber(ErrorCodes.STORE_CLOSED);
    Atomics.store(i32, base + E_STATE, ENTRY_FAILED);
    i32[this.layout.completeBase + (this.completeHead & this.mask)] = e;
    this.completeHead = (this.completeHead + 1) | 0;
    Atomics.store(i32, H_COMPLETE_HEAD, this.completeHead);
    Atomics.notify(i32, H_COMPLETE_HEAD);
  }

  /** Keeps the first failure; returns whether this was it. */
  recordFailure(code: ErrorCode, slot: number): boolean {
    if (Atomics.compareExchange(this.i32, H_FAILED_CODE, 0, errorCodeNumber(code)) !== 0) return false;
    Atomics.store(this.i32, H_FAILED_SLOT, slot);
    return true;
  }

  get failed(): boolean {
    return Atomics.load(this.i32, H_FAILED_CODE) !== 0;
  }

  /** The number of a flush request not yet handled, or 0. */
  pendingFlush(): number {
    const req = Atomics.load(this.i32, H_FLUSH_REQ);
    return req === this.flushHandled ? 0 : req;
  }

  flushTarget(): number {
    return Atomics.load(this.i32, H_FLUSH_TARGET);
  }

  /** Entries QUEUED or IN_FLIGHT whose sequence number is at or before `target`. */
  countUnfinishedUpTo(target: number): number {
    let n = 0;
    for (let e = 0; e < this.entries; e++) {
      const state = this.state(e);
      if ((state === ENTRY_QUEUED || state === ENTRY_IN_FLIGHT) && seqLE(this.seq(e), target)) n++;
    }
    return n;
  }

  finishFlush(request: number): void {
    this.flushHandled = request;
    Atomics.store(this.i32, H_FLUSH_DONE, request);
    Atomics.notify(this.i32, H_FLUSH_DONE);
  }

  get stopRequested(): boolean {
    return Atomics.load(this.i32, H_STOP) !== 0;
  }

  /** Doorbell value to pass to waitDoorbell after looking at all the work. */
  doorbell(): number {
    return Atomics.load(this.i32, H_DOORBELL);
  }

  /** Resolves when the doorbell moves from `seen` (or at once if it already has). */
  async waitDoorbell(seen: number): Promise<void> {
    Atomics.store(this.i32, H_CONSUMER_PARKED, 1);
    const r = waitAsync(this.i32, H_DOORBELL, seen);
    if (r.async) await r.value;
    Atomics.store(this.i32, H_CONSUMER_PARKED, 0);
  }

  /** Wakes a consumer parked on the doorbell (used to stop it from its own thread). */
  wake(): void {
    Atomics.add(this.i32, H_DOORBELL, 1);
    Atomics.notify(this.i32, H_DOORBELL);
  }

  /** Wakes everyone who may wait on this queue (used when the consumer dies). */
  wakeAll(): void {
    Atomics.add(this.i32, H_COMPLETE_HEAD, 0);
    Atomics.notify(this.i32, H_COMPLETE_HEAD);
    Atomics.notify(this.i32, H_FLUSH_DONE);
  }

  stats(): DestageQueueStats {
    return queueStats(this.i32);
  }
}
