/**
 * The destager: the consumer of the destage queue (destage-queue.ts), running where the page
 * store lives (the store's worker thread, or in-process in tests). Hand-written on purpose:
 * this is the product's write-behind path.
 *
 * Two lanes drain the one logical queue concurrently, each an async loop with its own
 * concurrency limit: the write destager stores staged pages, the delete destager discards
 * slots. Entries are taken from the submit ring in sequence order and chained per slot:
 *
 *   tail[slot]  the latest taken entry of the slot that has not finished;
 *   next[e]     the entry of the same slot taken right after e (-1 when none yet).
 *
 * An entry goes to its lane's ready ring when it has no unfinished predecessor, otherwise when
 * its predecessor finishes. So an entry starts only when no earlier-sequenced entry for the
 * same slot is QUEUED or IN_FLIGHT: a discard queued after a write can never run before (or
 * beside) it and let the old bytes resurrect, and a slot freed and reused is written in order.
 * Invariant: every taken, unfinished entry is in exactly one of {a ready ring, in flight,
 * waiting on next[] of its predecessor}.
 *
 * A failed store operation marks the entry FAILED with its code (the producer keeps a failed
 * write's staged bytes and serves reads from them), the first failure is kept for flush, and
 * destaging goes on with the other entries.
 *
 * A flush request waits until every entry sequenced at or before its target has finished,
 * then calls store.flush(); destaging goes on meanwhile.
 *
 * Stopping (the store is closing) starts nothing more: every entry that was submitted and not
 * started is completed as abandoned (FAILED with STORE_CLOSED, not counted as a store failure),
 * at once or, when it waits behind an operation in flight, as soon as that one finishes. So the
 * producer gets every entry back and nothing stays queued behind a closed store.
 */
import type { PageStore } from './page-store.js';
import type { ErrorCode } from '../errors.js';
import { OP_WRITE, errorCodeOf, seqLE, type DestageQueueConsumer } from './destage-queue.js';
import { MISSING, SlotMap } from './slot-map.js';

export const WRITE_CONCURRENCY_DEFAULT = 8;
export const DELETE_CONCURRENCY_DEFAULT = 4;

export interface DestagerOptions {
  /** Store writes in flight at once (default 8). */
  writeConcurrency?: number;
  /** Store discards in flight at once (default 4). */
  deleteConcurrency?: number;
  /** Called before new destage operations start, so the host can serve reads first. */
  beforeStart?: () => void;
  /** Told about every failed store operation (slot -1 for a flush). */
  onFailure?: (error: unknown, slot: number, first: boolean) => void;
}

/** A FIFO of entry numbers; at most Q are ever in it, so it cannot overflow. */
class EntryRing {
  private readonly items: Int32Array;
  private readonly mask: number;
  private head = 0;
  private tail = 0;

  constructor(capacity: number) {
    this.items = new Int32Array(capacity);
    this.mask = capacity - 1;
  }

  get length(): number {
    return (this.tail - this.head) | 0;
  }

  push(e: number): void {
    this.items[this.tail & this.mask] = e;
    this.tail = (this.tail + 1) | 0;
  }

  shift(): number {
    const e = this.items[this.head & this.mask];
    this.head = (this.head + 1) | 0;
    return e;
  }
}

/** One destager lane: an async loop that starts ready entries up to its concurrency limit. */
class Lane {
  readonly ready: EntryRing;
  inFlight = 0;
  private wakeResolve: (() => void) | undefined;
  private readonly owner: Destager;
  private readonly limit: number;
  private readonly isWrite: boolean;

  constructor(owner: Destager, entries: number, limit: number, isWrite: boolean) {
    this.owner = owner;
    this.ready = new EntryRing(entries);
    this.limit = limit;
    this.isWrite = isWrite;
  }

  async run(): Promise<void> {
    const owner = this.owner;
    while (!owner.stopped) {
      if (this.ready.length > 0 && this.inFlight < this.limit) owner.beforeStart?.();
      while (this.ready.length > 0 && this.inFlight < this.limit) {
        this.inFlight++;
        owner.startEntry(this.ready.shift(), this.isWrite);
      }
      await new Promise<void>((resolve) => {
        this.wakeResolve = resolve;
      });
    }
  }

  wake(): void {
    const resolve = this.wakeResolve;
    if (resolve !== undefined) {
      this.wakeResolve = undefined;
      resolve();
    }
  }
}

export class Destager {
  readonly queue: DestageQueueConsumer;
  readonly store: PageStore;
  readonly beforeStart: (() => void) | undefined;
  stopped = false;
  /** The first failed store operation's error, for messages. */
  firstError: unknown = undefined;

  private readonly onFailure: DestagerOptions['onFailure'];
  private readonly writes: Lane;
  private readonly deletes: Lane;
  private readonly next: Int32Array;
  private readonly tails: SlotMap;
  /** The flush being waited for: its request number (0 when none) and its unfinished entries. */
  private flushRequest = 0;
  private flushTarget = 0;
  private flushRemaining = 0;
  private flushing = false;
  private running: Promise<void> | undefined;

  constructor(queue: DestageQueueConsumer, store: PageStore, options: DestagerOptions = {}) {
    if (store.pageSize !== queue.pageSize) {
      throw new RangeError(`store page size ${store.pageSize} differs from the queue's ${queue.pageSize}`);
    }
    this.queue = queue;
    this.store = store;
    this.beforeStart = options.beforeStart;
    this.onFailure = options.onFailure;
    const q = queue.entries;
    this.writes = new Lane(this, q, Math.max(1, options.writeConcurrency ?? WRITE_CONCURRENCY_DEFAULT), true);
    this.deletes = new Lane(
      this,
      q,
      Math.max(1, options.deleteConcurrency ?? DELETE_CONCURRENCY_DEFAULT),
      false,
    );
    this.next = new Int32Array(q).fill(-1);
    this.tails = new SlotMap(q * 2);
  }

