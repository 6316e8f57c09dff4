/**
 * The primary's side of a lockstep standby (seed 002; Remus): `replicate(space | heap, { host,
 * port })` brings a standby (standby.ts) into lockstep with a running program and keeps it
 * there.
 *
 * Bring-up: iterative copy while the program runs. Round 0 sends every page that holds
 * something (holes cost nothing); each later round sends the pages dirtied since the previous
 * round began, read live. When a round's dirty set is small (`bringUpSyncPages`) or after
 * `bringUpMaxRounds`, the first epoch is cut: it holds the rest, and once the standby has
 * applied it the standby's copy equals the primary's memory at that cut.
 *
 * Epochs: every `epochMs` (25 ms), in ONE synchronous step, the pages dirtied since the last
 * cut are copied into the epoch's send buffers and a new dirty epoch begins; the buffers are
 * then handed to the socket. Because nothing else runs during the step, an epoch is a
 * consistent snapshot of the space. The standby applies an epoch only once it is complete and
 * acknowledges it; `durable()` resolves when the epoch holding every write made before the
 * call is acknowledged. At most `maxInFlightEpochs` epochs are unacknowledged: a tick finding
 * the pipeline full cuts nothing, and the pages simply stay dirty for the next cut (they
 * coalesce; the primary buffers nothing more), so a slow standby costs lag, not memory.
 */
import { EventEmitter } from 'node:events';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace } from '../memory/address-space.js';
import { EXTENT_HOLE, EXTENT_ZERO } from '../memory/address-space.js';
import { NO_FRAME, ZERO_FRAME } from '../memory/frame-pool.js';
import type { Heap } from '../heap/heap.js';
import { MSG_ERROR, MessageConnection } from './connection.js';
import {
  BRINGUP_PREFIX_BYTES,
  EPOCH_MS_DEFAULT,
  EPOCH_PREFIX_BYTES,
  HEARTBEAT_TIMEOUT_DEFAULT_MS,
  LAG_TIMEOUT_DEFAULT_MS,
  MSG_BRINGUP_PAGES,
  MSG_BYE,
  MSG_EPOCH_ACK,
  MSG_EPOCH_PAGES,
  MSG_HEARTBEAT,
  MSG_HELLO,
  MSG_WELCOME,
  SampleRing,
  STANDBY_PROTOCOL,
  STANDBY_PROTOCOL_VERSION,
  encodeCommit,
  smallFrame,
  standbyLost,
  type Hello,
  type LatencySummary,
} from './standby-protocol.js';
import {
  PAGE_DATA,
  PAGE_HOLE,
  PAGE_ZERO,
  PageBatchWriter,
  encodeJsonFrame,
  protocolError,
  type PageKind,
} from './wire.js';

export interface ReplicateOptions {
  /** The standby's address (a StandbyListener). */
  host: string;
  port: number;
  /** Milliseconds between epoch cuts. Default 25 (Remus). */
  epochMs?: number;
  /**
   * Whether `durable()` cuts an epoch at once (on the next turn of the event loop, shared by
   * every call made in the same turn) instead of waiting for the next tick. Default true: it
   * cuts durable() latency from about epochMs/2 + a round trip to a round trip, at the price of
   * more, smaller epochs when durable() is called often.
   */
  durableCut?: boolean;
  /** The standby is declared lost when nothing came from it for this long. Default 1000 ms. */
  heartbeatTimeoutMs?: number;
  /**
   * The standby is declared behind (MF_STANDBY_BEHIND) and dropped when an epoch stays
   * unacknowledged this long. Default 10 000 ms.
   */
  lagTimeoutMs?: number;
  /** Epochs cut but not yet acknowledged, at most (each holds its own send buffers). Default 2. */
  maxInFlightEpochs?: number;
  /**
   * Data pages per batch frame. Default: 128 KiB worth. Larger frames save little (a frame
   * costs 16 bytes of header) and cost the receiver: a frame spanning many socket reads is
   * reassembled before it is checked.
   */
  batchPages?: number;
  /** Bring-up ends when a round's dirty set is at most this many pages. Default 256. */
  bringUpSyncPages?: number;
  /** Bring-up ends after this many rounds even if the dirty set is still large. Default 30. */
  bringUpMaxRounds?: number;
  /** Give up connecting after this long. Default 10 s. */
  connectTimeoutMs?: number;
}

