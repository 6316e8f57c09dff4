/**
 * StoreChannel: the main thread's handle on a page store that runs in a worker thread.
 * Hand-written on purpose: this is the pager's I/O path, and it must work from synchronous
 * code (evictions and faults happen inside ordinary synchronous calls).
 *
 *   main thread                                     store worker (store-worker.ts)
 *   -----------                                     ------------------------------
 *   enqueueWrite / enqueueDiscard ─ destage queue ─▶ destager (write + delete lanes) ─▶ store
 *   readSync / readBatchSync / readAsync ─ read ring ─▶ store.read into the frame itself
 *   readSync / readBatchSync on a local file store: pread on this thread (direct-read.ts)
 *   flush / flushSync ─ flush words of the queue ──▶ after earlier entries: store.flush()
 *
 * Nothing crosses by message on the data path: the destage queue (destage-queue.ts) and the
 * read ring (read-ring.ts) are SharedArrayBuffers, the frame pool's segments are shared too, and
 * the main thread waits with Atomics.wait (blocking calls) or Atomics.waitAsync (async calls).
 * Error texts come back on a MessagePort read synchronously (receiveMessageOnPort).
 *
 * Read-your-writes: a slot whose newest operation is still in the destage queue (queued, in
 * flight, or failed) is served from the queue's staging copy, or as zeros after a discard,
 * without asking the worker.
 *
 * No wait is unbounded: every wait is a slice of WAIT_SLICE_MS in a loop that checks the worker
 * (its state word, set when it crashes, and a heartbeat). A dead worker turns every waiter and
 * every later call into STORE_FAILED.
 *
 * Every STORE_FAILED carries the error underneath as `cause` (rebuilt from the worker's record
 * of it, error-wire.ts): the fabric's MF_DATA_LOST, the disk's EIO, the worker's crash.
 *
 * Discards never throw for the store's state: a space freed after the store failed, or died,
 * must still be freed, so its discards are dropped (nothing would ever read those slots).
 * close() always releases everything — the worker (terminated, whatever it was doing), the
 * error port, the destage queue's entries — and only then reports what went wrong.
 *
 * The caller (the pager) must not write or discard a slot while an async read of it is in
 * flight; it holds the slot for the read's duration.
 */
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
import { DestageQueue, errorCodeFromNumber } from './destage-queue.js';
import { DirectFileReader } from './direct-read.js';
import { fromWire, underlying } from './error-wire.js';
import type { StoreSpec } from './page-store.js';
import {
  DESC_ERROR,
  DESC_PENDING,
  READ_SYNC_DESCRIPTORS,
  ReadRingProducer,
  WORKER_CRASHED,
} from './read-ring.js';
import type { ErrorPortMessage, FromWorker, StoreWorkerData, ToWorker } from './store-worker.js';

/** Longest single Atomics wait; the worker's liveness is checked between slices. */
const WAIT_SLICE_MS = 50;
/** A worker whose heartbeat has not moved for this long is taken for dead. */
const HEARTBEAT_STALE_MS = 5_000;
/**
 * A blocking read polls its descriptors this long before sleeping in Atomics.wait: a futex
 * wake-up costs about 5 us here, longer than a memory store's whole answer (measured: 0.5 us
 * ping-pong polling vs 5.6 us sleeping). The thread is blocked either way.
 */
const POLL_BEFORE_WAIT_MS = 0.02;
/** How long close() waits for the worker to close its store. */
const CLOSE_TIMEOUT_MS = 30_000;

export interface StoreChannelOptions {
  spec: StoreSpec;
  /** Bytes per page (the store's slot size). */
  pageSize: number;
  /** Slots in the store. */
  capacity: number;
  /** The frame pool's segments: reads land directly in them. */
  segments: SharedArrayBuffer[];
  /** Destage queue entries Q, a power of two (default 256). */
  queueEntries?: number;
  /** Store writes the destager keeps in flight (default 8). */
  writeConcurrency?: number;
  /** Store discards the destager keeps in flight (default 4). */
  deleteConcurrency?: number;
}

