/**
 * The destination's side of a live migration: a TCP listener that accepts migrations, and for
 * each one the target it is received into — a new AddressSpace (`incoming.space()`) or a new
 * heap image (`incoming.heap({ path })`).
 *
 *   const listener = await MigrationListener.listen({ host: '127.0.0.1', port: 0 });
 *   const incoming = await listener.accept();        // a source said HELLO
 *   const space = await incoming.space();            // resolves once this process owns it
 *
 * The target resolves only after the handover: the source sent everything, this side applied
 * it and said so (APPLIED), and the source committed (COMMIT; see protocol.ts for who decides).
 * If the source dies, cancels or the connection fails before that, the promise rejects with a
 * typed error and the partial copy is discarded (the space destroyed, the heap image removed):
 * the source still has everything. After it, this process owns the state whatever the source
 * does. The received space continues the source's epochs: its epoch is at least the source's
 * at the blackout, and every page received reads as written at or after the source's epoch when
 * the migration began (a conservative superset of the pages dirty there).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { AddressSpace } from '../memory/address-space.js';
import { FramePool } from '../memory/frame-pool.js';
import {
  receivePostCopy,
  type PostCopyDestination,
  type PostCopyDestinationOptions,
} from './postcopy-destination.js';
import { Heap, type HeapOptions } from '../heap/heap.js';
import { applyPageBatch } from './apply.js';
import { MessageConnection } from './connection.js';
import {
  MSG_APPLIED,
  MSG_COMMIT,
  MSG_HANDOVER,
  MSG_HELLO,
  MSG_PAGES,
  MSG_SYNC,
  MSG_SYNCED,
  MSG_WELCOME,
  checkHello,
  connectionLost,
  type Hello,
  type MigrationKind,
  type MigrationMode,
} from './protocol.js';
import { decodeJson, encodeJsonFrame, FRAME_HEADER_BYTES, protocolError } from './wire.js';

/** A connection must say HELLO within this long. */
export const HELLO_TIMEOUT_MS = 10_000;
/** Migrations that said HELLO and wait for accept(); more are refused (MF_BUSY). */
export const ACCEPT_QUEUE_MAX = 16;
/** A received space's pool starts this small and grows as pages arrive. */
const POOL_INITIAL_BYTES = 16 * 1024 * 1024;

export interface ListenOptions {
  /** Address to bind (default 127.0.0.1: closed by default; bind another to accept from afar). */
  host?: string;
  /** TCP port (default 0: any free port, see `port`). */
  port?: number;
}

export interface ReceiveSpaceOptions {
  /** The frame pool to receive into (its page size must be the source's). Default: a new pool that grows as pages arrive. */
  pool?: FramePool;
  /** Trust domain of the received space (see AddressSpaceOptions). */
  domain?: string;
}

export interface IncomingProgress {
  phase: 'waiting' | 'receiving' | 'handover' | 'done' | 'failed';
  pagesReceived: number;
  bytesReceived: number;
}

export class MigrationListener {
  private readonly queue: IncomingMigration[] = [];
  private readonly waiters: {
    resolve: (incoming: IncomingMigration) => void;
    reject: (error: unknown) => void;
  }[] = [];
  private readonly pending = new Set<MessageConnection>();
  private closed = false;

  /** The address bound. */
  readonly host: string;
  /** The port bound (the one chosen when listening on port 0). */
  readonly port: number;

  private constructor(private readonly server: Server) {
    const address = server.address() as { address: string; port: number };
    this.host = address.address;
    this.port = address.port;
    server.on('connection', (socket: Socket) => this.greet(socket));
  }