export type ReplicaState = 'bringing-up' | 'streaming' | 'lost' | 'closed';

export interface ReplicaStats {
  state: ReplicaState;
  epochMs: number;
  /** Epochs cut (the first completes the bring-up) and acknowledged. */
  epochsCut: number;
  epochsAcked: number;
  /** Epochs cut and not yet acknowledged. */
  inFlight: number;
  /** Ticks that cut nothing because maxInFlightEpochs epochs were unacknowledged. */
  skippedCuts: number;
  /** Pages per epoch (data, zero and hole). */
  epochPages: LatencySummary;
  /** Bytes per epoch on the wire (frames included). */
  epochBytes: LatencySummary;
  /** Epoch latency, cut → acknowledgement, ms. */
  epochLatencyMs: LatencySummary;
  /** The primary's pause per cut (the synchronous step), ms: its slowdown. */
  cutMs: LatencySummary;
  /** durable() latency, call → resolution, ms (calls that had to wait). */
  durableMs: LatencySummary;
  durableCalls: number;
  /** Age of the oldest unacknowledged epoch, ms (0 when none). */
  lagMs: number;
  bringUp: { rounds: number; pages: number; bytes: number; ms: number };
  bytesSent: number;
}

interface Waiter {
  target: number;
  start: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** One in-flight epoch's send buffers: reused from epoch to epoch, grown as needed. */
interface EpochSlot {
  writers: PageBatchWriter[];
}

/**
 * Keeps a standby in lockstep with `target` (an AddressSpace, or a Heap: its whole state lives
 * in its space). Resolves once the standby holds a complete, consistent copy (the first epoch
 * is acknowledged); rejects when the standby cannot be reached or refuses.
 */
export async function replicate(target: AddressSpace | Heap, options: ReplicateOptions): Promise<Replica> {
  const isHeap = !('pool' in target);
  const space = isHeap ? (target as Heap).space : (target as AddressSpace);
  const replica = new Replica(space, isHeap ? 'heap' : 'space', options);
  await replica.start();
  return replica;
}

export class Replica extends EventEmitter {
  readonly space: AddressSpace;
  private readonly kind: 'space' | 'heap';
  private readonly epochMs: number;
  private readonly durableCut: boolean;
  private readonly heartbeatTimeoutMs: number;
  private readonly lagTimeoutMs: number;
  private readonly maxInFlight: number;
  private readonly batchPages: number;
  private readonly syncPages: number;
  private readonly maxRounds: number;
  private readonly options: ReplicateOptions;
  private conn: MessageConnection | undefined;
  private state: ReplicaState = 'bringing-up';
  private failure: MemfabricError | undefined;

  /** Pages written at or after this space epoch are dirty since the last cut. */
  private lastCutEpoch = 0;
  private cutSeq = 0;
  private ackedSeq = 0;
  private readonly cutTimes: Float64Array;
  private readonly slots: EpochSlot[] = [];
  private dirty = new Float64Array(1024);
  private dirtyCount = 0;
  private readonly collect = (page: number): void => {
    if (this.dirtyCount === this.dirty.length) {
      const grown = new Float64Array(this.dirty.length * 2);
      grown.set(this.dirty);
      this.dirty = grown;
    }
    this.dirty[this.dirtyCount++] = page;
  };
  private cutPending = false;
  private cutScheduled = false;
  private readonly waiters: Waiter[] = [];
  private ticker: ReturnType<typeof setInterval> | undefined;
  private heart: ReturnType<typeof setInterval> | undefined;
  private lastHeard = 0;
  private lastSent = 0;
  private resolveSynced!: () => void;
  private rejectSynced!: (error: unknown) => void;
  private readonly synced: Promise<void>;

  private skippedCuts = 0;
  private durableCalls = 0;
  private bytesSent = 0;
  private readonly epochPages = new SampleRing();
  private readonly epochBytes = new SampleRing();
  private readonly epochLatency = new SampleRing();
  private readonly cutMs = new SampleRing();
  private readonly durableMs = new SampleRing();
  private readonly bringUp = { rounds: 0, pages: 0, bytes: 0, ms: 0 };