export interface StoreChannelStats {
  /** Pages read from the store (by the worker, or directly: readsDirect). */
  reads: number;
  /** Of those, pages a blocking read took from the file on the calling thread (direct-read.ts). */
  readsDirect: number;
  /** Pages served from the destage queue's staging (read-your-writes). */
  readsFromQueue: number;
  readErrors: number;
  /** Pages written to the store. */
  writes: number;
  /** Slots discarded in the store. */
  discards: number;
  bytesRead: number;
  bytesWritten: number;
  /** Destage queue entries in use now, the queue's size Q and the most ever in use. */
  queued: number;
  queueEntries: number;
  queueHighWater: number;
  /** Entries discards may hold now (adapts to the mix of pending writes and discards). */
  deleteSlots: number;
  /** Discards waiting for an entry. */
  backlog: number;
  /** Times a blocking read slept waiting for the worker (after polling briefly). */
  readWaits: number;
  /** Times a write waited for a queue entry. */
  writeWaits: number;
  /** Operations dropped because a later one on the same slot made them moot. */
  superseded: number;
  /** Discards never sent because the store had failed (or was closed or dead). */
  droppedDiscards: number;
  /** Store operations that failed. */
  failedOps: number;
}

/**
 * Where the worker starts. From a build, store-worker.js. Under tsx (tests, `npm run
 * memfabric`) this module is .ts and so is the worker, and on Node 20 a worker does not get
 * tsx's loader even with `--import tsx` in its execArgv (module.register hooks stay with the
 * thread that registered them), so a two-line bootstrap registers tsx inside the worker first.
 */
function workerStart(): { entry: URL | string; eval: boolean } {
  if (!import.meta.url.endsWith('.ts'))
    return { entry: new URL('./store-worker.js', import.meta.url), eval: false };
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const worker = new URL('./store-worker.ts', import.meta.url).href;
  const bootstrap =
    `import(${JSON.stringify(tsxApi)})` +
    `.then((tsx) => { tsx.register(); return import(${JSON.stringify(worker)}); });`;
  return { entry: bootstrap, eval: true };
}

export class StoreChannel {
  readonly pageSize: number;
  readonly capacity: number;
  /** The store's name ("memory", "file /path", …), known once open. */
  storeName = '';

  private readonly worker: Worker;
  private readonly queue: DestageQueue;
  private readonly ring: ReadRingProducer;
  private readonly segmentViews: Uint8Array[];
  /** Blocking reads of a local file store, done on this thread (direct-read.ts); else undefined. */
  private direct: DirectFileReader | undefined;
  /** Batch pages left for the direct reader (indices into the batch). */
  private directPick = new Int32Array(0);
  private readonly errorPort: MessagePort;
  /** Descriptors of the blocking read in progress (one batch at most). */
  private readonly batch = new Int32Array(READ_SYNC_DESCRIPTORS);
  private readonly asyncDescWaiters: (() => void)[] = [];
  private readonly readErrors = new Map<number, { message: string; cause: unknown }>();
  private failureMessage: string | undefined;
  private failureCause: unknown;
  private crashMessage: string | undefined;
  private crashCause: unknown;
  private deadReason: string | undefined;
  private deadCause: unknown;
  private droppedDiscards = 0;
  private closed = false;
  private closing: Promise<void> | undefined;
  private closedReply: ((message: FromWorker | undefined) => void) | undefined;
  private holds = 0;
  private lastBeat = -1;
  private lastBeatAt = 0;

  /** Starts the worker, which opens the store; rejects with the store's error if it cannot. */
  static async open(options: StoreChannelOptions): Promise<StoreChannel> {
    if (typeof options !== 'object' || options === null) {
      throw invalidArgument('StoreChannel.open needs { spec, pageSize, capacity, segments }');
    }
    const { pageSize, capacity, segments } = options;
    if (!Number.isInteger(pageSize) || pageSize < 8 || (pageSize & (pageSize - 1)) !== 0) {
      throw invalidArgument(`pageSize must be a power of two, got ${pageSize}`);
    }
    if (!Number.isInteger(capacity) || capacity <= 0 || capacity > 0x7fffffff) {
      throw invalidArgument(`capacity must be 1 to 2^31 - 1 slots, got ${capacity}`);
    }
    if (!Array.isArray(segments) || !segments.every((s) => s instanceof SharedArrayBuffer)) {
      throw invalidArgument('segments must be an array of SharedArrayBuffers (a shared frame pool)');
    }
    const channel = new StoreChannel(options);
    await channel.started(options);
    return channel;
  }

