/**
 * Post-copy, the source's side: hand the space over at once, then serve its pages to the
 * destination, on demand (faults) and in the background (push), until every page has moved.
 *
 * The switchover is one synchronous step: the write gate closes for good (every write, trim
 * and zeroing from then on throws MF_MIGRATING: the space has moved; reads still see the state
 * at the switchover), the page map is taken (which pages are data, zero or holes), and the map
 * goes to the destination, which resumes on it. Before that step the destination has already
 * started its store and attached it to this side's page server (PC_OFFER / PC_PREPARED), so the
 * switchover costs one message and a page-table install, not a worker start.
 *
 * The background push sends the data pages most recently written first (descending page epoch,
 * ascending page number within an epoch): pages written last are the likeliest to be the
 * program's working set, which the destination would otherwise fault for; pages untouched for
 * longest go last. Pages the destination already fetched, or told us it no longer needs (it
 * overwrote or trimmed them), are skipped. A fault is answered at once, between push batches;
 * batches are small (pushBatchPages, default 16 pages), so a fault waits behind at most one.
 *
 * Before the switchover a failure leaves the source as it was (its gate never closed): it keeps
 * its data and its writers. After it, the destination owns the state: if the destination dies,
 * this side's copy is the state at the switchover, without the destination's writes since; the
 * returned promise rejects and the gate stays closed.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { EXTENT_HOLE, EXTENT_ZERO, type AddressSpace, type WriteGate } from '../memory/address-space.js';
import { MessageConnection } from './connection.js';
import {
  PAGES_FAULTED,
  PAGES_PREFIX_BYTES,
  PAGES_PUSHED,
  PC_COMPLETE,
  PC_OFFER,
  PC_PREPARED,
  PC_PROGRESS,
  PC_RESUMED,
  PROGRESS_INTERVAL_MS,
  PS_ATTACH,
  PS_ATTACHED,
  PS_FETCH,
  PS_HAVE_ALL,
  PS_NOT_NEEDED,
  PS_PAGES,
  PS_SLOTS,
  decodeSlots,
  encodeSwitchover,
  type OfferMessage,
} from './postcopy-protocol.js';
import {
  FRAME_PAYLOAD_MAX,
  PAGE_DATA,
  PAGE_ZERO,
  PageBatchWriter,
  RUN_BYTES,
  decodeJson,
  encodeJsonFrame,
  protocolError,
} from './wire.js';

export interface PostCopySourceOptions {
  /** The migration's id (from the handshake): the page server serves only a store that presents it. */
  migrationId: string;
  /** Address the page server binds. Default the main connection's local address. */
  pageServerHost?: string;
  /** Port the page server binds. Default 0 (any free port; the destination is told which). */
  pageServerPort?: number;
  /** Pages per push message. Default 16: a fault waits behind at most one such batch. */
  pushBatchPages?: number;
  /**
   * Awaited before each push batch with the batch's page count and the figures so far: paces the background push
   * (leave bandwidth to faults, or to other traffic). Default: push as fast as the network takes it.
   */
  pace?: (pages: number, progress: PostCopySourceProgress) => Promise<void>;
  /** How long to wait for the destination to prepare, resume and finish each step. Default 30 s. */
  stepTimeoutMs?: number;
  /** Called with the figures on each progress tick (every PROGRESS_INTERVAL_MS) and at the end. */
  onProgress?: (progress: PostCopySourceProgress) => void;
  /** Called right after the switchover: the space is gated from here on. */
  onSwitchover?: () => void;
}

export interface PostCopySourceProgress {
  /** Data pages to move (zero pages and holes travel in the map). */
  pages: number;
  /** Pages sent because the destination faulted on them. */
  served: number;
  /** Pages sent by the background push. */
  pushed: number;
  /** Pages the destination no longer needed (overwritten or trimmed there before they moved). */
  notNeeded: number;
  /** Pages neither sent nor given up. */
  remaining: number;
  bytesSent: number;
  /** Push messages sent. */
  pushBatches: number;
}

export interface PostCopySourceReport extends PostCopySourceProgress {
  zeroPages: number;
  /** Gate closed to the destination's resumption (as this side sees it: one round trip more). */
  switchoverMs: number;
  /** Gate closed to every page moved. */
  totalMs: number;
}

/** A store that has not attached within this long is disconnected. */
const ATTACH_TIMEOUT_MS = 10_000;
const STEP_TIMEOUT_DEFAULT_MS = 30_000;
const PUSH_BATCH_DEFAULT = 16;
/** Most slots post-copy moves: the destination's store numbers them in 31 bits, beside its own. */
const SLOTS_MAX = 2 ** 30;
/** Runs one switchover message carries (16 bytes each, with room for its header). */
const RUNS_MAX = Math.floor((FRAME_PAYLOAD_MAX - 4096) / RUN_BYTES);