  /** @internal Use replicate(). */
  constructor(space: AddressSpace, kind: 'space' | 'heap', options: ReplicateOptions) {
    super();
    this.space = space;
    this.kind = kind;
    this.options = options;
    this.epochMs = positive(options.epochMs ?? EPOCH_MS_DEFAULT, 'epochMs');
    this.durableCut = options.durableCut ?? true;
    this.heartbeatTimeoutMs = positive(
      options.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_DEFAULT_MS,
      'heartbeatTimeoutMs',
    );
    this.lagTimeoutMs = positive(options.lagTimeoutMs ?? LAG_TIMEOUT_DEFAULT_MS, 'lagTimeoutMs');
    this.maxInFlight = whole(options.maxInFlightEpochs ?? 2, 'maxInFlightEpochs');
    this.batchPages = whole(
      options.batchPages ?? Math.max(1, Math.floor((128 * 1024) / space.pageSize)),
      'batchPages',
    );
    this.syncPages = whole(options.bringUpSyncPages ?? 256, 'bringUpSyncPages', 0);
    this.maxRounds = whole(options.bringUpMaxRounds ?? 30, 'bringUpMaxRounds', 0);
    this.cutTimes = new Float64Array(this.maxInFlight);
    for (let i = 0; i < this.maxInFlight; i++) this.slots.push({ writers: [] });
    this.synced = new Promise((resolve, reject) => {
      this.resolveSynced = resolve;
      this.rejectSynced = reject;
    });
    this.synced.catch(() => undefined);
  }

  /** @internal Connects, handshakes and brings the standby up; resolves once it is in lockstep. */
  async start(): Promise<void> {
    const conn = await MessageConnection.connect({
      host: this.options.host,
      port: this.options.port,
      ...(this.options.connectTimeoutMs !== undefined ? { timeoutMs: this.options.connectTimeoutMs } : {}),
    });
    this.conn = conn;
    const welcomed = new Promise<void>((resolve, reject) => {
      conn.onMessage((type, payload) => {
        this.lastHeard = performance.now();
        if (type === MSG_WELCOME) resolve();
        else this.onMessage(type, payload);
      });
      void conn.closed.then(() => reject(conn.error ?? standbyLost('the connection closed')));
    });
    void conn.closed.then(() =>
      this.lose(
        conn.error?.code === ErrorCodes.CONNECTION_CLOSED
          ? standbyLost(conn.error.message)
          : (conn.error ?? standbyLost('the connection closed')),
      ),
    );
    const hello: Hello = {
      protocol: STANDBY_PROTOCOL,
      version: STANDBY_PROTOCOL_VERSION,
      kind: this.kind,
      size: this.space.size,
      pageSize: this.space.pageSize,
      epochMs: this.epochMs,
      heartbeatTimeoutMs: this.heartbeatTimeoutMs,
    };
    conn.post(encodeJsonFrame(MSG_HELLO, hello));
    try {
      await welcomed;
    } catch (error) {
      conn.destroy();
      throw error;
    }
    this.lastHeard = performance.now();
    this.heart = setInterval(
      () => this.checkHeartbeat(),
      Math.max(5, Math.min(this.heartbeatTimeoutMs, this.lagTimeoutMs) / 4),
    );
    this.heart.unref();
    try {
      await this.runBringUp();
    } catch (error) {
      this.lose(error instanceof MemfabricError ? error : standbyLost((error as Error).message));
      throw this.failure;
    }
    if (this.failure) throw this.failure;
    this.state = 'streaming';
    this.ticker = setInterval(() => this.cut(), this.epochMs);
    this.ticker.unref();
    this.cut();
    await this.synced;
  }

