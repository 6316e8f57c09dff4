/**
 * NbdClient: one NBD connection (fixed newstyle, structured replies, block status), with many
 * requests in flight, matched by cookie and answered in any order.
 *
 *   const client = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'vm1' });
 *   await client.write(4096, bytes);
 *   const back = await client.read(4096, bytes.length);
 *   await client.disconnect();
 *
 * How a call travels:
 *   call -> Op (queue.ts) -> bounded FIFO queue -> pump() -> one or more pieces, each a
 *   slot of the InflightTable (inflight.ts) and a 28-byte header on the socket (a WRITE's
 *   payload follows it uncopied) -> ReplyParser (reply-parser.ts) matches each reply to
 *   its slot, writes READ data straight into the caller's buffer -> replyDone() releases the
 *   slot, settles the Op when its last piece is answered, and pumps the queue again.
 *
 * Bounds: `inflightMax` slots (default 256, a power of two), `queueMax` calls waiting (default
 * 4096; one more is refused with MF_BUSY), WRITE_QUEUED_BYTES_MAX bytes buffered in the socket
 * before issuing pauses until 'drain'. READ and WRITE calls larger than the largest piece
 * (the server's maximum payload, at most 32 MiB) are split into pieces; TRIM, WRITE_ZEROES and
 * CACHE into 1 GiB pieces; BLOCK_STATUS asks about at most 1 GiB and returns what the server
 * described. Arguments are checked locally (integers, alignment to the minimum block size,
 * commands the server advertised); ranges beyond the export are left to the server, which
 * answers EINVAL (ENOSPC for writes).
 *
 * Timeouts: one interval per connection ticks TIMEOUT_TICKS_PER_PERIOD times per
 * `requestTimeoutMs`; each slot remembers the tick it was sent in. A request unanswered for
 * the timeout (to within a tick or two) marks the server as hung: the connection is destroyed
 * and every request in flight fails with MF_TIMEOUT.
 *
 * Closing: whatever ends a connection (server hang-up, socket error, protocol violation,
 * timeout, destroy()) fails every request in flight with that reason (MF_CONNECTION_CLOSED,
 * MF_NBD_PROTOCOL or MF_TIMEOUT) and every queued, never-sent call with MF_CONNECTION_CLOSED;
 * `closed` resolves and 'close' is emitted. Nothing is retried: a write whose reply was lost
 * may or may not have reached the export, and only the caller knows whether repeating it is
 * safe. `reconnect()` opens a fresh connection with the same options.
 *
 * FLUSH is a barrier: the spec lets a flush cover only writes already answered, so a flush
 * waits in the queue until no WRITE, TRIM or WRITE_ZEROES issued before it is in flight, and
 * thereby covers every mutation the caller issued before calling flush().
 */
import { EventEmitter } from 'node:events';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { ErrorCodes, MemfabricError, invalidArgument } from '../../errors.js';
import {
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_DISC,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  ESHUTDOWN,
  FLAG_CAN_MULTI_CONN,
  FLAG_READ_ONLY,
  FLAG_ROTATIONAL,
  FLAG_SEND_CACHE,
  FLAG_SEND_DF,
  FLAG_SEND_FAST_ZERO,
  FLAG_SEND_FLUSH,
  FLAG_SEND_FUA,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
  NAME_BYTES_MAX,
  REQUEST_HEADER_BYTES,
} from '../protocol/constants.js';
import {
  CLIENT_HOST_DEFAULT,
  CLIENT_PORT_DEFAULT,
  CONNECT_TIMEOUT_MS_DEFAULT,
  DISCONNECT_GRACE_MS,
  EFFECT_BYTES_MAX,
  HEADER_SLAB_BYTES,
  INFLIGHT_DEFAULT,
  INFLIGHT_MAX,
  META_CONTEXTS_MAX,
  PIECE_BYTES_MAX,
  QUEUE_DEFAULT,
  QUEUE_MAX,
  REQUEST_HEADER_STRIDE_BYTES,
  REQUEST_TIMEOUT_MS_DEFAULT,
  TIMEOUT_TICK_MS_MAX,
  TIMEOUT_TICK_MS_MIN,
  TIMEOUT_TICKS_PER_PERIOD,
  WRITE_QUEUED_BYTES_MAX,
} from './limits.js';
import { commandLabel, connectionClosed, NbdRequestError, protocolError, timeoutError } from './errors.js';
import type { ExportDetails, NbdBlockSizes, Negotiated } from './handshake.js';
import { exportInfo, greet, HandshakeReader, listExports, negotiate, startTls } from './handshake.js';
import type { NbdClientTls, ResolvedClientTls } from './tls.js';
import { resolveClientTls, tlsError, upgradeClientSocket } from './tls.js';
import { InflightTable } from './inflight.js';
import { Op, OP_BARRIER, OpQueue } from './queue.js';
import type { ReplySink } from './reply-parser.js';
import { ReplyParser } from './reply-parser.js';
import { writeRequestHeader } from '../protocol/request.js';

export type { NbdBlockSizes } from './handshake.js';

/** Where the server is, and how long to wait for it. */
export interface NbdServerAddress {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 10809. */
  port?: number;
  /** TCP connect plus handshake. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * Speak TLS (NBD_OPT_STARTTLS) with these credentials (tls.ts); the connect fails with
   * MF_TLS rather than continue in plain text. Default: plain.
   */
  tls?: NbdClientTls;
}

export interface NbdClientOptions extends NbdServerAddress {
  /** Default '' (the server's default export). */
  exportName?: string;
  /** Negotiate structured replies (needed for block status and sparse reads). Default true. */
  structuredReplies?: boolean;
  /** Metadata contexts to select (with structured replies). Default ['base:allocation']. */
  metaContexts?: readonly string[];
  /** A request unanswered this long fails with MF_TIMEOUT and kills the connection. Default 30 s; 0: never. */
  requestTimeoutMs?: number;
  /** Requests in flight at once (a power of two up to 4096). Default 256. */
  inflightMax?: number;
  /** Calls waiting for a free slot; one more is refused with MF_BUSY. Default 4096. */
  queueMax?: number;
}