  private constructor(options: StoreChannelOptions) {
    this.pageSize = options.pageSize;
    this.capacity = options.capacity;
    this.queue = DestageQueue.create({
      pageSize: options.pageSize,
      slots: options.capacity,
      ...(options.queueEntries === undefined ? {} : { entries: options.queueEntries }),
      waitSliceMs: WAIT_SLICE_MS,
      checkConsumer: () => this.checkAliveWaiting(),
      failureDetail: () => {
        this.drainErrorPort();
        return this.failureMessage;
      },
      failureCause: () => {
        this.drainErrorPort();
        return this.failureCause;
      },
      keepAlive: (waiting) => this.hold(waiting),
    });
    this.ring = ReadRingProducer.create();
    this.segmentViews = options.segments.map((s) => new Uint8Array(s));
    const { port1, port2 } = new MessageChannel();
    this.errorPort = port1;
    port1.unref();
    const workerData: StoreWorkerData = {
      spec: options.spec,
      pageSize: options.pageSize,
      capacity: options.capacity,
      segments: options.segments,
      queue: this.queue.sab,
      ring: this.ring.sab,
      errorPort: port2,
      ...(options.writeConcurrency === undefined ? {} : { writeConcurrency: options.writeConcurrency }),
      ...(options.deleteConcurrency === undefined ? {} : { deleteConcurrency: options.deleteConcurrency }),
    };
    const start = workerStart();
    this.worker = new Worker(start.entry, { workerData, transferList: [port2], eval: start.eval });
  }

  private started(options: StoreChannelOptions): Promise<void> {
    const worker = this.worker;
    return new Promise<void>((resolve, reject) => {
      const fail = (error: MemfabricError): void => {
        this.deadReason = error.message;
        this.closed = true;
        this.queue.close();
        void worker.terminate();
        reject(error);
      };
      worker.on('message', (message: FromWorker) => {
        if (message.type === 'ready') {
          this.storeName = message.name;
          if (message.direct !== undefined) this.direct = DirectFileReader.open(message.direct, message.name);
          worker.unref();
          resolve();
        } else if (message.type === 'open-failed') {
          // The store's own error, as it was (its code, message and cause).
          const error = fromWire(message.error);
          fail(
            error instanceof MemfabricError
              ? error
              : new MemfabricError(ErrorCodes.STORE_FAILED, message.message, { cause: error }),
          );
        } else if (message.type === 'closed') {
          this.closedReply?.(message);
        }
      });
      worker.on('error', (error: Error) => {
        const reason = `the page store worker failed: ${error.message}`;
        if (this.storeName === '' && !this.closed) {
          fail(
            new MemfabricError(ErrorCodes.STORE_FAILED, `${reason} (store ${describe(options.spec)})`, {
              cause: error,
            }),
          );
        } else {
          this.markDead(reason, error);
        }
      });
      worker.on('exit', (code) => {
        this.closedReply?.(undefined);
        if (this.storeName === '' && this.deadReason === undefined) {
          fail(
            new MemfabricError(
              ErrorCodes.STORE_FAILED,
              `the page store worker exited (code ${code}) while opening`,
            ),
          );
        } else if (!this.closed) {
          this.markDead(`the page store worker exited (code ${code})`);
        }
      });
    });
  }

  // ---------------------------------------------------------------- liveness

  private hold(on: boolean): void {
    if (on) {
      if (this.holds++ === 0) this.worker.ref();
    } else if (--this.holds === 0) {
      this.worker.unref();
    }
  }

  private markDead(reason: string, cause?: unknown): void {
    if (this.deadReason !== undefined) return;
    this.deadReason = reason;
    this.deadCause = cause ?? new Error(reason);
    // Readers waiting for a descriptor wake to checkUsable() and fail; one that fails while
    // waiting wakes nobody, so all of them are woken here or some would wait for ever.
    for (const wake of this.asyncDescWaiters.splice(0)) wake();
  }

  private deadError(): MemfabricError {
    return new MemfabricError(
      ErrorCodes.STORE_FAILED,
      `${this.deadReason}; the page store is unusable: pages not yet written are lost, reopen the store`,
      { cause: this.deadCause },
    );
  }

  /** Throws STORE_FAILED when the worker is gone (cheap: a flag and one load). */
  private checkAlive(): void {
    if (this.deadReason === undefined && this.ring.state === WORKER_CRASHED) {
      this.drainErrorPort();
      this.markDead(
        `the page store worker crashed: ${this.crashMessage ?? 'unknown error'}`,
        this.crashCause,
      );
      void this.worker.terminate();
    }
    if (this.deadReason !== undefined) throw this.deadError();
  }