  /**
   * Resolves once every write made before the call is on the standby (the epoch holding it is
   * acknowledged). Rejects with MF_STANDBY_LOST / MF_STANDBY_BEHIND when the standby is gone:
   * the writes are then protected by nothing but this process.
   */
  durable(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    this.durableCalls++;
    // Every write before now is in an epoch already cut, or dirty and so in the next cut; a
    // cut that finds nothing dirty lowers the target (see cut()).
    const target = this.state === 'bringing-up' ? 1 : this.cutSeq + 1;
    const promise = new Promise<void>((resolve, reject) => {
      this.waiters.push({ target, start: performance.now(), resolve, reject });
    });
    if (this.durableCut && this.state === 'streaming') this.scheduleCut();
    return promise;
  }

  stats(): ReplicaStats {
    return {
      state: this.state,
      epochMs: this.epochMs,
      epochsCut: this.cutSeq,
      epochsAcked: this.ackedSeq,
      inFlight: this.cutSeq - this.ackedSeq,
      skippedCuts: this.skippedCuts,
      epochPages: this.epochPages.summary(),
      epochBytes: this.epochBytes.summary(),
      epochLatencyMs: this.epochLatency.summary(),
      cutMs: this.cutMs.summary(),
      durableMs: this.durableMs.summary(),
      durableCalls: this.durableCalls,
      lagMs: this.lagMs(),
      bringUp: { ...this.bringUp },
      bytesSent: this.bytesSent,
    };
  }

  /** Why replication stopped (undefined while it runs). */
  get error(): MemfabricError | undefined {
    return this.failure;
  }

  get isReplicating(): boolean {
    return this.failure === undefined;
  }

  /**
   * Stops replicating on purpose: the standby is told (it does not take over) and dropped.
   * durable() calls still waiting fail with MF_STANDBY_LOST.
   */
  async close(): Promise<void> {
    if (this.failure) return;
    const conn = this.conn!;
    conn.post(smallFrame(MSG_BYE, 0, () => undefined));
    this.lose(standbyLost('the replica was closed'), 'closed');
    await conn.close();
  }

  // -------------------------------------------------------------------------------------------

  private async runBringUp(): Promise<void> {
    const started = performance.now();
    const space = this.space;
    const writer = new PageBatchWriter({
      pageSize: space.pageSize,
      maxDataPages: this.batchPages,
      prefixBytes: BRINGUP_PREFIX_BYTES,
    });
    // Round 0: every page that holds something, read live. Writes from now on are caught by
    // the dirty epochs, so a page that changes after it was read is sent again.
    let since = space.advanceEpoch();
    const runs: number[] = [];
    let at = 0;
    space.extents(0, space.size, (length, flags) => {
      const first = Math.floor(at / space.pageSize);
      at += length;
      if (flags & EXTENT_HOLE) return;
      runs.push(first, Math.ceil(at / space.pageSize) - first, flags & EXTENT_ZERO ? PAGE_ZERO : PAGE_DATA);
    });
    for (let r = 0; r < runs.length; r += 3) {
      for (let page = runs[r]!, end = page + runs[r + 1]!; page < end; page++) {
        await this.sendLivePage(writer, page, 0);
      }
    }
    await this.flushBringUp(writer, 0);
    this.bringUp.rounds = 1;
    for (let round = 1; round <= this.maxRounds; round++) {
      this.dirtyCount = 0;
      space.forEachDirtyPage(since, this.collect);
      if (this.dirtyCount <= this.syncPages) break;
      since = space.advanceEpoch();
      // The pages of this round (copied: sending awaits, and the array is reused by cuts).
      const pages = this.dirty.slice(0, this.dirtyCount);
      for (let i = 0; i < pages.length; i++) await this.sendLivePage(writer, pages[i]!, round);
      await this.flushBringUp(writer, round);
      this.bringUp.rounds = round + 1;
    }
    this.lastCutEpoch = since;
    this.bringUp.ms = performance.now() - started;
  }

  /** Adds page `page` as it is now to the bring-up batch, sending the batch first if full. */
  private async sendLivePage(writer: PageBatchWriter, page: number, round: number): Promise<void> {
    let kind = this.kindOf(page);
    if (!writer.fits(page, kind)) await this.flushBringUp(writer, round);
    // Reading the kind again: the program may have written while the batch was sent.
    kind = this.kindOf(page);
    const into = writer.add(page, kind);
    if (into !== undefined) into.set(this.space.borrowPageForRead(page));
    this.bringUp.pages++;
  }