  /** Starts both lanes and the doorbell loop; resolves when stopped. */
  run(): Promise<void> {
    this.running ??= Promise.all([this.writes.run(), this.deletes.run(), this.watch()]).then(() => undefined);
    return this.running;
  }

  /**
   * Stops taking work: operations in flight finish in the background, and every entry that
   * will now never start is handed back to the producer as abandoned (see the overview).
   */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.abandonQueued();
    this.writes.wake();
    this.deletes.wake();
    this.queue.wake();
  }

  /** Operations started and not finished. */
  get inFlight(): number {
    return this.writes.inFlight + this.deletes.inFlight;
  }

  private async watch(): Promise<void> {
    while (!this.stopped) {
      const seen = this.queue.doorbell();
      this.poke();
      if (this.queue.stopRequested) {
        this.stop();
        break;
      }
      await this.queue.waitDoorbell(seen);
    }
  }

  /** Takes newly submitted entries into the lanes and notices flush requests. */
  poke(): void {
    const queue = this.queue;
    let readyWrites = false;
    let readyDeletes = false;
    for (let e = queue.take(); e >= 0; e = queue.take()) {
      const slot = queue.slot(e);
      const tail = this.tails.get(slot);
      this.next[e] = -1;
      this.tails.set(slot, e);
      if (tail !== MISSING) {
        this.next[tail] = e;
      } else if (queue.op(e) === OP_WRITE) {
        this.writes.ready.push(e);
        readyWrites = true;
      } else {
        this.deletes.ready.push(e);
        readyDeletes = true;
      }
    }
    if (readyWrites) this.writes.wake();
    if (readyDeletes) this.deletes.wake();
    if (this.flushRequest === 0) {
      const request = queue.pendingFlush();
      if (request !== 0) {
        this.flushRequest = request;
        this.flushTarget = queue.flushTarget();
        this.flushRemaining = queue.countUnfinishedUpTo(this.flushTarget);
        if (this.flushRemaining === 0) this.flushStore();
      }
    }
  }

  /** Takes every submitted entry into its slot's chain and abandons the chains not in flight. */
  private abandonQueued(): void {
    const queue = this.queue;
    for (let e = queue.take(); e >= 0; e = queue.take()) {
      const slot = queue.slot(e);
      const tail = this.tails.get(slot);
      this.next[e] = -1;
      this.tails.set(slot, e);
      if (tail !== MISSING) this.next[tail] = e;
      else (queue.op(e) === OP_WRITE ? this.writes : this.deletes).ready.push(e);
    }
    for (const lane of [this.writes, this.deletes]) {
      while (lane.ready.length > 0) this.abandonChain(lane.ready.shift());
    }
  }

  /** Abandons `e` and every entry chained after it (none of them has started). */
  private abandonChain(e: number): void {
    const slot = this.queue.slot(e);
    for (let at = e; at >= 0;) {
      const successor = this.next[at];
      this.next[at] = -1;
      this.queue.abandon(at);
      at = successor;
    }
    this.tails.delete(slot);
  }

  /** Called by a lane: the entry is ready and has a concurrency token. */
  startEntry(e: number, isWrite: boolean): void {
    const queue = this.queue;
    queue.start(e);
    const slot = queue.slot(e);
    let op: Promise<void>;
    try {
      op = isWrite ? this.store.write(slot, queue.staging[e]) : this.store.discard(slot);
    } catch (error) {
      op = Promise.reject(error);
    }
    op.then(
      () => this.finish(e, isWrite, 0, undefined),
      (error: unknown) => this.finish(e, isWrite, errorCodeOf(error), error),
    );
  }

  private finish(e: number, isWrite: boolean, code: ErrorCode | 0, error: unknown): void {
    const queue = this.queue;
    const lane = isWrite ? this.writes : this.deletes;
    lane.inFlight--;
    const slot = queue.slot(e);
    const seq = queue.seq(e);
    const successor = this.next[e];
    if (code !== 0) this.noteFailure(error, slot);
    // Read the entry before completing it: the producer may reuse it right after.
    queue.complete(e, code);
    if (successor >= 0 && this.stopped) {
      this.next[e] = -1;
      this.abandonChain(successor);
    } else if (successor >= 0) {
      this.next[e] = -1;
      if (queue.op(successor) === OP_WRITE) {
        this.writes.ready.push(successor);
        this.writes.wake();
      } else {
        this.deletes.ready.push(successor);
        this.deletes.wake();
      }
    } else {
      this.tails.delete(slot);
    }
    lane.wake();
    if (this.flushRequest !== 0 && !this.flushing && seqLE(seq, this.flushTarget)) {
      if (--this.flushRemaining === 0) this.flushStore();
    }
  }

  private noteFailure(error: unknown, slot: number): void {
    // Tell the host first (it publishes the message), then make the failure visible.
    const first = !this.queue.failed;
    if (first) this.firstError = error;
    this.onFailure?.(error, slot, first);
    this.queue.recordFailure(errorCodeOf(error), slot);
  }

  private flushStore(): void {
    this.flushing = true;
    const request = this.flushRequest;
    const done = (): void => {
      this.flushing = false;
      this.flushRequest = 0;
      this.queue.finishFlush(request);
      this.poke();
    };
    let op: Promise<void>;
    try {
      op = this.store.flush();
    } catch (error) {
      op = Promise.reject(error);
    }
    op.then(done, (error: unknown) => {
      this.noteFailure(error, -1);
      done();
    });
  }
}