  /** checkAlive plus the heartbeat, called between wait slices. */
  private checkAliveWaiting(): void {
    this.checkAlive();
    const beat = this.ring.heartbeat;
    const now = performance.now();
    if (beat !== this.lastBeat) {
      this.lastBeat = beat;
      this.lastBeatAt = now;
    } else if (now - this.lastBeatAt > HEARTBEAT_STALE_MS) {
      this.markDead(`the page store worker stopped answering (no heartbeat for ${HEARTBEAT_STALE_MS} ms)`);
      void this.worker.terminate();
      throw this.deadError();
    }
  }

  private checkUsable(): void {
    if (this.closed) throw this.closedError();
    this.checkAlive();
  }

  private drainErrorPort(): void {
    for (;;) {
      const received = receiveMessageOnPort(this.errorPort);
      if (received === undefined) return;
      const message = received.message as ErrorPortMessage;
      const cause = underlying(fromWire(message.error));
      if (message.kind === 'read') {
        this.readErrors.set(message.desc, { message: message.message, cause });
      } else if (message.kind === 'failure') {
        if (this.failureMessage === undefined) {
          this.failureMessage = message.message;
          this.failureCause = cause;
        }
      } else if (this.crashMessage === undefined) {
        this.crashMessage = message.message;
        this.crashCause = cause;
      }
    }
  }

  // ---------------------------------------------------------------- reads