/** The export's transmission flags, decoded. */
export interface NbdTransmissionFlags {
  /** The 16-bit field as sent. */
  readonly raw: number;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly rotational: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  readonly canDf: boolean;
  readonly canMultiConn: boolean;
  readonly canCache: boolean;
  readonly canFastZero: boolean;
}

/** One extent of a block status reply; `flags` for base:allocation: 1 hole, 2 reads as zeros. */
export interface NbdExtent {
  readonly length: number;
  readonly flags: number;
}

/** What NbdClient.info() learns about an export without opening it. */
export interface NbdExportInfo {
  readonly exportName: string;
  readonly canonicalName: string;
  readonly description: string;
  readonly size: number;
  readonly transmissionFlags: NbdTransmissionFlags;
  readonly blockSizes: NbdBlockSizes | undefined;
}

export interface NbdExportListing {
  readonly name: string;
  readonly description: string;
}

export function decodeTransmissionFlags(raw: number): NbdTransmissionFlags {
  return {
    raw,
    readOnly: (raw & FLAG_READ_ONLY) !== 0,
    canFlush: (raw & FLAG_SEND_FLUSH) !== 0,
    canFua: (raw & FLAG_SEND_FUA) !== 0,
    rotational: (raw & FLAG_ROTATIONAL) !== 0,
    canTrim: (raw & FLAG_SEND_TRIM) !== 0,
    canWriteZeroes: (raw & FLAG_SEND_WRITE_ZEROES) !== 0,
    canDf: (raw & FLAG_SEND_DF) !== 0,
    canMultiConn: (raw & FLAG_CAN_MULTI_CONN) !== 0,
    canCache: (raw & FLAG_SEND_CACHE) !== 0,
    canFastZero: (raw & FLAG_SEND_FAST_ZERO) !== 0,
  };
}

interface ResolvedOptions {
  readonly host: string;
  readonly port: number;
  readonly tls: ResolvedClientTls | undefined;
  readonly exportName: string;
  readonly structuredReplies: boolean;
  readonly metaContexts: readonly string[];
  readonly connectTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly inflightMax: number;
  readonly queueMax: number;
}

const STATE_CONNECTING = 0;
const STATE_OPEN = 1;
/** disconnect() (or ESHUTDOWN): no new calls; queued and in-flight ones finish, then NBD_CMD_DISC. */
const STATE_DRAINING = 2;
const STATE_CLOSED = 3;

const EMPTY = Buffer.alloc(0);
const RETURN_NOTHING = 0;
const RETURN_BUFFER = 1;
const RETURN_EXTENTS = 2;

/** An Op plus what its promise resolves with. */
class ClientOp extends Op {
  returns = RETURN_NOTHING;
  /** writeGather: the payload as consecutive chunks (never copied), instead of `buffer`. */
  chunks: readonly Uint8Array[] | null = null;
  /** writeGather: the chunk, and the byte in it, where the next piece's payload starts. */
  chunkIndex = 0;
  chunkAt = 0;
}

/**
 * Sends the next `length` payload bytes of a writeGather op from its chunks, advancing its
 * cursor. Pieces are issued in order, so the cursor only moves forward; each step consumes at
 * least one byte or skips an empty chunk, so the loop ends within length + chunks.length steps.
 */
function writeChunks(socket: Socket, op: ClientOp, length: number): void {
  const chunks = op.chunks as readonly Uint8Array[];
  let left = length;
  while (left > 0) {
    const chunk = chunks[op.chunkIndex]!;
    const take = Math.min(left, chunk.length - op.chunkAt);
    if (take === chunk.length) socket.write(chunk);
    else if (take > 0) socket.write(chunk.subarray(op.chunkAt, op.chunkAt + take));
    left -= take;
    op.chunkAt += take;
    if (op.chunkAt === chunk.length) {
      op.chunkIndex++;
      op.chunkAt = 0;
    }
  }
}

// ---- argument checks ------------------------------------------------------------------------

function checkTimeout(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw invalidArgument(`${name} must be a finite number of milliseconds >= 0 (got ${String(value)})`);
  }
  return value;
}

function checkAddress(options: NbdServerAddress): {
  host: string;
  port: number;
  connectTimeoutMs: number;
  tls: ResolvedClientTls | undefined;
} {
  const host = options.host ?? CLIENT_HOST_DEFAULT;
  const port = options.port ?? CLIENT_PORT_DEFAULT;
  if (typeof host !== 'string' || host === '') throw invalidArgument('host must be a non-empty string');
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalidArgument(`port must be an integer from 1 to 65535 (got ${String(port)})`);
  }
  const connectTimeoutMs = checkTimeout(
    'connectTimeoutMs',
    options.connectTimeoutMs,
    CONNECT_TIMEOUT_MS_DEFAULT,
  );
  return {
    host,
    port,
    connectTimeoutMs: connectTimeoutMs === 0 ? CONNECT_TIMEOUT_MS_DEFAULT : connectTimeoutMs,
    tls: options.tls === undefined ? undefined : resolveClientTls(options.tls),
  };
}

function checkName(name: string): string {
  if (typeof name !== 'string' || Buffer.byteLength(name, 'utf8') > NAME_BYTES_MAX || name.includes('\0')) {
    throw invalidArgument(`exportName must be a string of at most ${NAME_BYTES_MAX} bytes without NUL`);
  }
  return name;
}