  /** Starts listening (127.0.0.1 and a free port unless told otherwise). */
  static async listen(options: ListenOptions = {}): Promise<MigrationListener> {
    const host = options.host ?? '127.0.0.1';
    const port = options.port ?? 0;
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw invalidArgument(`port ${String(port)} must be a TCP port from 0 (any) to 65535`);
    }
    const server = createServer();
    server.listen(port, host);
    try {
      await once(server, 'listening');
    } catch (error) {
      throw new MemfabricError(
        ErrorCodes.INVALID_ARGUMENT,
        `cannot listen for migrations on ${host}:${port}: ${(error as Error).message}; pick another address or port`,
        { cause: error },
      );
    }
    return new MigrationListener(server);
  }

  /** The next migration a source started here (its HELLO checked). */
  accept(): Promise<IncomingMigration> {
    const next = this.queue.shift();
    if (next) return Promise.resolve(next);
    if (this.closed) return Promise.reject(listenerClosed());
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Stops listening; migrations not accepted yet are refused (their sources go on). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) waiter.reject(listenerClosed());
    for (const incoming of this.queue.splice(0)) incoming.reject('the destination stopped listening');
    for (const connection of this.pending) connection.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private greet(socket: Socket): void {
    const connection = new MessageConnection(socket);
    if (this.closed) {
      connection.abort(listenerClosed());
      return;
    }
    this.pending.add(connection);
    const timer = setTimeout(
      () =>
        connection.abort(new MemfabricError(ErrorCodes.TIMEOUT, `no HELLO within ${HELLO_TIMEOUT_MS} ms`)),
      HELLO_TIMEOUT_MS,
    );
    void connection.closed.then(() => {
      clearTimeout(timer);
      this.pending.delete(connection);
    });
    connection.onMessage((type, payload) => {
      if (type !== MSG_HELLO) throw protocolError(`the first message has type ${type}, not HELLO`);
      clearTimeout(timer);
      this.pending.delete(connection);
      const hello = checkHello(decodeJson<Partial<Hello>>(payload));
      if (this.queue.length >= ACCEPT_QUEUE_MAX) {
        throw new MemfabricError(
          ErrorCodes.BUSY,
          `the destination has ${ACCEPT_QUEUE_MAX} migrations waiting to be accepted; retry later`,
        );
      }
      const incoming = new IncomingMigration(connection, hello);
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(incoming);
      else this.queue.push(incoming);
    });
  }
}

/** One migration arriving here (see the file header). */
export class IncomingMigration {
  readonly id: string;
  readonly mode: MigrationMode;
  readonly kind: MigrationKind;
  /** The space's size and page size, as on the source. */
  readonly size: number;
  readonly pageSize: number;
  /** The source's epoch when the migration began. */
  readonly sourceEpoch: number;
  /** host:port of the source. */
  readonly remote: string;
  private phase: IncomingProgress['phase'] = 'waiting';
  private pagesReceived = 0;
  private bytesReceived = 0;
  private windowBytes = 0;
  private windowStart = 0;
  private started = false;

  /** @internal Made by MigrationListener. */
  constructor(
    private readonly connection: MessageConnection,
    hello: Hello,
  ) {
    this.id = hello.id;
    this.mode = hello.mode;
    this.kind = hello.kind;
    this.size = hello.size;
    this.pageSize = hello.pageSize;
    this.sourceEpoch = hello.epoch;
    this.remote = `${connection.socket.remoteAddress ?? '?'}:${connection.socket.remotePort ?? '?'}`;
    connection.onMessage((type) => {
      throw protocolError(`message ${type} arrived before the migration was accepted`);
    });
  }

  progress(): IncomingProgress {
    return { phase: this.phase, pagesReceived: this.pagesReceived, bytesReceived: this.bytesReceived };
  }

  /**
   * Receives the migration into a new AddressSpace; resolves with it after the handover (this
   * process owns it then), rejects if the source never hands over (the copy is discarded).
   */
  async space(options: ReceiveSpaceOptions = {}): Promise<AddressSpace> {
    if (this.mode === 'postcopy') {
      if (options.pool !== undefined) {
        const error = invalidArgument(
          'a post-copy migration arrives in a pool of its own (behind a pager that faults pages in from the source); receive it with postCopy({ budget, local }) instead of passing a pool',
        );
        this.reject(error.message);
        throw error;
      }
      return (await this.postCopy(options.domain !== undefined ? { domain: options.domain } : {})).space;
    }
    this.begin();
    let pool = options.pool;
    if (pool !== undefined && pool.pageSize !== this.pageSize) {
      const error = invalidArgument(
        `the pool has ${pool.pageSize}-byte pages; the migrating space has ${this.pageSize}-byte pages`,
      );
      this.reject(error.message);
      throw error;
    }
    pool ??= new FramePool({
      pageSize: this.pageSize,
      capacity: Math.min(POOL_INITIAL_BYTES, Math.ceil(this.size / this.pageSize) * this.pageSize),
      maxCapacity: Math.ceil(this.size / this.pageSize) * this.pageSize,
    });
    const space = new AddressSpace(pool, {
      size: this.size,
      ...(options.domain !== undefined ? { domain: options.domain } : {}),
    });
    try {
      await this.receive(space);
      return space;
    } catch (error) {
      space.destroy();
      throw error;
    }
  }

  /**
   * Receives a heap migration into a new heap image at `options.path` (the size and page size
   * are the source's); resolves with the open Heap after the handover — allocator and roots
   * re-attached, collections reopening from their roots, a first checkpoint committed. If the
   * source never hands over, the image is removed and the promise rejects.
   */
  async heap(options: HeapOptions): Promise<Heap> {
    if (this.kind !== 'heap') {
      const error = invalidArgument(
        'this migration carries a plain address space, not a heap; receive it with space()',
      );
      this.reject(error.message);
      throw error;
    }
    this.begin();
    return Heap.receive({ ...options, size: this.size, pageSize: this.pageSize }, (space) =>
      this.receive(space),
    ).catch((error: unknown) => {
      this.fail(error);
      throw error;
    });
  }