  /** The segment view for a read target, after checking slot, segment and offset. */
  private target(slot: number, segment: number, offset: number): Uint8Array {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.capacity) {
      throw outOfRange(`slot ${slot} is outside the store's [0, ${this.capacity})`);
    }
    const view = this.segmentViews[segment];
    if (
      view === undefined ||
      !Number.isInteger(offset) ||
      offset < 0 ||
      offset + this.pageSize > view.length
    ) {
      throw outOfRange(
        `page target segment ${segment} offset ${offset} is outside the frame pool's segments`,
      );
    }
    return view;
  }

  /** Fills segments[segment][offset, offset + pageSize) with the slot's contents. Blocks. */
  readSync(slot: number, segment: number, offset: number): void {
    this.checkUsable();
    const dst = this.target(slot, segment, offset);
    if (this.queue.lookup(slot, dst, offset)) {
      this.ring.countFromQueue();
      return;
    }
    if (this.direct !== undefined) {
      this.direct.read(slot, dst, offset, this.pageSize);
      return;
    }
    const d = this.ring.takeSync();
    this.ring.submit(d, slot, segment, offset);
    this.ring.ring();
    this.batch[0] = d;
    this.finishBatch(1);
  }

  /** readSync for `count` pages with one wake-up of the worker and one wait (prefetch). */
  readBatchSync(slots: Int32Array, segments: Int32Array, offsets: Float64Array, count: number): void {
    this.checkUsable();
    if (
      !Number.isInteger(count) ||
      count < 0 ||
      count > slots.length ||
      count > segments.length ||
      count > offsets.length
    ) {
      throw invalidArgument(`batch count ${count} does not fit the arrays given`);
    }
    for (let i = 0; i < count; i++) this.target(slots[i], segments[i], offsets[i]);
    if (this.direct !== undefined && this.directPick.length < count) this.directPick = new Int32Array(count);
    let picked = 0;
    let n = 0;
    for (let i = 0; i < count; i++) {
      const slot = slots[i];
      const segment = segments[i];
      const offset = offsets[i];
      if (this.queue.lookup(slot, this.segmentViews[segment], offset)) {
        this.ring.countFromQueue();
        continue;
      }
      if (this.direct !== undefined) {
        this.directPick[picked++] = i;
        continue;
      }
      if (n === READ_SYNC_DESCRIPTORS) {
        this.ring.ring();
        this.finishBatch(n);
        n = 0;
      }
      const d = this.ring.takeSync();
      this.ring.submit(d, slot, segment, offset);
      this.batch[n++] = d;
    }
    if (n > 0) {
      this.ring.ring();
      this.finishBatch(n);
    }
    if (picked > 0) {
      this.direct!.readBatch(
        slots,
        segments,
        offsets,
        this.segmentViews,
        this.directPick,
        picked,
        this.pageSize,
      );
    }
  }

  /** Waits for the first n descriptors of `batch`, frees them, throws the first read error. */
  private finishBatch(n: number): void {
    const ring = this.ring;
    let waited = false;
    let pollUntil = 0;
    try {
      for (;;) {
        const seen = ring.done();
        let pending = false;
        for (let i = 0; i < n; i++) {
          if (ring.status(this.batch[i]) === DESC_PENDING) {
            pending = true;
            break;
          }
        }
        if (!pending) break;
        const now = performance.now();
        if (pollUntil === 0) pollUntil = now + POLL_BEFORE_WAIT_MS;
        if (now < pollUntil) continue;
        if (!waited) {
          ring.countWait();
          waited = true;
        }
        if (ring.waitDone(seen, WAIT_SLICE_MS)) this.checkAlive();
        else this.checkAliveWaiting();
      }
    } catch (error) {
      for (let i = 0; i < n; i++) ring.release(this.batch[i]);
      throw error;
    }
    let error: MemfabricError | undefined;
    for (let i = 0; i < n; i++) {
      const d = this.batch[i];
      if (error === undefined && ring.status(d) === DESC_ERROR) error = this.readError(d);
      ring.release(d);
    }
    if (error !== undefined) throw error;
  }

  private readError(d: number): MemfabricError {
    this.drainErrorPort();
    const known = this.readErrors.get(d);
    this.readErrors.delete(d);
    return new MemfabricError(
      errorCodeFromNumber(this.ring.errorCode(d)),
      known?.message ?? `the page store failed to read slot ${this.ring.slot(d)}`,
      known === undefined ? undefined : { cause: known.cause },
    );
  }

  /** readSync without blocking (Atomics.waitAsync). */
  readAsync(slot: number, segment: number, offset: number): Promise<void> {
    let dst: Uint8Array;
    try {
      this.checkUsable();
      dst = this.target(slot, segment, offset);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.queue.lookup(slot, dst, offset)) {
      this.ring.countFromQueue();
      return Promise.resolve();
    }
    return this.readFromWorker(slot, segment, offset);
  }

  private async readFromWorker(slot: number, segment: number, offset: number): Promise<void> {
    const ring = this.ring;
    let d = ring.takeAsync();
    this.hold(true);
    try {
      while (d < 0) {
        await new Promise<void>((resolve) => this.asyncDescWaiters.push(resolve));
        this.checkUsable();
        d = ring.takeAsync();
      }
      ring.submit(d, slot, segment, offset);
      ring.ring();
      while (ring.status(d) === DESC_PENDING) {
        await ring.waitStatus(d, WAIT_SLICE_MS);
        if (ring.status(d) !== DESC_PENDING) break;
        this.checkAliveWaiting();
        // Closed under it: the worker is gone or going, and the read will never be answered.
        if (this.closed) throw this.closedError();
      }
      if (ring.status(d) === DESC_ERROR) throw this.readError(d);
    } finally {
      if (d >= 0) {
        ring.release(d);
        this.asyncDescWaiters.shift()?.();
      }
      this.hold(false);
    }
  }

  // ---------------------------------------------------------------- writes and discards

  /**
   * Copies src (pageSize bytes) into the destage queue for `slot`. Blocks only while no queue
   * entry is admissible. Throws STORE_FAILED (changing nothing) once the store has failed a
   * write, STORE_CLOSED after close.
   */
  enqueueWrite(slot: number, src: Uint8Array): void {
    this.checkUsable();
    this.queue.enqueueWrite(slot, src);
  }

  /** enqueueWrite without blocking: resolves once src is copied (keep it unchanged until then). */
  enqueueWriteAsync(slot: number, src: Uint8Array): Promise<void> {
    try {
      this.checkUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.queue.enqueueWriteAsync(slot, src);
  }

  /**
   * Queues forgetting `slot`. Never blocks, and never throws for the store's state: on a closed
   * or dead store the discard is dropped (see the overview). A bad slot is still OUT_OF_RANGE.
   */
  enqueueDiscard(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.capacity) {
      throw outOfRange(`slot ${slot} is outside the store's [0, ${this.capacity})`);
    }
    if (this.closed || this.closing !== undefined || this.isDead()) {
      this.droppedDiscards++;
      return;
    }
    this.queue.enqueueDiscard(slot);
  }

  /** checkAlive as a question. */
  private isDead(): boolean {
    try {
      this.checkAlive();
      return false;
    } catch {
      return true;
    }
  }

  private closedError(): MemfabricError {
    return new MemfabricError(ErrorCodes.STORE_CLOSED, 'the page store channel is closed; open a new one');
  }

  // ---------------------------------------------------------------- flush, close, stats

  /**
   * Resolves when everything queued before the call (discard backlog included) is in the
   * store and the store flushed; rejects with the first failure (STORE_FAILED).
   */
  flush(): Promise<void> {
    try {
      this.checkUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.queue.flush();
  }

  /** flush, blocking. */
  flushSync(): void {
    this.checkUsable();
    this.queue.flushSync();
  }

  /**
   * Flushes, closes the store and ends the worker. Rejects with the flush's failure (or the
   * worker's death) after releasing everything; later calls throw STORE_CLOSED. Bounded: the
   * flush answers at once on a failed store, closing the store waits for the operations in
   * flight (each bounded by the store's own timeout) and at most CLOSE_TIMEOUT_MS in all, and
   * the worker is terminated whatever it answered.
   */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    let failure: unknown;
    this.hold(true);
    try {
      if (this.deadReason === undefined) {
        try {
          await this.queue.flush();
        } catch (error) {
          failure = error;
        }
      }
      this.closed = true;
      this.queue.close();
      if (this.deadReason === undefined) {
        const reply = await new Promise<FromWorker | undefined>((resolve) => {
          const timer = setTimeout(() => resolve(undefined), CLOSE_TIMEOUT_MS);
          this.closedReply = (message) => {
            clearTimeout(timer);
            resolve(message);
          };
          this.worker.postMessage({ type: 'close' } satisfies ToWorker);
        });
        if (failure === undefined && reply?.type === 'closed' && reply.error !== undefined) {
          failure = new MemfabricError(
            ErrorCodes.STORE_FAILED,
            `closing the page store failed: ${reply.error}`,
          );
        }
      }
      if (failure === undefined && this.deadReason !== undefined) failure = this.deadError();
    } finally {
      this.closed = true;
      this.direct?.close();
      await this.worker.terminate();
      this.drainErrorPort();
      this.errorPort.close();
      // The worker is gone: nothing will answer what is still queued or waiting.
      this.queue.retire();
      for (const wake of this.asyncDescWaiters.splice(0)) wake();
      this.hold(false);
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Hands the worker a segment the frame pool grew; returns its segment number. Reads naming
   * it wait in the worker until it arrives.
   */
  addSegment(segment: SharedArrayBuffer): number {
    this.checkUsable();
    if (!(segment instanceof SharedArrayBuffer))
      throw invalidArgument('a segment must be a SharedArrayBuffer');
    const index = this.segmentViews.length;
    this.segmentViews.push(new Uint8Array(segment));
    this.worker.postMessage({ type: 'segment', index, segment } satisfies ToWorker);
    return index;
  }

  stats(): StoreChannelStats {
    const q = this.queue.stats();
    const r = this.ring.stats();
    return {
      reads: r.storeReads + (this.direct?.reads ?? 0),
      readsDirect: this.direct?.reads ?? 0,
      readsFromQueue: r.readsFromQueue,
      readErrors: r.readErrors,
      writes: q.writesDone,
      discards: q.discardsDone,
      bytesRead: r.storeReads * this.pageSize,
      bytesWritten: q.writesDone * this.pageSize,
      queued: q.queued,
      queueEntries: q.entries,
      queueHighWater: q.queueHighWater,
      deleteSlots: q.deleteSlots,
      backlog: q.backlog,
      readWaits: r.readWaits,
      writeWaits: q.writeWaits,
      superseded: q.superseded,
      droppedDiscards: q.dropped + this.droppedDiscards,
      failedOps: q.failed,
    };
  }

  /** @internal Whether the worker thread is still running (tests check that close ended it). */
  get workerRunning(): boolean {
    return this.worker.threadId >= 0;
  }

  /** Test hook: makes the worker throw an uncaught error after `afterMs`. */
  crashWorkerForTest(afterMs: number): void {
    this.worker.postMessage({ type: 'crash-for-test', afterMs } satisfies ToWorker);
  }
}

function describe(spec: StoreSpec): string {
  return typeof spec === 'object' && spec !== null ? String((spec as { kind?: unknown }).kind) : String(spec);
}