  private async flushBringUp(writer: PageBatchWriter, round: number): Promise<void> {
    if (writer.isEmpty) return;
    writer.prefix.writeDoubleLE(round, 0);
    const frame = writer.seal(MSG_BRINGUP_PAGES);
    this.bringUp.bytes += frame.length;
    this.bytesSent += frame.length;
    await this.write(frame);
    writer.reset();
  }

  /** Writes a frame and resolves once the socket no longer needs the buffer. */
  private write(frame: Buffer): Promise<void> {
    const conn = this.conn!;
    if (this.failure) return Promise.reject(this.failure);
    this.lastSent = performance.now();
    return new Promise((resolve, reject) => {
      conn.socket.write(frame, (error) => {
        if (error || this.failure) reject(this.failure ?? standbyLost(error!.message));
        else resolve();
      });
    });
  }

  private kindOf(page: number): PageKind {
    const frame = this.space.frameAt(page);
    return frame === NO_FRAME ? PAGE_HOLE : frame === ZERO_FRAME ? PAGE_ZERO : PAGE_DATA;
  }

  private scheduleCut(): void {
    if (this.cutScheduled) return;
    this.cutScheduled = true;
    setImmediate(() => {
      this.cutScheduled = false;
      this.cut();
    });
  }

  /**
   * The epoch cut: one synchronous step that copies every page dirtied since the last cut into
   * this epoch's buffers and starts a new dirty epoch, then hands the frames to the socket.
   */
  private cut(): void {
    if (this.state !== 'streaming') return;
    if (this.cutSeq - this.ackedSeq >= this.maxInFlight) {
      // The pipeline is full: cut nothing now; the pages stay dirty and coalesce into the
      // cut the next acknowledgement triggers.
      if (!this.cutPending) this.skippedCuts++;
      this.cutPending = true;
      if (this.skippedCuts % 8 === 1)
        this.emit('lag', { inFlight: this.cutSeq - this.ackedSeq, lagMs: this.lagMs() });
      return;
    }
    this.cutPending = false;
    const start = performance.now();
    try {
      const space = this.space;
      this.dirtyCount = 0;
      space.forEachDirtyPage(this.lastCutEpoch, this.collect);
      // The first epoch is cut even when empty: its acknowledgement ends the bring-up.
      if (this.dirtyCount === 0 && this.cutSeq > 0) {
        // Nothing written since the last cut: every write made before now is in an epoch
        // already cut, so waiters aiming at the next one need only the last.
        for (let i = this.waiters.length - 1; i >= 0 && this.waiters[i]!.target > this.cutSeq; i--) {
          this.waiters[i]!.target = this.cutSeq;
        }
        this.settleWaiters();
        return;
      }
      const seq = this.cutSeq + 1;
      const slot = this.slots[seq % this.maxInFlight]!;
      let used = 0;
      let writer = this.writerOf(slot, used);
      writer.reset();
      const dirty = this.dirty;
      for (let i = 0; i < this.dirtyCount; i++) {
        const page = dirty[i]!;
        const kind = this.kindOf(page);
        if (!writer.fits(page, kind)) {
          writer = this.writerOf(slot, ++used);
          writer.reset();
        }
        const into = writer.add(page, kind);
        if (into !== undefined) into.set(space.borrowPageForRead(page));
      }
      this.lastCutEpoch = space.advanceEpoch();
      this.cutSeq = seq;
      this.cutTimes[seq % this.maxInFlight] = start;
      // The snapshot is taken; sealing and posting are still the primary's time, so counted.
      const conn = this.conn!;
      let bytes = 0;
      for (let b = 0; b <= used; b++) {
        const w = slot.writers[b]!;
        w.prefix.writeDoubleLE(seq, 0);
        w.prefix.writeUInt32LE(b, 8);
        w.prefix.writeUInt32LE(0, 12);
        const frame = w.seal(MSG_EPOCH_PAGES);
        bytes += frame.length;
        conn.post(frame);
      }
      const commit = encodeCommit(seq, used + 1, this.dirtyCount);
      bytes += commit.length;
      conn.post(commit);
      this.lastSent = performance.now();
      this.bytesSent += bytes;
      this.epochPages.add(this.dirtyCount);
      this.epochBytes.add(bytes);
      this.cutMs.add(performance.now() - start);
    } catch (error) {
      this.lose(
        error instanceof MemfabricError
          ? error
          : new MemfabricError(ErrorCodes.INTERNAL, `an epoch cut failed: ${(error as Error).message}`),
      );
    }
  }

