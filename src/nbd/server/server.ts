/**
 * NbdServer: serves an NbdExportDirectory over TCP with the NBD protocol (fixed newstyle).
 *
 *   const server = new NbdServer({ directory });
 *   const { port } = await server.listen(0);          // 127.0.0.1, ephemeral port
 *   ... qemu-io -f raw nbd://127.0.0.1:PORT/name ...
 *   await server.close();
 *
 * Every connection is a Session (session.ts) with its own handshake and transmission state;
 * they share the directory (hence the exports), the statistics and the global buffer budget.
 * A connection that breaks the protocol is closed alone; socket errors never escape.
 *
 * Resource bounds (docs/nbd.md "Resource bounds"): at most `maxConnections` sessions (further
 * connections are closed at accept, before the greeting), a global buffer budget, a per-
 * connection reply queue bound, and timeouts on idleness and stalls, all checked by one timer
 * for the whole server.
 */
import { createServer } from 'node:net';
import { RECEIVE_BUFFER_BYTES } from './receive-buffer.js';
import { invalidArgument } from '../../errors.js';
import type { Server, Socket } from 'node:net';
import { BufferBudget } from './budget.js';
import { defaultMaxConnections } from './connection-limit.js';
import {
  BUFFER_BYTES_MAX,
  HANDSHAKE_IDLE_MS_MAX,
  IDLE_MS_DEFAULT,
  PRESSURE_STALL_MS,
  REPLY_QUEUED_BYTES_MAX,
  REPLY_QUEUED_BYTES_MIN,
  STALL_MS_MAX,
  TIMEOUT_TICK_MS_MAX,
  TIMEOUT_TICK_MS_MIN,
} from './limits.js';
import type { NbdExport, NbdExportDirectory } from './export.js';
import type { NbdLogger } from './logger.js';
import { SILENT_LOGGER } from './logger.js';
import { Session, type SessionLimits } from './session.js';
import type { RequestLatency } from './latency.js';
import type { NbdStats } from './stats.js';
import { StatsCounters } from './stats.js';
import type { NbdServerTlsOptions, NbdTlsMode, ServerTls } from './tls.js';
import { loadServerTls } from './tls.js';

/** What an NBD server lets its clients hold; every field has a default (limits.ts). */
export interface NbdLimits {
  /**
   * Time a client may leave between handshake options (and before the first); idleness, not
   * total handshake time. Defaults to HANDSHAKE_IDLE_MS_MAX (30 s); 0 turns it off.
   */
  handshakeTimeoutMs?: number;
  /** Idle time after the handshake (nothing in flight or arriving); 0 (the default) is off. */
  idleTimeoutMs?: number;
  /** Time a WRITE payload may stop arriving, or queued replies stay unread; STALL_MS_MAX; 0 off. */
  stallTimeoutMs?: number;
  /** Open connections; more are refused at accept. Defaults from the open-file limit. */
  maxConnections?: number;
  /** Global budget for queued reply bytes and WRITE payloads (BUFFER_BYTES_MAX, 128 MiB). */
  bufferBytesMax?: number;
  /** Reply bytes one connection may have queued before it stops reading (16 MiB). */
  replyQueuedBytesMax?: number;
}

export interface NbdServerOptions extends NbdLimits {
  directory: NbdExportDirectory;
  logger?: NbdLogger;
  /** NBD_OPT_STARTTLS policy and credentials (tls.ts); default NOTLS. Files are read here. */
  tls?: NbdServerTlsOptions;
  /**
   * Called for every request answered with an error, with its errno and export (the appliance
   * logs ENOSPC). Runs on the data path: keep it cheap, and it must not throw.
   */
  onRequestError?: (errno: number, exp: NbdExport) => void;
}

/** A limit option: a non-negative finite number, or the default. */
function limit(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) {
    throw invalidArgument(`NBD ${name} must be a non-negative number (0 turns a timeout off), not ${value}`);
  }
  return value;
}

export class NbdServer {
  private readonly directory: NbdExportDirectory;
  private readonly logger: NbdLogger;
  private readonly limits: SessionLimits;
  private readonly maxConnections: number;
  private readonly budget: BufferBudget;
  private readonly tls: ServerTls | undefined;
  private readonly counters = new StatsCounters();
  private readonly sessions = new Set<Session>();
  /** Every connection reads into this one buffer (see receive-buffer.ts). */
  private readonly receiveBuffer = Buffer.allocUnsafe(RECEIVE_BUFFER_BYTES);
  private server: Server | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  /** Set by close(): called whenever a session ends, to notice the last one. */
  private onIdle: (() => void) | undefined;

  constructor(options: NbdServerOptions) {
    this.directory = options.directory;
    this.logger = options.logger ?? SILENT_LOGGER;
    this.limits = {
      handshakeIdleMs: limit(options.handshakeTimeoutMs, HANDSHAKE_IDLE_MS_MAX, 'handshakeTimeoutMs'),
      idleMs: limit(options.idleTimeoutMs, IDLE_MS_DEFAULT, 'idleTimeoutMs'),
      stallMs: limit(options.stallTimeoutMs, STALL_MS_MAX, 'stallTimeoutMs'),
      replyQueuedBytesMax: limit(options.replyQueuedBytesMax, REPLY_QUEUED_BYTES_MAX, 'replyQueuedBytesMax'),
    };
    if (this.limits.replyQueuedBytesMax < REPLY_QUEUED_BYTES_MIN) {
      // Below the socket's high-water mark 'drain' may never fire, and a paused connection would
      // wait for ever.
      throw invalidArgument(
        `NBD replyQueuedBytesMax must be at least ${REPLY_QUEUED_BYTES_MIN} bytes, not ${this.limits.replyQueuedBytesMax}`,
      );
    }
    this.maxConnections = limit(options.maxConnections, defaultMaxConnections(), 'maxConnections');
    this.budget = new BufferBudget(limit(options.bufferBytesMax, BUFFER_BYTES_MAX, 'bufferBytesMax'));
    this.tls = options.tls === undefined ? undefined : loadServerTls(options.tls);
    this.counters.onError = options.onRequestError;
  }

