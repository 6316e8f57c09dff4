/**
 * The standby's side of lockstep replication (replica.ts is the primary's): a StandbyListener
 * accepts a primary's replica and each accepted connection becomes a Standby that keeps a copy
 * of the primary's space (or heap) at the primary's last complete epoch.
 *
 * Bring-up pages are applied as they come (there is no consistent state to protect yet). An
 * epoch's batches are buffered, and the epoch is applied only when its commit arrives and every
 * batch checks out (counts, page numbers, lengths; each frame already passed its checksum), in
 * one synchronous step, then acknowledged. So the copy is always exactly some epoch of the
 * primary, never part of one.
 *
 * Failover: when the primary goes (its connection closes, as on SIGKILL, or nothing comes for
 * `heartbeatTimeoutMs`, as on a network cut or a stopped process), the standby activates at its
 * last complete epoch: the program gets the AddressSpace, or an open Heap at the path it gave.
 * Everything `durable()` confirmed is in it, because durable() resolves only on the
 * acknowledgement of an epoch, and an epoch is acknowledged only once applied. A standby that
 * loses its primary before its first complete epoch has nothing consistent and fails with
 * MF_STANDBY_NOT_SYNCED.
 */
import { EventEmitter } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { AddressSpace } from '../memory/address-space.js';
import { FramePool } from '../memory/frame-pool.js';
import { Heap, type HeapOptions } from '../heap/heap.js';
import { HeapImage } from '../heap/image.js';
import { MSG_ERROR, MessageConnection } from './connection.js';
import {
  BRINGUP_PREFIX_BYTES,
  COMMIT_BYTES,
  EPOCH_PREFIX_BYTES,
  HEARTBEAT_TIMEOUT_DEFAULT_MS,
  MSG_BRINGUP_PAGES,
  MSG_BYE,
  MSG_EPOCH_COMMIT,
  MSG_EPOCH_PAGES,
  MSG_HEARTBEAT,
  MSG_HELLO,
  MSG_WELCOME,
  SampleRing,
  STANDBY_PROTOCOL,
  STANDBY_PROTOCOL_VERSION,
  encodeAck,
  smallFrame,
  type Hello,
  type LatencySummary,
} from './standby-protocol.js';
import {
  PAGE_DATA,
  PAGE_ZERO,
  decodeJson,
  encodeJsonFrame,
  protocolError,
  readPageBatch,
  type PageKind,
} from './wire.js';

export interface StandbyOptions {
  /**
   * Declare the primary gone when nothing came from it for this long (ms). Default: what the
   * primary announces (its heartbeatTimeoutMs, default 1000).
   */
  heartbeatTimeoutMs?: number;
  /** Take over by itself when the primary goes (default true); otherwise call activate(). */
  autoActivate?: boolean;
  /**
   * For a replicated heap: where the standby keeps it (a new image, MF_HEAP_EXISTS if anything
   * is there) and how to open it on activation. A heap's replica is refused without it.
   */
  heap?: HeapOptions;
  /** For a replicated space: the most memory its frames may take. Default: the space's size. */
  memory?: number;
  /** Largest epoch the standby buffers, in bytes; a larger one is refused. Default 2 GiB. */
  maxEpochBytes?: number;
}

export interface StandbyListenOptions extends StandbyOptions {
  host?: string;
  /** 0 (the default) picks a free port: read it from `listener.port`. */
  port?: number;
}

export type StandbyState = 'bringing-up' | 'synced' | 'active' | 'failed' | 'detached';

/** What the program gets when the standby takes over. */
export interface Activation {
  /** The space at the primary's last complete epoch (a heap's space for a heap). */
  space: AddressSpace;
  /** For a replicated heap: the heap, open at the path given in `heap.path`. */
  heap: Heap | undefined;
  /** The epoch it holds: every write the primary's durable() confirmed is in it. */
  epoch: number;
  /** Why it took over. */
  reason: string;
  /** From noticing the primary's loss to the state being handed over, ms. */
  failoverMs: number;
  /** Bytes of a later epoch that had arrived incomplete and were dropped, never applied. */
  discardedBytes: number;
}