  /**
   * Receives a post-copy migration (the source asked for mode 'postcopy'): resolves at the
   * switchover, at once, with the space (its missing pages fault in from the source) and the
   * figures; `completed` resolves once every page has moved, or rejects with
   * MF_POSTCOPY_SOURCE_LOST if the source dies first (see docs/postcopy.md).
   */
  async postCopy(options: PostCopyDestinationOptions = {}): Promise<PostCopyDestination> {
    if (this.mode !== 'postcopy') {
      const error = invalidArgument('this migration is a pre-copy one; receive it with space() or heap()');
      this.reject(error.message);
      throw error;
    }
    this.begin();
    this.phase = 'receiving';
    // receivePostCopy takes the connection's messages in its first synchronous step, so the
    // source's offer (sent on WELCOME) cannot reach the handler set before acceptance.
    const receiving = receivePostCopy(
      this.connection,
      { migrationId: this.id, size: this.size, pageSize: this.pageSize, epoch: this.sourceEpoch },
      options,
    );
    this.connection.post(encodeJsonFrame(MSG_WELCOME, { id: this.id }));
    try {
      const destination = await receiving;
      this.phase = 'done';
      return destination;
    } catch (error) {
      this.fail(error);
      throw error;
    }
  }

  /** Refuses the migration: the source's `done` rejects with `reason` and it goes on. */
  reject(reason = 'the destination refused the migration'): void {
    this.phase = 'failed';
    this.connection.abort(new MemfabricError(ErrorCodes.INVALID_ARGUMENT, reason));
  }

  private begin(): void {
    if (this.started) throw invalidArgument('this migration is already being received');
    this.started = true;
  }

  private fail(error: unknown): void {
    this.phase = 'failed';
    if (this.connection.isOpen) {
      this.connection.abort(
        error instanceof MemfabricError
          ? error
          : new MemfabricError(ErrorCodes.INTERNAL, `receiving failed: ${(error as Error).message}`),
      );
    }
  }

  /** Applies the stream to `target` until COMMIT (resolves) or the end of the connection (rejects). */
  private receive(target: AddressSpace): Promise<void> {
    const connection = this.connection;
    target.continueEpoch(this.sourceEpoch);
    return new Promise<void>((resolve, reject) => {
      let handedOver = false;
      let committed = false;
      connection.onMessage((type, payload) => {
        if (committed) return;
        if (type === MSG_PAGES) {
          if (handedOver) throw protocolError('pages arrived after the handover');
          this.pagesReceived += applyPageBatch(target, payload);
          this.bytesReceived += payload.length + FRAME_HEADER_BYTES;
          this.windowBytes += payload.length + FRAME_HEADER_BYTES;
        } else if (type === MSG_SYNC) {
          const { seq } = decodeJson<{ seq?: unknown }>(payload);
          const now = performance.now();
          connection.post(
            encodeJsonFrame(MSG_SYNCED, { seq, bytes: this.windowBytes, ms: now - this.windowStart }),
          );
          this.windowBytes = 0;
          this.windowStart = now;
        } else if (type === MSG_HANDOVER) {
          const { finalEpoch } = decodeJson<{ finalEpoch?: unknown }>(payload);
          if (!Number.isSafeInteger(finalEpoch) || (finalEpoch as number) < 1) {
            throw protocolError(`HANDOVER names epoch ${String(finalEpoch)}`);
          }
          handedOver = true;
          this.phase = 'handover';
          target.continueEpoch(finalEpoch as number);
          connection.post(encodeJsonFrame(MSG_APPLIED, { epoch: target.epoch }));
        } else if (type === MSG_COMMIT) {
          if (!handedOver) throw protocolError('COMMIT arrived before HANDOVER');
          committed = true;
          this.phase = 'done';
          resolve();
          void connection.close();
        } else {
          throw protocolError(`unexpected message of type ${type} during a migration`);
        }
      });
      void connection.closed.then(() => {
        if (committed) return;
        this.phase = 'failed';
        reject(
          connectionLost(
            connection.error,
            `migration ${this.id} from ${this.remote} ended before the handover; the source keeps the space and this partial copy is discarded`,
          ),
        );
      });
      this.phase = 'receiving';
      this.windowStart = performance.now();
      connection.post(encodeJsonFrame(MSG_WELCOME, { id: this.id }));
    });
  }
}

function listenerClosed(): MemfabricError {
  return new MemfabricError(ErrorCodes.CONNECTION_CLOSED, 'the migration listener was closed');
}