  private writerOf(slot: EpochSlot, index: number): PageBatchWriter {
    while (slot.writers.length <= index) {
      slot.writers.push(
        new PageBatchWriter({
          pageSize: this.space.pageSize,
          maxDataPages: this.batchPages,
          prefixBytes: EPOCH_PREFIX_BYTES,
        }),
      );
    }
    return slot.writers[index]!;
  }

  private onMessage(type: number, payload: Buffer): void {
    if (type === MSG_EPOCH_ACK) {
      if (payload.length !== 8) throw protocolError('an epoch acknowledgement of the wrong length');
      const seq = payload.readDoubleLE(0);
      if (!Number.isInteger(seq) || seq <= this.ackedSeq || seq > this.cutSeq) {
        throw protocolError(`an acknowledgement of epoch ${seq}, not cut or already acknowledged`);
      }
      const now = performance.now();
      for (let s = this.ackedSeq + 1; s <= seq; s++) {
        this.epochLatency.add(now - this.cutTimes[s % this.maxInFlight]!);
      }
      this.ackedSeq = seq;
      if (seq >= 1) this.resolveSynced();
      this.settleWaiters();
      if (this.cutPending) this.cut();
    } else if (type === MSG_HEARTBEAT) {
      // lastHeard is updated for every message.
    } else if (type !== MSG_ERROR) {
      throw protocolError(`a standby sent message type ${type}, which this side does not expect`);
    }
  }

  private settleWaiters(): void {
    const waiters = this.waiters;
    let done = 0;
    const now = performance.now();
    while (done < waiters.length && waiters[done]!.target <= this.ackedSeq) {
      const waiter = waiters[done++]!;
      this.durableMs.add(now - waiter.start);
      waiter.resolve();
    }
    if (done > 0) waiters.splice(0, done);
  }

  private checkHeartbeat(): void {
    if (this.failure) return;
    const now = performance.now();
    if (now - this.lastHeard > this.heartbeatTimeoutMs) {
      this.lose(standbyLost(`nothing came from it for ${Math.round(now - this.lastHeard)} ms`));
      return;
    }
    const lag = this.lagMs();
    if (lag > this.lagTimeoutMs) {
      this.lose(
        new MemfabricError(
          ErrorCodes.STANDBY_BEHIND,
          `the standby left an epoch unacknowledged for ${Math.round(lag)} ms (lagTimeoutMs ${this.lagTimeoutMs}); it was dropped: give it a faster link or raise lagTimeoutMs, then replicate() again`,
        ),
      );
      return;
    }
    if (now - this.lastSent > this.heartbeatTimeoutMs / 4) {
      this.conn!.post(smallFrame(MSG_HEARTBEAT, 0, () => undefined));
      this.lastSent = now;
    }
  }

  private lagMs(): number {
    if (this.cutSeq === this.ackedSeq) return 0;
    return performance.now() - this.cutTimes[(this.ackedSeq + 1) % this.maxInFlight]!;
  }

  private lose(error: MemfabricError, state: ReplicaState = 'lost'): void {
    if (this.failure) return;
    this.failure = error;
    this.state = state;
    if (this.ticker) clearInterval(this.ticker);
    if (this.heart) clearInterval(this.heart);
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    this.rejectSynced(error);
    if (state === 'lost' && this.conn?.isOpen) this.conn.abort(error);
    if (state === 'lost') this.emit('lost', error);
  }
}

function positive(value: number, name: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw invalidArgument(`${name} ${value} must be a positive number of milliseconds`);
  }
  return value;
}

function whole(value: number, name: string, min = 1): number {
  if (!Number.isInteger(value) || value < min)
    throw invalidArgument(`${name} ${value} must be a whole number ≥ ${min}`);
  return value;
}