export interface StandbyStats {
  state: StandbyState;
  /** The last complete epoch applied (0: still bringing up). */
  epoch: number;
  epochsApplied: number;
  bringUpPages: number;
  pagesApplied: number;
  bytesReceived: number;
  /** Bytes of the epoch being received (buffered, not applied). */
  bufferedBytes: number;
  /** Time to apply an epoch (verify and write), ms. */
  applyMs: LatencySummary;
  /** Since the last message from the primary, ms. */
  silentMs: number;
}

/**
 * Listens for primaries' replicas (`replicate(space, { host, port })`). Take each standby with
 * `accept()`, or handle the 'standby' event (then standbys are not also queued for accept()).
 */
export class StandbyListener extends EventEmitter {
  private readonly server: Server;
  private readonly ready: Standby[] = [];
  private readonly takers: Array<(standby: Standby) => void> = [];
  private readonly sockets = new Set<Socket>();

  private constructor(server: Server, options: StandbyListenOptions) {
    super();
    this.server = server;
    server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      const standby = new Standby(new MessageConnection(socket), options);
      void standby.hello.then(
        () => {
          const taker = this.takers.shift();
          // Kept for a later accept() only when nobody else takes it: a program that handles
          // the 'standby' event must not find every standby it ever had queued here.
          if (taker) taker(standby);
          else if (this.listenerCount('standby') === 0) this.ready.push(standby);
          this.emit('standby', standby);
        },
        () => undefined,
      );
    });
  }

  static async listen(options: StandbyListenOptions = {}): Promise<StandbyListener> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new StandbyListener(server, options);
  }

  get port(): number {
    const address = this.server.address();
    return typeof address === 'object' && address !== null ? address.port : 0;
  }

  /** The next primary's standby, once its handshake is done (bring-up then runs on). */
  accept(): Promise<Standby> {
    const standby = this.ready.shift();
    if (standby) return Promise.resolve(standby);
    return new Promise((resolve) => this.takers.push(resolve));
  }

  /** Stops listening (standbys already accepted keep running). */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export class Standby extends EventEmitter {
  /** Resolves once the primary's hello was accepted. */
  readonly hello: Promise<void>;
  private readonly conn: MessageConnection;
  private readonly options: StandbyOptions;
  private state: StandbyState = 'bringing-up';
  private target: AddressSpace | undefined;
  private image: HeapImage | undefined;
  private kind: 'space' | 'heap' = 'space';
  private pageSize = 0;
  private pageCount = 0;
  private size = 0;
  private heartbeatTimeoutMs = HEARTBEAT_TIMEOUT_DEFAULT_MS;
  private readonly maxEpochBytes: number;
  private heart: ReturnType<typeof setInterval> | undefined;
  private lastHeard = performance.now();
  private lastSent = performance.now();
  private failure: MemfabricError | undefined;
  private helloSeen = false;

  private appliedSeq = 0;
  private epochsApplied = 0;
  private bringUpPages = 0;
  private pagesApplied = 0;
  private bytesReceived = 0;
  private readonly applyMs = new SampleRing();
  /** The epoch being received: its batches, back to back in one reused arena. */
  private arena = Buffer.allocUnsafe(1024 * 1024);
  private arenaUsed = 0;
  private readonly batchEnds: number[] = [];
  private receivingSeq = 0;

  private resolveActivated!: (activation: Activation) => void;
  private rejectActivated!: (error: unknown) => void;
  /** Resolves with the Activation when the standby takes over; rejects if it cannot. */
  readonly activated: Promise<Activation>;
  private activating = false;

  private readonly applyRun = (first: number, pages: number, kind: PageKind, data: Uint8Array): void => {
    const space = this.target!;
    const offset = first * this.pageSize;
    const length = Math.min(pages * this.pageSize, this.size - offset);
    if (kind === PAGE_DATA) space.write(offset, length === data.length ? data : data.subarray(0, length));
    else if (kind === PAGE_ZERO) space.writeZeroes(offset, length);
    else space.trim(offset, length);
    this.pagesApplied += pages;
  };
  private readonly ignoreRun = (): void => undefined;

  /** @internal Made by StandbyListener. */
  constructor(conn: MessageConnection, options: StandbyOptions) {
    super();
    this.conn = conn;
    this.options = options;
    this.maxEpochBytes = options.maxEpochBytes ?? 2 * 1024 * 1024 * 1024;
    this.activated = new Promise((resolve, reject) => {
      this.resolveActivated = resolve;
      this.rejectActivated = reject;
    });
    this.activated.catch(() => undefined);
    let helloDone!: () => void;
    let helloFailed!: (error: unknown) => void;
    this.hello = new Promise((resolve, reject) => {
      helloDone = resolve;
      helloFailed = reject;
    });
    this.hello.catch(() => undefined);
    conn.onMessage((type, payload) => {
      this.lastHeard = performance.now();
      this.bytesReceived += payload.length + 16;
      if (type === MSG_HELLO) {
        if (this.helloSeen) throw protocolError('a second hello');
        this.helloSeen = true;
        void this.accept(decodeJson<Hello>(payload)).then(helloDone, (error: unknown) => {
          const failure =
            error instanceof MemfabricError
              ? error
              : new MemfabricError(
                  ErrorCodes.INTERNAL,
                  `the standby could not start: ${(error as Error).message}`,
                );
          helloFailed(failure);
          this.conn.abort(failure);
        });
        return;
      }
      if (this.target === undefined) throw protocolError(`message type ${type} before the hello`);
      this.onMessage(type, payload);
    });
    void conn.closed.then(() => {
      helloFailed(conn.error);
      const error = conn.error;
      if (error !== undefined && error.code !== ErrorCodes.CONNECTION_CLOSED) {
        // A broken stream or the primary's own error report: the primary is (or may be)
        // alive, so taking over would make two primaries. The copy is dropped instead.
        this.fail(error);
      } else this.primaryGone(error?.message ?? 'the connection closed');
    });
    this.heart = setInterval(() => this.checkHeartbeat(), 50);
    this.heart.unref();
  }

  /** The space being kept in lockstep (do not write it before activation). */
  get space(): AddressSpace | undefined {
    return this.target;
  }

  get epoch(): number {
    return this.appliedSeq;
  }

  get isSynced(): boolean {
    return this.appliedSeq > 0;
  }

  stats(): StandbyStats {
    return {
      state: this.state,
      epoch: this.appliedSeq,
      epochsApplied: this.epochsApplied,
      bringUpPages: this.bringUpPages,
      pagesApplied: this.pagesApplied,
      bytesReceived: this.bytesReceived,
      bufferedBytes: this.arenaUsed,
      applyMs: this.applyMs.summary(),
      silentMs: performance.now() - this.lastHeard,
    };
  }

  /**
   * Takes over now (a planned switchover, or after a 'primary-lost' event with autoActivate
   * off): drops the primary and resolves with the state at the last complete epoch.
   */
  activate(reason = 'activated by the program'): Promise<Activation> {
    void this.takeOver(reason, performance.now());
    return this.activated;
  }

  /** Drops the connection and releases the copy (a standby no longer wanted). */
  async close(): Promise<void> {
    if (this.state === 'active') return;
    this.state = 'detached';
    this.stop();
    this.conn.destroy();
    await this.conn.closed;
    this.rejectActivated(new MemfabricError(ErrorCodes.STANDBY_NOT_SYNCED, 'the standby was closed'));
    if (this.image) await this.image.close({ checkpoint: false }).catch(() => undefined);
    else this.target?.destroy();
  }

  // -------------------------------------------------------------------------------------------

  private async accept(hello: Hello): Promise<void> {
    if (hello.protocol !== STANDBY_PROTOCOL || hello.version !== STANDBY_PROTOCOL_VERSION) {
      throw protocolError(
        `the primary speaks ${hello.protocol} v${hello.version}, not ${STANDBY_PROTOCOL} v${STANDBY_PROTOCOL_VERSION}`,
      );
    }
    if (
      !Number.isSafeInteger(hello.size) ||
      hello.size <= 0 ||
      !Number.isInteger(hello.pageSize) ||
      hello.pageSize <= 0
    ) {
      throw protocolError('the hello names an impossible space');
    }
    this.kind = hello.kind === 'heap' ? 'heap' : 'space';
    this.size = hello.size;
    this.pageSize = hello.pageSize;
    this.pageCount = Math.ceil(hello.size / hello.pageSize);
    this.heartbeatTimeoutMs =
      this.options.heartbeatTimeoutMs ?? hello.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_DEFAULT_MS;
    if (this.kind === 'heap') {
      if (this.options.heap === undefined) {
        throw invalidArgument(
          'the primary replicates a heap; start the standby with StandbyListener.listen({ heap: { path } }) to give it a place to keep it',
        );
      }
      this.image = await HeapImage.create({
        ...this.options.heap,
        size: hello.size,
        pageSize: hello.pageSize,
      });
      this.target = this.image.space;
    } else {
      const frames = Math.min(Math.ceil((this.options.memory ?? hello.size) / hello.pageSize), 2 ** 31 - 8);
      const pool = new FramePool({
        pageSize: hello.pageSize,
        capacity: Math.min(frames, 4096) * hello.pageSize,
        maxCapacity: frames * hello.pageSize,
      });
      this.target = new AddressSpace(pool, { size: hello.size });
    }
    this.conn.post(encodeJsonFrame(MSG_WELCOME, { heartbeatTimeoutMs: this.heartbeatTimeoutMs }));
    this.lastSent = performance.now();
  }

  private onMessage(type: number, payload: Buffer): void {
    if (this.state !== 'bringing-up' && this.state !== 'synced') return;
    switch (type) {
      case MSG_BRINGUP_PAGES: {
        if (this.appliedSeq > 0 || this.receivingSeq > 0)
          throw protocolError('bring-up pages after the first epoch');
        const batch = payload.subarray(BRINGUP_PREFIX_BYTES);
        this.bringUpPages += readPageBatch(batch, this.pageSize, this.pageCount, this.applyRun);
        return;
      }
      case MSG_EPOCH_PAGES:
        this.receiveBatch(payload);
        return;
      case MSG_EPOCH_COMMIT:
        this.commit(payload);
        return;
      case MSG_HEARTBEAT:
        return;
      case MSG_BYE:
        // The primary detaches on purpose: it is alive, so this copy must not take over.
        this.state = 'detached';
        this.stop();
        this.emit('detached');
        this.rejectActivated(
          new MemfabricError(
            ErrorCodes.STANDBY_NOT_SYNCED,
            'the primary detached this standby on purpose (replica.close())',
          ),
        );
        return;
      case MSG_ERROR:
        return;
      default:
        throw protocolError(`a primary sent message type ${type}, which a standby does not expect`);
    }
  }

  private receiveBatch(payload: Buffer): void {
    if (payload.length < EPOCH_PREFIX_BYTES) throw protocolError('an epoch batch shorter than its prefix');
    const seq = payload.readDoubleLE(0);
    const index = payload.readUInt32LE(8);
    if (seq !== this.appliedSeq + 1)
      throw protocolError(`a batch of epoch ${seq} while epoch ${this.appliedSeq + 1} is due`);
    if (index !== this.batchEnds.length) throw protocolError(`epoch ${seq}'s batch ${index} out of order`);
    this.receivingSeq = seq;
    const batch = payload.subarray(EPOCH_PREFIX_BYTES);
    const end = this.arenaUsed + batch.length;
    if (end > this.maxEpochBytes) {
      throw new MemfabricError(
        ErrorCodes.STANDBY_BEHIND,
        `epoch ${seq} exceeds the standby's maxEpochBytes (${this.maxEpochBytes}); give the standby a larger maxEpochBytes or use shorter epochs`,
      );
    }
    if (end > this.arena.length) {
      const grown = Buffer.allocUnsafe(Math.max(end, this.arena.length * 2));
      this.arena.copy(grown, 0, 0, this.arenaUsed);
      this.arena = grown;
    }
    batch.copy(this.arena, this.arenaUsed);
    this.arenaUsed = end;
    this.batchEnds.push(end);
  }

  /** The epoch is complete: check it whole, then apply it in one step and acknowledge it. */
  private commit(payload: Buffer): void {
    if (payload.length !== COMMIT_BYTES) throw protocolError('an epoch commit of the wrong length');
    const seq = payload.readDoubleLE(0);
    const batches = payload.readUInt32LE(8);
    const pages = payload.readDoubleLE(16);
    if (seq !== this.appliedSeq + 1)
      throw protocolError(`a commit of epoch ${seq} while epoch ${this.appliedSeq + 1} is due`);
    if (batches !== this.batchEnds.length) {
      throw protocolError(`epoch ${seq} commits ${batches} batches, ${this.batchEnds.length} arrived`);
    }
    const start = performance.now();
    // Verify every batch before applying any: a bad one leaves the copy at the previous epoch.
    let total = 0;
    let from = 0;
    for (const end of this.batchEnds) {
      total += readPageBatch(this.arena.subarray(from, end), this.pageSize, this.pageCount, this.ignoreRun);
      from = end;
    }
    if (total !== pages)
      throw protocolError(`epoch ${seq} commits ${pages} pages, its batches hold ${total}`);
    from = 0;
    try {
      for (const end of this.batchEnds) {
        readPageBatch(this.arena.subarray(from, end), this.pageSize, this.pageCount, this.applyRun);
        from = end;
      }
    } catch (error) {
      // Half an epoch is in the copy: it is no longer any epoch of the primary's.
      this.fail(
        new MemfabricError(
          ErrorCodes.STANDBY_NOT_SYNCED,
          `applying epoch ${seq} failed (${(error as Error).message}); this standby's copy is torn and cannot take over: give it more memory and replicate again`,
        ),
      );
      return;
    }
    this.batchEnds.length = 0;
    this.arenaUsed = 0;
    this.receivingSeq = 0;
    this.appliedSeq = seq;
    this.epochsApplied++;
    this.applyMs.add(performance.now() - start);
    this.conn.post(encodeAck(seq));
    this.lastSent = performance.now();
    if (seq === 1) {
      this.state = 'synced';
      this.emit('synced');
    }
  }

  private checkHeartbeat(): void {
    const now = performance.now();
    if (this.target === undefined) {
      // A peer that connects and says nothing (or not a primary at all) is not kept around.
      const limit = this.options.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_DEFAULT_MS;
      if (!this.helloSeen && now - this.lastHeard > limit && this.conn.isOpen) {
        this.fail(protocolError(`no hello within ${limit} ms of connecting`));
      }
      return;
    }
    if (this.state !== 'bringing-up' && this.state !== 'synced') return;
    if (now - this.lastHeard > this.heartbeatTimeoutMs) {
      const reason = `nothing came from the primary for ${Math.round(now - this.lastHeard)} ms`;
      this.conn.destroy();
      this.primaryGone(reason, now);
      return;
    }
    if (now - this.lastSent > this.heartbeatTimeoutMs / 4) {
      this.conn.post(smallFrame(MSG_HEARTBEAT, 0, () => undefined));
      this.lastSent = now;
    }
  }

  private primaryGone(reason: string, noticed = performance.now()): void {
    if (this.activating || (this.state !== 'bringing-up' && this.state !== 'synced')) return;
    this.emit('primary-lost', { reason, epoch: this.appliedSeq });
    if (this.options.autoActivate ?? true) void this.takeOver(reason, noticed);
  }

  private async takeOver(reason: string, noticed: number): Promise<void> {
    if (this.activating || this.state === 'active' || this.state === 'failed' || this.state === 'detached')
      return;
    this.activating = true;
    this.stop();
    this.conn.destroy();
    if (this.appliedSeq === 0) {
      this.fail(
        new MemfabricError(
          ErrorCodes.STANDBY_NOT_SYNCED,
          `the primary went (${reason}) before the standby held one complete epoch; it has no consistent copy: restart the primary from its own persistence and replicate again`,
        ),
      );
      return;
    }
    // Whatever arrived of a later epoch is dropped: an incomplete epoch is never applied.
    const discardedBytes = this.arenaUsed;
    this.batchEnds.length = 0;
    this.arenaUsed = 0;
    try {
      let heap: Heap | undefined;
      if (this.kind === 'heap') heap = await Heap.adoptReplicatedImage(this.image!, this.options.heap!);
      this.state = 'active';
      const activation: Activation = {
        space: heap ? heap.space : this.target!,
        heap,
        epoch: this.appliedSeq,
        reason,
        failoverMs: performance.now() - noticed,
        discardedBytes,
      };
      this.emit('activated', activation);
      this.resolveActivated(activation);
    } catch (error) {
      this.fail(
        error instanceof MemfabricError
          ? error
          : new MemfabricError(ErrorCodes.INTERNAL, (error as Error).message),
      );
    }
  }

  private fail(error: MemfabricError): void {
    if (this.failure) return;
    this.failure = error;
    this.state = 'failed';
    this.stop();
    if (this.conn.isOpen) this.conn.abort(error);
    if (this.image) void this.image.close({ checkpoint: false }).catch(() => undefined);
    this.emit('failed', error);
    this.rejectActivated(error);
  }

  private stop(): void {
    if (this.heart) clearInterval(this.heart);
    this.heart = undefined;
  }
}