  /** Request latency by command, live (read it, do not write it; latency.ts). */
  get latency(): RequestLatency {
    return this.counters.latency;
  }

  /** The limits in force (defaults filled in). */
  get effectiveLimits(): Required<NbdLimits> {
    return {
      handshakeTimeoutMs: this.limits.handshakeIdleMs,
      idleTimeoutMs: this.limits.idleMs,
      stallTimeoutMs: this.limits.stallMs,
      maxConnections: this.maxConnections,
      bufferBytesMax: this.budget.capacity,
      replyQueuedBytesMax: this.limits.replyQueuedBytesMax,
    };
  }

  /** The STARTTLS policy: `off` (NOTLS), `on` (at the client's choice) or `require`. */
  get tlsMode(): NbdTlsMode {
    return this.tls?.mode ?? 'off';
  }

  /** Starts listening; port 0 picks a free port. Resolves with the address actually bound. */
  listen(port: number, host = '127.0.0.1'): Promise<{ port: number; host: string }> {
    if (this.server !== undefined) return Promise.reject(new Error('NbdServer is already listening'));
    // Paused on connect: nothing is read before accept() gives the socket its receive buffer.
    const server = createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        this.server = undefined;
        reject(err);
      };
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        this.startTicker();
        server.on('error', (err) => this.logger.error?.(`nbd server error: ${err.message}`));
        const address = server.address();
        if (address === null || typeof address === 'string') {
          resolve({ port, host });
        } else {
          resolve({ port: address.port, host: address.address });
        }
      });
    });
  }

  /** Stops listening and closes every connection (requests in flight are answered first). */
  close(): Promise<void> {
    if (this.closing !== undefined) return this.closing;
    const server = this.server;
    if (server === undefined) return Promise.resolve();
    this.closing = new Promise<void>((resolve) => {
      // Done when the listener is closed and every session has seen its socket close (the
      // listener's own callback can run a tick before the sockets' 'close' events).
      let listenerClosed = false;
      this.onIdle = () => {
        if (listenerClosed && this.sessions.size === 0) {
          clearInterval(this.ticker);
          resolve();
        }
      };
      server.close(() => {
        listenerClosed = true;
        this.onIdle?.();
      });
      for (const session of this.sessions) session.shutdown();
    });
    return this.closing;
  }

  /**
   * Ends every connection attached to `exp` the way close() ends them all (requests in flight
   * are answered, then the socket closes), e.g. when a region has moved to another appliance.
   * Returns how many were ended.
   */
  disconnectExport(exp: NbdExport, reason: string): number {
    let ended = 0;
    for (const session of this.sessions) {
      if (session.export !== exp) continue;
      session.shutdown(reason);
      ended++;
    }
    return ended;
  }

  stats(): NbdStats {
    return this.counters.snapshot({ used: this.budget.used, capacity: this.budget.capacity });
  }

  /**
   * One timer for every session's timeouts, ticking at a quarter of the shortest one (within
   * TIMEOUT_TICK_MS_MIN..MAX): a timeout fires at most a quarter late.
   */
  private startTicker(): void {
    const { handshakeIdleMs, idleMs, stallMs } = this.limits;
    const stallUnderPressureMs = stallMs > 0 ? Math.min(stallMs, PRESSURE_STALL_MS) : 0;
    const enabled = [handshakeIdleMs, idleMs, stallUnderPressureMs].filter((ms) => ms > 0);
    if (enabled.length === 0) return;
    const tickMs = Math.min(TIMEOUT_TICK_MS_MAX, Math.max(TIMEOUT_TICK_MS_MIN, Math.min(...enabled) / 4));
    this.ticker = setInterval(() => this.checkTimeouts(), tickMs);
    this.ticker.unref();
  }

  /**
   * Runs every connection's timeout checks as of `now` (what the server's own timer does a few
   * times per timeout). Public so tests can advance time without waiting for it.
   */
  checkTimeouts(now = Date.now()): void {
    for (const session of this.sessions) session.tick(now);
    this.budget.tick(now);
  }

  private accept(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    if (this.sessions.size >= this.maxConnections) {
      // Refused before the greeting: the client sees the connection close at once. Closing (not
      // queueing) frees the descriptor now, so a flood cannot exhaust the process's files.
      this.counters.connectionsRefused++;
      if (this.counters.connectionsRefused % 1000 === 1) {
        this.logger.warn?.(
          `nbd: refusing connections: ${this.maxConnections} open (maxConnections); ` +
            `${this.counters.connectionsRefused} refused so far`,
        );
      }
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    this.counters.connectionsOpen++;
    this.counters.connectionsTotal++;
    const session = new Session(socket, {
      directory: this.directory,
      stats: this.counters,
      logger: this.logger,
      budget: this.budget,
      limits: this.limits,
      receiveBuffer: this.receiveBuffer,
      ...(this.tls !== undefined && this.tls.mode !== 'off' ? { tls: this.tls } : {}),
      onClosed: (s) => {
        this.counters.connectionsOpen--;
        this.sessions.delete(s);
        this.onIdle?.();
      },
    });
    this.sessions.add(session);
  }
}