export function resolveClientOptions(options: NbdClientOptions): ResolvedOptions {
  const address = checkAddress(options);
  const exportName = checkName(options.exportName ?? '');
  const metaContexts = options.metaContexts ?? ['base:allocation'];
  if (!Array.isArray(metaContexts) || metaContexts.length > META_CONTEXTS_MAX) {
    throw invalidArgument(`metaContexts must be an array of at most ${META_CONTEXTS_MAX} names`);
  }
  for (const name of metaContexts) {
    if (typeof name !== 'string' || !name.includes(':') || Buffer.byteLength(name) > NAME_BYTES_MAX) {
      throw invalidArgument(
        `metadata context '${String(name)}' must be 'namespace:leaf' (at most 4096 bytes)`,
      );
    }
  }
  const inflightMax = options.inflightMax ?? INFLIGHT_DEFAULT;
  if (
    !Number.isInteger(inflightMax) ||
    inflightMax < 1 ||
    inflightMax > INFLIGHT_MAX ||
    (inflightMax & (inflightMax - 1)) !== 0
  ) {
    throw invalidArgument(
      `inflightMax must be a power of two from 1 to ${INFLIGHT_MAX} (got ${String(inflightMax)})`,
    );
  }
  const queueMax = options.queueMax ?? QUEUE_DEFAULT;
  if (!Number.isInteger(queueMax) || queueMax < 1 || queueMax > QUEUE_MAX) {
    throw invalidArgument(`queueMax must be an integer from 1 to ${QUEUE_MAX} (got ${String(queueMax)})`);
  }
  return {
    ...address,
    exportName,
    structuredReplies: options.structuredReplies ?? true,
    metaContexts: [...metaContexts],
    requestTimeoutMs: checkTimeout('requestTimeoutMs', options.requestTimeoutMs, REQUEST_TIMEOUT_MS_DEFAULT),
    inflightMax,
    queueMax,
  };
}

function isMutation(command: number): boolean {
  return command === CMD_WRITE || command === CMD_TRIM || command === CMD_WRITE_ZEROES;
}

// ---- handshake sessions ---------------------------------------------------------------------

interface Handshaken<T> {
  socket: Socket;
  reader: HandshakeReader;
  value: T;
}

function ignoreError(): void {}

/**
 * Opens a socket, reads the greeting, upgrades to TLS when `tls` is given, and runs `work` over
 * a HandshakeReader, all bounded by `timeoutMs`. A socket error, hang-up or the timeout fails
 * the reader (so `work` rejects) and destroys the socket.
 */
async function handshakeSession<T>(
  address: { host: string; port: number; connectTimeoutMs: number; tls: ResolvedClientTls | undefined },
  work: (io: HandshakeReader, noZeroes: boolean) => Promise<T>,
): Promise<Handshaken<T>> {
  const { host, port, connectTimeoutMs: timeoutMs, tls } = address;
  const plain = netConnect({ host, port });
  plain.setNoDelay(true);
  // Never let a late 'error' crash the process: the reader or the transmission reports it.
  plain.on('error', ignoreError);
  let socket: Socket = plain;
  let reader = new HandshakeReader(plain);
  const where = `${host}:${port}`;
  const onError = (err: Error): void => {
    // With TLS 1.3 the server judges a client certificate after our side of the TLS handshake
    // is done: its refusal arrives as an alert during the NBD options.
    const tlsAlert = socket !== plain && /^ERR_SSL/.test((err as NodeJS.ErrnoException).code ?? '');
    reader.fail(
      tlsAlert
        ? tlsError(`the nbd server ${where} ended the TLS session: ${err.message}`, err)
        : connectionClosed(`nbd connection to ${where} failed: ${err.message}`, err),
    );
  };
  /** Whether the server has said anything over TLS yet. */
  let tlsAnswered = false;
  const onTlsData = (): void => {
    tlsAnswered = true;
  };
  const onClose = (): void =>
    reader.fail(
      socket !== plain && !tlsAnswered
        ? // A server that takes the TLS handshake and hangs up at once refused who we are.
          tlsError(
            `the nbd server ${where} closed the connection right after the TLS handshake: ` +
              'it does not accept this client certificate or PSK identity',
          )
        : connectionClosed(`nbd server ${where} closed the connection during the handshake`),
    );
  plain.on('error', onError);
  plain.on('close', onClose);
  const timer = setTimeout(() => {
    reader.fail(timeoutError(`nbd connect to ${where} did not finish within ${timeoutMs} ms`));
    socket.destroy();
    plain.destroy();
  }, timeoutMs);
  try {
    const noZeroes = await greet(reader);
    if (tls !== undefined) {
      await startTls(reader);
      // The client speaks first in TLS, so nothing may have arrived past the ACK.
      if (reader.detach() !== undefined) throw protocolError('data after NBD_REP_ACK to NBD_OPT_STARTTLS');
      socket = await Promise.race([
        upgradeClientSocket(plain, host, tls),
        // The plain reader is detached, so this only ever rejects: a hang-up or the timeout
        // during the TLS handshake fails the reader and so ends the race.
        reader.read(1).then(() => {
          throw protocolError('plain data during the TLS handshake');
        }),
      ]);
      socket.on('error', ignoreError);
      socket.setNoDelay(true);
      socket.once('data', onTlsData);
      reader = new HandshakeReader(socket);
      socket.on('error', onError);
      socket.on('close', onClose);
    }
    const value = await work(reader, noZeroes);
    return { socket, reader, value };
  } catch (err) {
    socket.destroy();
    plain.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
    plain.off('error', onError);
    plain.off('close', onClose);
    socket.off('error', onError);
    socket.off('close', onClose);
    socket.off('data', onTlsData);
  }
}

