/**
 * NbdServer: serves an NbdExportDirectory over TCP with the NBD protocol (fixed newstyle).
 *
 *   const server = new NbdServer({ directory });
 *   const { port } = await server.listen(0);          // 127.0.0.1, ephemeral port
 *   ... qemu-io -f raw nbd://127.0.0.1:PORT/name ...
 *   await server.close();
 *
 * Every connection is a Session (session.ts) with its own handshake and transmission state;
 * they share only the directory (hence the exports) and the statistics. A connection that
 * breaks the protocol is closed alone; socket errors never escape.
 */
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { HANDSHAKE_MS_MAX } from './constants.js';
import type { NbdExport, NbdExportDirectory } from './export.js';
import type { NbdLogger } from './logger.js';
import { SILENT_LOGGER } from './logger.js';
import { Session } from './session.js';
import type { NbdStats } from './stats.js';
import { StatsCounters } from './stats.js';
import type { NbdServerTlsOptions, NbdTlsMode, ServerTls } from './tls.js';
import { loadServerTls } from './tls.js';

export interface NbdServerOptions {
  directory: NbdExportDirectory;
  logger?: NbdLogger;
  /** Time a client may take to finish the handshake; defaults to HANDSHAKE_MS_MAX. */
  handshakeTimeoutMs?: number;
  /** NBD_OPT_STARTTLS policy and credentials (tls.ts); default NOTLS. Files are read here. */
  tls?: NbdServerTlsOptions;
}

export class NbdServer {
  private readonly directory: NbdExportDirectory;
  private readonly logger: NbdLogger;
  private readonly handshakeTimeoutMs: number;
  private readonly tls: ServerTls | undefined;
  private readonly counters = new StatsCounters();
  private readonly sessions = new Set<Session>();
  private server: Server | undefined;
  private closing: Promise<void> | undefined;
  /** Set by close(): called whenever a session ends, to notice the last one. */
  private onIdle: (() => void) | undefined;

  constructor(options: NbdServerOptions) {
    this.directory = options.directory;
    this.logger = options.logger ?? SILENT_LOGGER;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? HANDSHAKE_MS_MAX;
    this.tls = options.tls === undefined ? undefined : loadServerTls(options.tls);
  }

  /** The STARTTLS policy: `off` (NOTLS), `on` (at the client's choice) or `require`. */
  get tlsMode(): NbdTlsMode {
    return this.tls?.mode ?? 'off';
  }

  /** Starts listening; port 0 picks a free port. Resolves with the address actually bound. */
  listen(port: number, host = '127.0.0.1'): Promise<{ port: number; host: string }> {
    if (this.server !== undefined) return Promise.reject(new Error('NbdServer is already listening'));
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        this.server = undefined;
        reject(err);
      };
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
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
        if (listenerClosed && this.sessions.size === 0) resolve();
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
    return this.counters.snapshot();
  }

  private accept(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    this.counters.connectionsOpen++;
    this.counters.connectionsTotal++;
    const session = new Session(socket, {
      directory: this.directory,
      stats: this.counters,
      logger: this.logger,
      handshakeTimeoutMs: this.handshakeTimeoutMs,
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