/**
 * Runs the source's side of a post-copy migration over `connection` (the handshake is done).
 * Resolves with the figures once every page has moved and the destination has let go of this
 * side; rejects on any failure (see the overview for what the space holds then).
 */
export async function runPostCopySource(
  space: AddressSpace,
  connection: MessageConnection,
  options: PostCopySourceOptions,
): Promise<PostCopySourceReport> {
  checkOptions(options);
  const source = new PostCopySource(space, connection, options);
  try {
    return await source.run();
  } finally {
    source.dispose();
  }
}

class PostCopySource {
  private readonly pageSize: number;
  private server: Server | undefined;
  private store: MessageConnection | undefined;
  private readonly messages: { type: number; payload: Buffer }[] = [];
  private messageWaiter: (() => void) | undefined;
  /** Set once anything fails: every wait wakes and throws it. */
  private failure: MemfabricError | undefined;
  private failed: () => void = () => undefined;
  private readonly failedPromise: Promise<void>;
  private haveAll = false;
  private haveAllWaiter: (() => void) | undefined;
  private switchedOver = false;
  private completeSent = false;
  private slots = 0;
  /** The data runs: run r covers pages [dataFirst[r], …) as slots [dataSlot[r], dataSlot[r + 1]). */
  private dataFirst = new Float64Array(0);
  private dataSlot = new Float64Array(1);
  /** 1 once a slot is sent (by fault or push) or given up by the destination. */
  private done = new Uint8Array(0);
  private readonly counts = { served: 0, pushed: 0, notNeeded: 0, bytesSent: 0, pushBatches: 0 };
  private progressTimer: ReturnType<typeof setInterval> | undefined;
  private readonly stepTimeoutMs: number;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly space: AddressSpace,
    private readonly connection: MessageConnection,
    private readonly options: PostCopySourceOptions,
  ) {
    this.pageSize = space.pageSize;
    this.stepTimeoutMs = options.stepTimeoutMs ?? STEP_TIMEOUT_DEFAULT_MS;
    this.failedPromise = new Promise<void>((resolve) => (this.failed = resolve));
    connection.onMessage((type, payload) => {
      this.messages.push({ type, payload: Buffer.from(payload) });
      this.messageWaiter?.();
    });
    void connection.closed.then(() => {
      if (this.haveAll && this.completeSent) return;
      const error = connection.error;
      this.fail(
        new MemfabricError(
          error?.code ?? ErrorCodes.CONNECTION_CLOSED,
          `the migration destination disconnected ${this.switchedOver ? 'after' : 'before'} the switchover` +
            `${error ? ` (${error.message})` : ''}${this.outcome()}`,
        ),
      );
    });
  }

  async run(): Promise<PostCopySourceReport> {
    const port = await this.listen();
    const offer: OfferMessage = {
      migrationId: this.options.migrationId,
      size: this.space.size,
      pageSize: this.pageSize,
      port,
    };
    this.connection.post(encodeJsonFrame(PC_OFFER, offer));
    await this.expect(PC_PREPARED, 'prepare its store');
    if (this.store === undefined) throw protocolError('the destination prepared without attaching its store');

    const started = performance.now();
    const zeroPages = this.switchover();
    this.options.onSwitchover?.();
    this.progressTimer = setInterval(() => this.tick(), PROGRESS_INTERVAL_MS);
    this.progressTimer.unref();
    // Faults are served from here on; the push (whose order takes a pass over every page)
    // starts once the destination runs, so it adds nothing to the blackout.
    await this.expect(PC_RESUMED, 'resume');
    const switchoverMs = performance.now() - started;
    await this.push();
    await this.waitHaveAll();
    this.completeSent = true;
    await this.connection.send(encodeJsonFrame(PC_COMPLETE, this.progress()));
    // The destination closes once it has the message: then it no longer needs this side at all.
    await this.race(this.connection.closed, 'acknowledge the end');
    const totalMs = performance.now() - started;
    const report = { ...this.progress(), zeroPages, switchoverMs, totalMs };
    this.options.onProgress?.(this.progress());
    return report;
  }

  dispose(): void {
    if (this.progressTimer) clearInterval(this.progressTimer);
    this.store?.destroy();
    for (const socket of this.sockets) socket.destroy();
    this.server?.close();
    if (this.failure) this.connection.abort(this.failure);
    else void this.connection.close();
  }

  // ---------------------------------------------------------------------------------------
  // The switchover

  /**
   * Closes the gate for good, takes the page map and hands the space over. Synchronous. A space
   * whose map cannot go (too many pages or runs) gets its gate back and stays here.
   */
  private switchover(): number {
    const space = this.space;
    const previous = space.writeGate;
    const where = `${this.connection.socket.remoteAddress ?? 'the destination'}`;
    space.writeGate = movedGate(this.options.migrationId, where);
    // Same synchronous step as the gate: no cached writable translation survives it.
    space.flushTranslations();
    try {
      return this.handOver();
    } catch (error) {
      space.writeGate = previous;
      throw error;
    }
  }

  private handOver(): number {
    const space = this.space;
    const pageSize = this.pageSize;
    let runs = new Float64Array(3 * 64);
    let runCount = 0;
    // Data runs only, not one entry per page: the switchover is the blackout, keep it O(runs).
    const dataFirst: number[] = [];
    const dataSlot: number[] = [0];
    let slots = 0;
    let zeroPages = 0;
    let addr = 0;
    space.extents(0, space.size, (length, flags) => {
      const first = addr / pageSize;
      addr += length;
      const end = Math.ceil(addr / pageSize);
      if ((flags & EXTENT_HOLE) !== 0) return;
      const kind = (flags & EXTENT_ZERO) !== 0 ? PAGE_ZERO : PAGE_DATA;
      for (let at = first; at < end;) {
        const count = Math.min(end - at, 2 ** 31);
        if (3 * (runCount + 1) > runs.length) {
          const grown = new Float64Array(runs.length * 2);
          grown.set(runs);
          runs = grown;
        }
        runs[3 * runCount] = at;
        runs[3 * runCount + 1] = count;
        runs[3 * runCount + 2] = kind;
        runCount++;
        at += count;
      }
      if (kind === PAGE_ZERO) zeroPages += end - first;
      else {
        dataFirst.push(first);
        slots += end - first;
        dataSlot.push(slots);
      }
    });
    if (runCount > RUNS_MAX) {
      throw invalidArgument(
        `this space's page map has ${runCount} runs, more than one message carries (${RUNS_MAX}); use pre-copy`,
      );
    }
    if (slots > SLOTS_MAX) {
      throw invalidArgument(
        `post-copy moves at most ${SLOTS_MAX} data pages, this space has more; use pre-copy or larger pages`,
      );
    }
    this.dataFirst = Float64Array.from(dataFirst);
    this.dataSlot = Float64Array.from(dataSlot);
    this.slots = slots;
    this.done = new Uint8Array(this.slots);
    this.switchedOver = true;
    this.store!.post(encodeJsonFrame(PS_SLOTS, { slots: this.slots }));
    this.connection.post(
      encodeSwitchover({ epoch: space.epoch, slots: this.slots, zeroPages }, runs, runCount),
    );
    return zeroPages;
  }

  // ---------------------------------------------------------------------------------------
  // Moving pages

  /** The page slot `slot` stands for (a binary search over the data runs). */
  private pageOf(slot: number): number {
    let lo = 0;
    let hi = this.dataFirst.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.dataSlot[mid]! <= slot) lo = mid;
      else hi = mid - 1;
    }
    return this.dataFirst[lo]! + (slot - this.dataSlot[lo]!);
  }

  /** The push order: slots by descending page epoch, ascending within one epoch. */
  private pushOrder(): Float64Array {
    const slots = this.slots;
    const epochs = new Float64Array(slots);
    let newest = 0;
    for (let slot = 0; slot < slots; slot++) {
      const epoch = this.space.pageEpoch(this.pageOf(slot));
      epochs[slot] = epoch;
      if (epoch > newest) newest = epoch;
    }
    const order = new Float64Array(slots);
    if ((newest + 1) * slots >= Number.MAX_SAFE_INTEGER) {
      for (let slot = 0; slot < slots; slot++) order[slot] = slot;
      return order;
    }
    // One key per slot, sorted natively: (newest - epoch) · slots + slot.
    for (let slot = 0; slot < slots; slot++) order[slot] = (newest - epochs[slot]!) * slots + slot;
    order.sort();
    for (let i = 0; i < slots; i++) order[i] = order[i]! % slots;
    return order;
  }

  private async push(): Promise<void> {
    const order = this.pushOrder();
    const batchPages = this.options.pushBatchPages ?? PUSH_BATCH_DEFAULT;
    const writer = new PageBatchWriter({
      pageSize: this.pageSize,
      maxDataPages: batchPages,
      prefixBytes: PAGES_PREFIX_BYTES,
    });
    const picked = new Float64Array(batchPages);
    let next = 0;
    while (next < order.length && !this.haveAll) {
      let count = 0;
      while (next < order.length && count < batchPages) {
        const slot = order[next++]!;
        if (this.done[slot] === 0) picked[count++] = slot;
      }
      if (count === 0) break;
      // The caller's own pace: no step timeout, but the migration failing ends the wait.
      if (this.options.pace) await this.race(this.options.pace(count, this.progress()), undefined);
      this.check();
      writer.reset();
      writer.prefix.writeUInt32LE(PAGES_PUSHED, 0);
      writer.prefix.writeUInt32LE(0, 4);
      let sent = 0;
      for (let i = 0; i < count; i++) {
        const slot = picked[i]!;
        // Served by a fault, or given up, while the pace was awaited.
        if (this.done[slot] !== 0) continue;
        writer.add(slot, PAGE_DATA)!.set(this.space.borrowPageForRead(this.pageOf(slot)));
        this.done[slot] = 1;
        sent++;
      }
      if (sent === 0) continue;
      const frame = writer.seal(PS_PAGES);
      this.counts.pushed += sent;
      this.counts.pushBatches++;
      this.counts.bytesSent += frame.length;
      await this.race(this.store!.send(frame), 'take the pushed pages');
    }
  }

  /** Answers a fault at once (its own frame: a posted frame must not share the push's buffer). */
  private serve(slots: Float64Array): void {
    const writer = new PageBatchWriter({
      pageSize: this.pageSize,
      maxDataPages: slots.length,
      prefixBytes: PAGES_PREFIX_BYTES,
    });
    writer.prefix.writeUInt32LE(PAGES_FAULTED, 0);
    writer.prefix.writeUInt32LE(0, 4);
    for (const slot of slots) {
      writer.add(slot, PAGE_DATA)!.set(this.space.borrowPageForRead(this.pageOf(slot)));
      if (this.done[slot] === 0) {
        this.done[slot] = 1;
        this.counts.served++;
      }
    }
    const frame = writer.seal(PS_PAGES);
    this.counts.bytesSent += frame.length;
    this.store!.post(frame);
  }

  private onStoreMessage(type: number, payload: Buffer): void {
    if (!this.switchedOver)
      throw protocolError(`the destination's store sent message ${type} before the switchover`);
    switch (type) {
      case PS_FETCH:
        this.serve(decodeSlots(payload, this.slots));
        return;
      case PS_NOT_NEEDED:
        for (const slot of decodeSlots(payload, this.slots)) {
          if (this.done[slot] === 0) {
            this.done[slot] = 1;
            this.counts.notNeeded++;
          }
        }
        return;
      case PS_HAVE_ALL:
        this.haveAll = true;
        this.haveAllWaiter?.();
        return;
      default:
        throw protocolError(`the destination's store sent message type ${type}`);
    }
  }

  private progress(): PostCopySourceProgress {
    const { served, pushed, notNeeded, bytesSent, pushBatches } = this.counts;
    return {
      pages: this.slots,
      served,
      pushed,
      notNeeded,
      remaining: Math.max(0, this.slots - served - pushed - notNeeded),
      bytesSent,
      pushBatches,
    };
  }

  private tick(): void {
    const progress = this.progress();
    this.connection.post(encodeJsonFrame(PC_PROGRESS, progress));
    this.options.onProgress?.(progress);
  }

  // ---------------------------------------------------------------------------------------
  // The page server

  private async listen(): Promise<number> {
    const server = createServer((socket) => this.accept(socket));
    this.server = server;
    const host = this.options.pageServerHost ?? this.connection.socket.localAddress ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.pageServerPort ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((error: Error) => {
      throw new MemfabricError(
        ErrorCodes.INVALID_ARGUMENT,
        `the post-copy page server cannot listen on ${host}: ${error.message}; give another pageServerHost/pageServerPort`,
      );
    });
    return (server.address() as { port: number }).port;
  }

  /** A connection to the page server: it must attach with this migration's id, once. */
  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const peer = new MessageConnection(socket);
    let attached = false;
    const timer = setTimeout(() => {
      if (!attached) peer.destroy();
    }, ATTACH_TIMEOUT_MS);
    timer.unref();
    peer.onMessage((type, payload) => {
      if (attached) {
        this.onStoreMessage(type, payload);
        return;
      }
      if (type !== PS_ATTACH)
        throw protocolError(`the page server expects an attach first, got message ${type}`);
      const { migrationId } = decodeJson<{ migrationId?: unknown }>(payload);
      if (!sameId(migrationId, this.options.migrationId)) {
        throw new MemfabricError(
          ErrorCodes.FORBIDDEN,
          'the post-copy page server serves only the migration it belongs to; the id presented is not its id',
        );
      }
      if (this.store !== undefined) {
        throw new MemfabricError(ErrorCodes.CONFLICT, 'a store is attached to this migration already');
      }
      clearTimeout(timer);
      attached = true;
      this.store = peer;
      void peer.closed.then(() => {
        if (!this.haveAll) {
          this.fail(
            new MemfabricError(
              ErrorCodes.CONNECTION_CLOSED,
              `the destination's page store disconnected ${this.switchedOver ? 'after' : 'before'} the switchover` +
                `${peer.error ? ` (${peer.error.message})` : ''}${this.outcome()}`,
            ),
          );
        }
      });
      peer.post(encodeJsonFrame(PS_ATTACHED, {}));
    });
  }

  // ---------------------------------------------------------------------------------------
  // Waiting

  private fail(error: MemfabricError): void {
    if (this.failure) return;
    this.failure = error;
    this.failed();
    this.messageWaiter?.();
    this.haveAllWaiter?.();
  }

  private check(): void {
    if (this.failure) throw this.failure;
  }

  /** The next main-connection message, which must be `type` (PC_PROGRESS is never sent this way). */
  private async expect(type: number, what: string): Promise<Buffer> {
    const deadline = performance.now() + this.stepTimeoutMs;
    for (;;) {
      this.check();
      const message = this.messages.shift();
      if (message) {
        if (message.type !== type) {
          throw protocolError(`the destination sent message ${message.type} where ${type} belongs`);
        }
        return message.payload;
      }
      const left = deadline - performance.now();
      if (left <= 0) throw this.timedOut(what);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.messageWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.messageWaiter = undefined;
    }
  }

  private async waitHaveAll(): Promise<void> {
    const deadline = performance.now() + this.stepTimeoutMs;
    while (!this.haveAll) {
      this.check();
      // The push is over: what remains are pages in flight to the store, or faults under way.
      const left = deadline - performance.now();
      if (left <= 0) throw this.timedOut('confirm it has every page');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.haveAllWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.haveAllWaiter = undefined;
    }
  }

  /** `promise`, unless the migration fails first or (`what` given) the step outlasts stepTimeoutMs. */
  private async race<T>(promise: Promise<T>, what: string | undefined): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      if (what !== undefined) timer = setTimeout(() => reject(this.timedOut(what)), this.stepTimeoutMs);
    });
    try {
      return await Promise.race([
        promise,
        timeout,
        this.failedPromise.then(() => {
          throw this.failure!;
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** What a failure leaves: before the switchover the source keeps its space, after it the destination owns it. */
  private outcome(): string {
    return this.switchedOver
      ? '; the space now lives at the destination (this side holds it as of the switchover, gated)'
      : '; the migration failed and this side keeps its space';
  }

  private timedOut(what: string): MemfabricError {
    const error = new MemfabricError(
      ErrorCodes.TIMEOUT,
      `the post-copy destination did not ${what} within ${this.stepTimeoutMs} ms${this.outcome()}`,
    );
    this.fail(error);
    return error;
  }
}

/** The gate of a space that has moved: every change is refused, for good. */
function movedGate(migrationId: string, where: string): WriteGate {
  const refuse = (): never => {
    throw new MemfabricError(
      ErrorCodes.MIGRATING,
      `this address space has moved to ${where} (post-copy migration ${migrationId}); write to the space ` +
        'there (reads here still see the state at the switchover)',
    );
  };
  return { admit: refuse, dirtied: refuse };
}

function sameId(presented: unknown, expected: string): boolean {
  if (typeof presented !== 'string') return false;
  const a = Buffer.from(presented, 'utf8');
  const b = Buffer.from(expected, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

function checkOptions(options: PostCopySourceOptions): void {
  if (typeof options !== 'object' || options === null) {
    throw invalidArgument('runPostCopySource needs options { migrationId, … }');
  }
  if (typeof options.migrationId !== 'string' || options.migrationId === '') {
    throw invalidArgument("runPostCopySource needs the migration's id (options.migrationId)");
  }
  const batch = options.pushBatchPages;
  if (batch !== undefined && (!Number.isInteger(batch) || batch < 1 || batch > 1024)) {
    throw invalidArgument(`pushBatchPages ${batch} must be a whole number of pages from 1 to 1024`);
  }
  const step = options.stepTimeoutMs;
  if (step !== undefined && !(step > 0 && Number.isFinite(step))) {
    throw invalidArgument(`stepTimeoutMs ${step} must be a positive number of milliseconds`);
  }
}