/** Ends a socket whose handshake ended with NBD_OPT_ABORT; destroyed if the server lingers. */
function endAborted(socket: Socket, reader: HandshakeReader): void {
  reader.detach();
  socket.end();
  const timer = setTimeout(() => socket.destroy(), DISCONNECT_GRACE_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

// ---- the client -----------------------------------------------------------------------------

export class NbdClient extends EventEmitter {
  /** Connects and completes the handshake; rejects with a MemfabricError if either fails. */
  static async connect(options: NbdClientOptions = {}): Promise<NbdClient> {
    const client = new NbdClient(resolveClientOptions(options));
    await client.open();
    return client;
  }

  /** The server's exports (NBD_OPT_LIST), without entering transmission. */
  static async list(options: NbdServerAddress = {}): Promise<NbdExportListing[]> {
    const { socket, reader, value } = await handshakeSession(checkAddress(options), listExports);
    endAborted(socket, reader);
    return value;
  }

  /** Size, flags and block sizes of one export (NBD_OPT_INFO), without entering transmission. */
  static async info(options: NbdServerAddress & { exportName?: string } = {}): Promise<NbdExportInfo> {
    const address = checkAddress(options);
    const name = checkName(options.exportName ?? '');
    const { socket, reader, value } = await handshakeSession(address, (io) => exportInfo(io, name));
    endAborted(socket, reader);
    return toExportInfo(value);
  }

  private readonly options: ResolvedOptions;
  private readonly table: InflightTable<ClientOp>;
  private readonly queue: OpQueue;
  private state = STATE_CLOSED;
  private socket: Socket | null = null;
  private parser: ReplyParser | null = null;
  private negotiated: Negotiated | null = null;
  private flagsDecoded: NbdTransmissionFlags = decodeTransmissionFlags(0);
  private connecting: Promise<void> | null = null;
  /** Why the connection ended (undefined: a clean disconnect). */
  private closeReason: MemfabricError | undefined;
  private closedPromise: Promise<MemfabricError | undefined> = Promise.resolve(undefined);
  private resolveClosed: (reason: MemfabricError | undefined) => void = () => {};
  private disconnecting: Promise<void> | null = null;
  private resolveDrained: (() => void) | null = null;

  /** Largest READ/WRITE piece: the server's maximum payload, at most 32 MiB, a multiple of the minimum block. */
  private pieceMax = PIECE_BYTES_MAX;
  private effectMax = EFFECT_BYTES_MAX;
  private alignment = 1;
  private mutationsInFlight = 0;
  private writeBlocked = false;

  // Coarse timeout clock.
  private tick = 0;
  private timeoutTicks = 0;
  private ticker: NodeJS.Timeout | null = null;

  // Request headers are carved from a slab; carved bytes are never reused (the socket may hold them).
  private slab: Buffer = EMPTY;
  private slabUsed = 0;
  private corkedSocket: Socket | null = null;
  private readonly uncork = (): void => {
    const socket = this.corkedSocket;
    this.corkedSocket = null;
    socket?.uncork();
  };
  private readonly onTick = (): void => this.checkTimeouts();
  /** The reply parser's view of this client (kept off the public face). */
  private readonly sink: ReplySink = {
    replyDone: (slot) => this.replyDone(slot),
    violation: (reason) => this.violation(reason),
  };

  private constructor(options: ResolvedOptions) {
    super();
    this.options = options;
    this.table = new InflightTable<ClientOp>(options.inflightMax);
    this.queue = new OpQueue(options.queueMax);
  }

  // ---- what was negotiated ------------------------------------------------------------------

  get host(): string {
    return this.options.host;
  }

  get port(): number {
    return this.options.port;
  }

  get exportName(): string {
    return this.options.exportName;
  }

  /** Export size in bytes (as of the last connect). */
  get size(): number {
    return this.negotiated?.size ?? 0;
  }

  get transmissionFlags(): NbdTransmissionFlags {
    return this.flagsDecoded;
  }

  /** From NBD_INFO_BLOCK_SIZE when the server sent it; the client then honours the minimum. */
  get blockSizes(): NbdBlockSizes | undefined {
    return this.negotiated?.blockSizes;
  }

  get description(): string {
    return this.negotiated?.description ?? '';
  }

  get structuredReplies(): boolean {
    return this.negotiated?.structured ?? false;
  }

  /** Metadata contexts the server selected (block status can ask about these). */
  get metaContexts(): readonly string[] {
    return this.negotiated?.contexts.map((c) => c.name) ?? [];
  }

  /** The largest READ or WRITE sent as one request; larger calls are split. */
  get requestBytesMax(): number {
    return this.pieceMax;
  }

  /** Open for calls (not connecting, disconnecting or closed). */
  get isOpen(): boolean {
    return this.state === STATE_OPEN;
  }

  get inFlight(): number {
    return this.table.inFlight;
  }

  get queued(): number {
    return this.queue.count;
  }

  /**
   * Resolves when the current connection ends: with undefined after disconnect(), with the
   * MemfabricError that ended it otherwise (also after the soft disconnect an ESHUTDOWN reply
   * forces). Never rejects. Replaced by reconnect().
   */
  get closed(): Promise<MemfabricError | undefined> {
    return this.closedPromise;
  }

  // ---- data calls ---------------------------------------------------------------------------

  /** Reads `length` bytes at `offset` into a new Buffer. */
  read(offset: number, length: number): Promise<Buffer> {
    const bad = this.checkRange('read', offset, length);
    if (bad !== null) return Promise.reject(bad);
    if (length === 0) return this.noop(EMPTY);
    const op = new ClientOp(CMD_READ, 0, offset, length, Buffer.allocUnsafe(length));
    op.returns = RETURN_BUFFER;
    return this.submit(op);
  }

  /**
   * Reads `dst.length` bytes at `offset` straight into `dst` (the parser copies from the socket
   * chunks into it: no intermediate buffer). If the call fails, `dst` may be partly written.
   */
  readInto(offset: number, dst: Uint8Array): Promise<void> {
    if (!(dst instanceof Uint8Array))
      return Promise.reject(invalidArgument('readInto: dst must be a Uint8Array'));
    const bad = this.checkRange('readInto', offset, dst.length);
    if (bad !== null) return Promise.reject(bad);
    if (dst.length === 0) return this.noop(undefined);
    return this.submit(new ClientOp(CMD_READ, 0, offset, dst.length, dst));
  }

  /**
   * Writes `data` at `offset`. `data` is not copied: do not modify it until the promise settles.
   * `fua`: the server replies only once the data is durable (needs canFua).
   */
  write(offset: number, data: Uint8Array, options?: { fua?: boolean }): Promise<void> {
    if (!(data instanceof Uint8Array))
      return Promise.reject(invalidArgument('write: data must be a Uint8Array'));
    const bad = this.checkRange('write', offset, data.length) ?? this.checkFua('write', options?.fua);
    if (bad !== null) return Promise.reject(bad);
    if (data.length === 0) return this.noop(undefined);
    return this.submit(new ClientOp(CMD_WRITE, options?.fua ? CMD_FLAG_FUA : 0, offset, data.length, data));
  }

  /**
   * Writes the concatenation of `chunks` at `offset`, one request (split into pieces like any
   * write) whose payload goes to the socket chunk by chunk: a caller whose bytes for one range
   * lie in several places (a coded region's data pages) need not gather them into one buffer.
   * Nothing is copied: do not modify the chunks until the promise settles.
   */
  writeGather(offset: number, chunks: readonly Uint8Array[]): Promise<void> {
    let length = 0;
    for (const chunk of chunks) {
      if (!(chunk instanceof Uint8Array))
        return Promise.reject(invalidArgument('writeGather: every chunk must be a Uint8Array'));
      length += chunk.length;
    }
    const bad = this.checkRange('writeGather', offset, length);
    if (bad !== null) return Promise.reject(bad);
    if (length === 0) return this.noop(undefined);
    const op = new ClientOp(CMD_WRITE, 0, offset, length, null);
    op.chunks = chunks;
    return this.submit(op);
  }

  /** Makes every write, trim and writeZeroes issued before this call durable (needs canFlush). */
  flush(): Promise<void> {
    if (this.state === STATE_OPEN && !this.flagsDecoded.canFlush) {
      return Promise.reject(
        invalidArgument('flush: the server does not support it (no NBD_FLAG_SEND_FLUSH)'),
      );
    }
    return this.submit(new ClientOp(CMD_FLUSH, 0, 0, 0, null));
  }

  /** Resolves once no write, trim or writeZeroes issued before it is in flight. Sends nothing. */
  barrier(): Promise<void> {
    return this.submit(new ClientOp(CMD_FLUSH, 0, 0, 0, null, OP_BARRIER));
  }

  /** Discards a range (a hint: it may read back as anything until rewritten). Needs canTrim. */
  trim(offset: number, length: number, options?: { fua?: boolean }): Promise<void> {
    const bad =
      this.checkRange('trim', offset, length) ??
      this.checkCapability('trim', this.flagsDecoded.canTrim, 'NBD_FLAG_SEND_TRIM') ??
      this.checkFua('trim', options?.fua);
    if (bad !== null) return Promise.reject(bad);
    if (length === 0) return this.noop(undefined);
    return this.submit(new ClientOp(CMD_TRIM, options?.fua ? CMD_FLAG_FUA : 0, offset, length, null));
  }

  /**
   * Makes a range read as zeros (needs canWriteZeroes). `noHole`: keep it allocated;
   * `fastZero`: fail with ENOTSUP unless the server can zero faster than it writes (needs canFastZero).
   */
  writeZeroes(
    offset: number,
    length: number,
    options?: { noHole?: boolean; fastZero?: boolean; fua?: boolean },
  ): Promise<void> {
    const bad =
      this.checkRange('writeZeroes', offset, length) ??
      this.checkCapability('writeZeroes', this.flagsDecoded.canWriteZeroes, 'NBD_FLAG_SEND_WRITE_ZEROES') ??
      (options?.fastZero
        ? this.checkCapability(
            'writeZeroes fastZero',
            this.flagsDecoded.canFastZero,
            'NBD_FLAG_SEND_FAST_ZERO',
          )
        : null) ??
      this.checkFua('writeZeroes', options?.fua);
    if (bad !== null) return Promise.reject(bad);
    if (length === 0) return this.noop(undefined);
    const flags =
      (options?.noHole ? CMD_FLAG_NO_HOLE : 0) |
      (options?.fastZero ? CMD_FLAG_FAST_ZERO : 0) |
      (options?.fua ? CMD_FLAG_FUA : 0);
    return this.submit(new ClientOp(CMD_WRITE_ZEROES, flags, offset, length, null));
  }

  /** Asks the server to prefetch a range (needs canCache). */
  cache(offset: number, length: number): Promise<void> {
    const bad =
      this.checkRange('cache', offset, length) ??
      this.checkCapability('cache', this.flagsDecoded.canCache, 'NBD_FLAG_SEND_CACHE');
    if (bad !== null) return Promise.reject(bad);
    if (length === 0) return this.noop(undefined);
    return this.submit(new ClientOp(CMD_CACHE, 0, offset, length, null));
  }

  /**
   * Block status of [offset, offset + length) for one metadata context (default: the first one
   * negotiated, normally base:allocation): consecutive extents from `offset`. The server may
   * describe less than asked (at most 1 GiB is asked for at once): the extents then cover a
   * prefix, and the caller asks again from where they end. Extents are clipped to the range.
   * `reqOne`: at most one extent.
   */
  blockStatus(
    offset: number,
    length: number,
    options?: { reqOne?: boolean; context?: string },
  ): Promise<NbdExtent[]> {
    const bad = this.checkRange('blockStatus', offset, length);
    if (bad !== null) return Promise.reject(bad);
    if (length === 0) return Promise.reject(invalidArgument('blockStatus: length must be positive'));
    const contexts = this.negotiated?.contexts ?? [];
    const name = options?.context ?? contexts[0]?.name;
    const index = contexts.findIndex((c) => c.name === name);
    if (this.state === STATE_OPEN && index < 0) {
      return Promise.reject(
        invalidArgument(
          name === undefined
            ? 'blockStatus: no metadata context was negotiated (structured replies and metaContexts are needed)'
            : `blockStatus: metadata context '${name}' was not negotiated`,
        ),
      );
    }
    // Ask about at most effectMax bytes, aligned: the reply may describe a prefix anyway.
    const asked = Math.min(length, this.effectMax);
    const op = new ClientOp(
      CMD_BLOCK_STATUS,
      options?.reqOne ? CMD_FLAG_REQ_ONE : 0,
      offset,
      asked,
      null,
      undefined,
      index,
    );
    op.returns = RETURN_EXTENTS;
    return this.submit(op);
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  /**
   * Soft disconnect: refuses new calls, lets queued and in-flight ones finish, sends
   * NBD_CMD_DISC and closes. Resolves once the socket is closed (`closed` then resolves with
   * undefined, unless something failed first).
   */
  disconnect(): Promise<void> {
    if (this.state === STATE_CLOSED) return this.closedPromise.then(() => undefined);
    if (this.state === STATE_CONNECTING) {
      this.destroy();
      return this.closedPromise.then(() => undefined);
    }
    this.disconnecting ??= this.drainAndDisconnect();
    return this.disconnecting;
  }

  /**
   * Hard close now: every request in flight or queued fails with MF_CONNECTION_CLOSED (or
   * `reason`). The server may or may not have executed requests already sent.
   */
  destroy(reason?: MemfabricError): void {
    this.fail(reason ?? connectionClosed(`nbd client to ${this.where()} destroyed`));
  }

  /**
   * A fresh connection to the same export with the same options (after a disconnect, a
   * timeout or a server restart). If the connection is still open it is destroyed first.
   * Requests that failed with the old connection are not retried: the caller decides.
   */
  reconnect(): Promise<void> {
    if (this.connecting !== null) return this.connecting;
    if (this.state !== STATE_CLOSED)
      this.destroy(connectionClosed(`nbd client to ${this.where()} reconnecting`));
    return this.open();
  }

  // ---- connecting ---------------------------------------------------------------------------

  private where(): string {
    const name = this.options.exportName === '' ? '' : `/${this.options.exportName}`;
    return `${this.options.host}:${this.options.port}${name}`;
  }

  private open(): Promise<void> {
    this.state = STATE_CONNECTING;
    this.closeReason = undefined;
    this.softCloseReason = undefined;
    this.disconnecting = null;
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.connecting = handshakeSession(this.options, (io, noZeroes) =>
      negotiate(io, this.options, noZeroes),
    ).then(
      ({ socket, reader, value }) => {
        this.connecting = null;
        if (this.state !== STATE_CONNECTING) {
          // destroy() was called while connecting.
          socket.destroy();
          throw this.closeReason ?? connectionClosed(`nbd client to ${this.where()} destroyed`);
        }
        this.enterTransmission(socket, reader, value);
      },
      (err: unknown) => {
        this.connecting = null;
        const error =
          err instanceof MemfabricError
            ? err
            : connectionClosed(`nbd connect to ${this.where()} failed`, err);
        this.state = STATE_CLOSED;
        this.closeReason = error;
        this.resolveClosed(error);
        throw error;
      },
    );
    return this.connecting;
  }

  private enterTransmission(socket: Socket, reader: HandshakeReader, negotiated: Negotiated): void {
    this.negotiated = negotiated;
    this.flagsDecoded = decodeTransmissionFlags(negotiated.flags);
    const sizes = negotiated.blockSizes;
    this.alignment = sizes?.minimum ?? 1;
    const maximum = Math.min(sizes?.maximum ?? PIECE_BYTES_MAX, PIECE_BYTES_MAX);
    this.pieceMax = Math.max(this.alignment, maximum - (maximum % this.alignment));
    this.effectMax = EFFECT_BYTES_MAX; // a multiple of every legal minimum block size
    this.socket = socket;
    this.writeBlocked = false;
    this.mutationsInFlight = 0;
    const parser = new ReplyParser(this.table, this.sink, {
      structured: negotiated.structured,
      contextIds: negotiated.contexts.map((c) => c.id),
    });
    this.parser = parser;
    let socketError: Error | undefined;
    socket.on('data', (chunk: Buffer) => {
      if (this.socket === socket) parser.feed(chunk);
    });
    socket.on('drain', () => {
      if (this.socket !== socket) return;
      this.writeBlocked = false;
      this.pump();
    });
    socket.on('error', (err) => (socketError = err));
    socket.on('close', () => {
      if (this.socket !== socket) return;
      if (this.state === STATE_DRAINING && this.disconnectSent) {
        this.finishClose(this.softCloseReason);
        return;
      }
      this.fail(connectionClosed(`nbd server ${this.where()} closed the connection`, socketError));
    });
    this.state = STATE_OPEN;
    this.startTicker();
    const rest = reader.detach();
    if (rest !== undefined) parser.feed(rest);
  }

  // ---- issuing ------------------------------------------------------------------------------

  private noop<T>(value: T): Promise<T> {
    if (this.state !== STATE_OPEN) return Promise.reject(this.closedError());
    return Promise.resolve(value);
  }

  private closedError(): MemfabricError {
    const why =
      this.state === STATE_DRAINING
        ? 'is disconnecting'
        : this.state === STATE_CONNECTING
          ? 'is still connecting'
          : `is closed${this.closeReason ? ` (${this.closeReason.message})` : ''}`;
    return connectionClosed(`nbd client to ${this.where()} ${why}`, this.closeReason);
  }

  private checkRange(what: string, offset: number, length: number): MemfabricError | null {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      return invalidArgument(`${what}: offset must be an integer >= 0 (got ${String(offset)})`);
    }
    if (!Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset + length)) {
      return invalidArgument(`${what}: length must be an integer >= 0 (got ${String(length)})`);
    }
    const align = this.alignment;
    if (align > 1 && (offset % align !== 0 || length % align !== 0)) {
      return invalidArgument(
        `${what}: offset ${offset} and length ${length} must be multiples of the server's minimum block size ${align}`,
      );
    }
    return null;
  }

  private checkCapability(what: string, supported: boolean, flag: string): MemfabricError | null {
    if (supported || this.state !== STATE_OPEN) return null;
    return invalidArgument(`${what}: the server does not support it (no ${flag})`);
  }

  private checkFua(what: string, fua: boolean | undefined): MemfabricError | null {
    return fua
      ? this.checkCapability(`${what} with fua`, this.flagsDecoded.canFua, 'NBD_FLAG_SEND_FUA')
      : null;
  }

  private submit<T>(op: ClientOp): Promise<T> {
    if (this.state !== STATE_OPEN) return Promise.reject(this.closedError());
    if (!this.queue.push(op)) {
      return Promise.reject(
        new MemfabricError(
          ErrorCodes.BUSY,
          `nbd client to ${this.where()} already has ${this.queue.max} calls queued (queueMax); await some first`,
        ),
      );
    }
    op.queued = true;
    const promise = new Promise<T>((resolve, reject) => {
      op.resolve = resolve as (value: never) => void;
      op.reject = reject;
    });
    this.pump();
    return promise;
  }

  /** Issues queued calls while slots are free, the socket is not backed up, and no barrier blocks. */
  private pump(): void {
    const queue = this.queue;
    const table = this.table;
    while (queue.count > 0 && table.hasFree && !this.writeBlocked) {
      if (this.state !== STATE_OPEN && this.state !== STATE_DRAINING) return;
      const op = queue.peek() as ClientOp;
      if (op.error !== null) {
        // A piece already failed: the rest of the call is not sent.
        queue.shift();
        op.queued = false;
        this.maybeSettle(op);
        continue;
      }
      if (op.command === CMD_FLUSH) {
        if (this.mutationsInFlight > 0) break;
        if (op.kind === OP_BARRIER) {
          queue.shift();
          op.queued = false;
          this.maybeSettle(op);
          continue;
        }
      }
      this.issuePiece(op);
    }
    if (this.state === STATE_DRAINING) this.checkDrained();
  }

  private issuePiece(op: ClientOp): void {
    const command = op.command;
    const max = command === CMD_READ || command === CMD_WRITE ? this.pieceMax : this.effectMax;
    const at = op.issued;
    const length = Math.min(op.length - at, max);
    const offset = op.offset + at;
    const mutating = isMutation(command);
    const table = this.table;
    const s = table.acquire(op, command, op.flags, offset, length, mutating);
    table.issuedTick[s] = this.tick;
    if (command === CMD_READ) {
      table.dst[s] = op.buffer;
      table.dstAt[s] = at;
    } else if (command === CMD_BLOCK_STATUS) {
      table.statusContext[s] = op.statusContext;
    }
    op.issued = at + length;
    op.pending++;
    if (mutating) this.mutationsInFlight++;
    if (op.issued >= op.length) {
      this.queue.shift();
      op.queued = false;
    }
    const socket = this.socket as Socket;
    if (this.corkedSocket === null) {
      this.corkedSocket = socket;
      socket.cork();
      process.nextTick(this.uncork);
    }
    const header = this.takeHeader();
    writeRequestHeader(header, 0, op.flags, command, s, table.seq[s], offset, length);
    socket.write(header);
    if (command === CMD_WRITE) {
      if (op.chunks !== null) writeChunks(socket, op, length);
      else {
        const data = op.buffer as Uint8Array;
        socket.write(length === data.length ? data : data.subarray(at, at + length));
      }
    }
    if (socket.writableLength >= WRITE_QUEUED_BYTES_MAX) this.writeBlocked = true;
  }

  private takeHeader(): Buffer {
    if (this.slabUsed + REQUEST_HEADER_STRIDE_BYTES > this.slab.length) {
      this.slab = Buffer.allocUnsafe(HEADER_SLAB_BYTES);
      this.slabUsed = 0;
    }
    const header = this.slab.subarray(this.slabUsed, this.slabUsed + REQUEST_HEADER_BYTES);
    this.slabUsed += REQUEST_HEADER_STRIDE_BYTES;
    return header;
  }

  // ---- replies (ReplySink) ------------------------------------------------------------------

  private replyDone(s: number): void {
    const table = this.table;
    const op = table.owner[s] as ClientOp;
    const errno = table.errno[s];
    if (table.mutating[s] === 1) this.mutationsInFlight--;
    if (errno !== 0) {
      op.error ??= new NbdRequestError(
        table.command[s],
        table.offset[s],
        table.length[s],
        errno,
        table.message[s],
      );
    } else if (table.command[s] === CMD_BLOCK_STATUS) {
      op.extents = table.extents[s];
    }
    table.release(s);
    op.pending--;
    this.maybeSettle(op);
    // "If the client receives an NBD_ESHUTDOWN error it MUST initiate a soft disconnect."
    if (errno === ESHUTDOWN && this.state === STATE_OPEN) {
      const reason = connectionClosed(`nbd server ${this.where()} is shutting down (ESHUTDOWN)`);
      this.failQueued(connectionClosed(`${reason.message}; not sent`, reason));
      this.softCloseReason = reason;
      void this.disconnect();
    }
    this.pump();
  }

  private violation(reason: string): void {
    this.fail(protocolError(`${reason} (server ${this.where()})`));
  }

  private maybeSettle(op: ClientOp): void {
    if (op.settled || op.pending > 0 || op.queued) return;
    op.settled = true;
    if (op.error !== null) {
      op.reject(op.error);
      return;
    }
    switch (op.returns) {
      case RETURN_BUFFER:
        (op.resolve as (value: unknown) => void)(op.buffer);
        return;
      case RETURN_EXTENTS:
        (op.resolve as (value: unknown) => void)(toExtents(op.extents, op.length));
        return;
      default:
        (op.resolve as (value: unknown) => void)(undefined);
    }
  }

  // ---- timeouts -----------------------------------------------------------------------------

  private startTicker(): void {
    this.stopTicker();
    const timeout = this.options.requestTimeoutMs;
    if (timeout === 0) return;
    const tickMs = Math.min(
      TIMEOUT_TICK_MS_MAX,
      Math.max(TIMEOUT_TICK_MS_MIN, Math.floor(timeout / TIMEOUT_TICKS_PER_PERIOD)),
    );
    // A request sent during tick k has waited at least (t - k - 1) ticks when the tick reads t.
    this.timeoutTicks = Math.ceil(timeout / tickMs) + 1;
    this.ticker = setInterval(this.onTick, tickMs);
    this.ticker.unref();
  }

  private stopTicker(): void {
    if (this.ticker !== null) clearInterval(this.ticker);
    this.ticker = null;
  }

  private checkTimeouts(): void {
    const tick = ++this.tick;
    const table = this.table;
    if (table.inFlight === 0) return;
    const limit = this.timeoutTicks;
    for (let s = 0; s < table.capacity; s++) {
      if (table.busy[s] === 1 && tick - table.issuedTick[s] >= limit) {
        this.fail(
          timeoutError(
            `nbd ${commandLabel(table.command[s])} at offset ${table.offset[s]} length ${table.length[s]} ` +
              `got no reply from ${this.where()} within ${this.options.requestTimeoutMs} ms; connection closed`,
          ),
        );
        return;
      }
    }
  }

  // ---- closing ------------------------------------------------------------------------------

  private disconnectSent = false;
  /** Why a soft disconnect happened when the caller did not ask for it (ESHUTDOWN). */
  private softCloseReason: MemfabricError | undefined;

  private async drainAndDisconnect(): Promise<void> {
    this.state = STATE_DRAINING;
    this.disconnectSent = false;
    if (this.table.inFlight > 0 || this.queue.count > 0) {
      await new Promise<void>((resolve) => {
        this.resolveDrained = resolve;
        this.pump();
      });
    }
    if (this.state !== STATE_DRAINING) return; // failed while draining: already closed
    const socket = this.socket as Socket;
    const header = this.takeHeader();
    writeRequestHeader(header, 0, 0, CMD_DISC, 0, 0, 0, 0);
    this.disconnectSent = true;
    socket.write(header);
    socket.end();
    const timer = setTimeout(() => socket.destroy(), DISCONNECT_GRACE_MS);
    timer.unref();
    await this.closedPromise;
    clearTimeout(timer);
  }

  private checkDrained(): void {
    if (this.resolveDrained !== null && this.table.inFlight === 0 && this.queue.count === 0) {
      const resolve = this.resolveDrained;
      this.resolveDrained = null;
      resolve();
    }
  }

  /** Fails queued, never-sent calls (in-flight ones go on). */
  private failQueued(error: MemfabricError): void {
    for (const op of this.queue.drain() as ClientOp[]) {
      op.queued = false;
      op.error ??= error;
      this.maybeSettle(op);
    }
  }

  /** Ends the connection now: everything in flight fails with `error`, queued calls as not sent. */
  private fail(error: MemfabricError): void {
    if (this.state === STATE_CLOSED) return;
    if (this.state === STATE_CONNECTING) {
      // The handshake is abandoned; open() sees the state and rejects with this reason.
      this.state = STATE_CLOSED;
      this.closeReason = error;
      this.resolveClosed(error);
      this.emit('close', error);
      return;
    }
    const table = this.table;
    const failed: ClientOp[] = [];
    for (let s = 0; s < table.capacity; s++) {
      if (table.busy[s] === 0) continue;
      const op = table.owner[s] as ClientOp;
      op.error ??= error;
      op.pending--;
      table.release(s);
      failed.push(op);
    }
    this.mutationsInFlight = 0;
    const notSent = connectionClosed(`nbd request not sent: ${error.message}`, error);
    for (const op of this.queue.drain() as ClientOp[]) {
      op.queued = false;
      op.error ??= notSent;
      failed.push(op);
    }
    this.finishClose(error);
    for (const op of failed) this.maybeSettle(op);
  }

  private finishClose(error: MemfabricError | undefined): void {
    this.state = STATE_CLOSED;
    this.closeReason = error;
    this.stopTicker();
    this.parser?.stop();
    this.parser = null;
    const socket = this.socket;
    this.socket = null;
    socket?.destroy();
    const drained = this.resolveDrained;
    this.resolveDrained = null;
    drained?.();
    this.resolveClosed(error);
    this.emit('close', error);
  }
}

function toExportInfo(details: ExportDetails): NbdExportInfo {
  return {
    exportName: details.exportName,
    canonicalName: details.canonicalName,
    description: details.description,
    size: details.size,
    transmissionFlags: decodeTransmissionFlags(details.flags),
    blockSizes: details.blockSizes,
  };
}

/** (length, flags) pairs as extents, clipped so that they end at `limit` at most. */
function toExtents(pairs: Uint32Array | null, limit: number): NbdExtent[] {
  const out: NbdExtent[] = [];
  if (pairs === null) return out;
  let total = 0;
  for (let i = 0; i < pairs.length && total < limit; i += 2) {
    const length = Math.min(pairs[i], limit - total);
    out.push({ length, flags: pairs[i + 1] });
    total += length;
  }
  return out;
}
