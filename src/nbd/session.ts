/**
 * One client connection: the socket, its handshake, then its transmission.
 *
 * Lifecycle: greeting -> Handshake (bounded by a timer) -> Transmission -> closing -> closed.
 * Whatever ends a session (NBD_OPT_ABORT, NBD_CMD_DISC, a protocol violation, server close)
 * goes through `close`: stop parsing, end the socket so replies already queued still leave, and
 * destroy it if the peer has not gone within CLOSE_GRACE_MS. A violation therefore costs only
 * this connection. Socket errors are logged and end the session; they never propagate.
 *
 * Writes are corked for the duration of one 'data' event, so every reply produced by one
 * chunk of pipelined requests leaves in one writev.
 *
 * TLS: after the handshake acknowledges NBD_OPT_STARTTLS, `startTls` wraps the socket in a
 * TLSSocket and moves the session's listeners onto it; everything else runs unchanged over the
 * new socket. The handshake timer still runs, so it bounds the TLS handshake too.
 */
import type { Socket } from 'node:net';
import { CLOSE_GRACE_MS, REPLY_QUEUED_BYTES_MAX } from './constants.js';
import type { NbdExport, NbdExportDirectory } from './export.js';
import type { Negotiated } from './handshake.js';
import { greeting, Handshake } from './handshake.js';
import type { NbdLogger } from './logger.js';
import type { StatsCounters } from './stats.js';
import type { ServerTls } from './tls.js';
import { upgradeServerSocket } from './tls.js';
import { Transmission } from './transmission.js';

export interface SessionOptions {
  readonly directory: NbdExportDirectory;
  readonly stats: StatsCounters;
  readonly logger: NbdLogger;
  readonly handshakeTimeoutMs: number;
  readonly onClosed: (session: Session) => void;
  /** TLS policy and credentials; absent: NOTLS. */
  readonly tls?: ServerTls;
}

export class Session {
  private readonly handshake: Handshake;
  private transmission: Transmission | undefined;
  private attachedName: string | undefined;
  private attachedExport: NbdExport | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private closed = false;
  private readonly peer: string;
  /** The connection's socket: the accepted one, or the TLSSocket wrapping it after STARTTLS. */
  private socket: Socket;
  private readonly onDataListener = (chunk: Buffer): void => this.onData(chunk);
  private readonly onDrainListener = (): void => this.guarded(() => this.transmission?.tryResume());

  constructor(
    socket: Socket,
    private readonly options: SessionOptions,
  ) {
    this.socket = socket;
    this.peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.handshake = new Handshake(
      options.directory,
      {
        write: (buf) => this.write(buf),
        ready: (negotiated, rest) => this.enterTransmission(negotiated, rest),
        close: (reason, violation) => this.close(reason, violation),
        startTls: () => this.startTls(),
      },
      { mode: options.tls?.mode ?? 'off' },
    );
    socket.setNoDelay(true);
    socket.on('data', this.onDataListener);
    socket.on('drain', this.onDrainListener);
    socket.on('error', (err) =>
      this.options.logger.debug?.(`nbd ${this.peer}: socket error: ${err.message}`),
    );
    socket.on('close', () => this.onSocketClosed());
    this.handshakeTimer = setTimeout(
      () => this.close(`handshake not finished within ${options.handshakeTimeoutMs} ms`, false),
      options.handshakeTimeoutMs,
    );
    this.handshakeTimer.unref();
    this.write(greeting());
  }

  /**
   * Server shutdown: stop reading requests, answer those in flight, then close. An export
   * whose flush never settles cannot hold the server open: after CLOSE_GRACE_MS we close anyway.
   */
  shutdown(reason = 'server shutting down'): void {
    if (this.transmission === undefined || this.closing) {
      this.close(reason, false);
      return;
    }
    this.transmission.shutdown(reason);
    const timer = setTimeout(
      () => this.close('server shutting down (flush still pending)', false),
      CLOSE_GRACE_MS,
    );
    timer.unref();
  }

  /** The export this connection is attached to (in transmission), if any. */
  get export(): NbdExport | undefined {
    return this.attachedExport;
  }

  /**
   * STARTTLS was acknowledged (the ACK is queued on the plain socket): flush it, then speak TLS
   * on this connection. Data and drain now come from the TLSSocket; the plain socket keeps its
   * error and close listeners (closing either ends the session once).
   */
  private startTls(): void {
    const plain = this.socket;
    const tls = this.options.tls;
    if (tls === undefined) {
      this.close('STARTTLS acknowledged without TLS credentials', false); // unreachable: mode is off
      return;
    }
    plain.off('data', this.onDataListener);
    plain.off('drain', this.onDrainListener);
    plain.uncork(); // the ACK must leave in plain text before the first TLS record
    const secure = upgradeServerSocket(plain, tls, (socket, peer) => {
      if (this.closing) return;
      const admin = peer.identity !== undefined && tls.adminIdentities.has(peer.identity);
      const as = peer.identity === undefined ? '' : ` as '${peer.identity}'${admin ? ' (admin)' : ''}`;
      this.options.logger.debug?.(
        `nbd ${this.peer}: ${socket.getProtocol() ?? 'TLS'} ${socket.getCipher().name} established${as}`,
      );
      this.guarded(() => this.handshake.tlsEstablished(admin ? undefined : peer.identity));
    });
    this.socket = secure;
    secure.on('data', this.onDataListener);
    secure.on('drain', this.onDrainListener);
    secure.on('error', (err) => {
      // A failed TLS handshake (bad PSK, untrusted certificate) ends this connection only.
      this.options.logger.warn?.(`nbd ${this.peer}: TLS failed: ${err.message}`);
      this.close(`TLS failed: ${err.message}`, false);
    });
    secure.on('close', () => this.onSocketClosed());
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return;
    this.guarded(() => {
      if (this.transmission !== undefined) this.transmission.feed(chunk);
      else this.handshake.feed(chunk);
    });
  }

  /**
   * Runs protocol work with the socket corked, so that all replies it produces leave in one
   * writev, and turns any exception into the end of this session: exports' exceptions are
   * caught per request, so reaching the catch is a bug in this layer, and it must not take the
   * process (and every other connection) down.
   */
  private guarded(work: () => void): void {
    const socket = this.socket;
    socket.cork();
    try {
      work();
    } catch (err) {
      this.internalError(err);
    } finally {
      socket.uncork();
    }
  }

  private internalError(err: unknown): void {
    this.options.logger.error?.(`nbd ${this.peer}: internal error: ${(err as Error)?.stack ?? String(err)}`);
    this.close('internal error', false);
  }

  private enterTransmission(negotiated: Negotiated, rest: Buffer | undefined): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.options.directory.onAttach?.(negotiated.exportName, 1);
    // Only an attach that succeeded is undone when the socket closes.
    this.attachedName = negotiated.exportName;
    this.attachedExport = negotiated.export;
    this.transmission = new Transmission(
      negotiated,
      {
        write: (buf, written) => this.write(buf, written),
        congested: () => this.socket.writableLength >= REPLY_QUEUED_BYTES_MAX,
        setInputPaused: (paused) => {
          if (this.closing) return;
          if (paused) this.socket.pause();
          else this.socket.resume();
        },
        close: (reason, violation) => this.close(reason, violation),
        internalError: (err) => this.internalError(err),
      },
      this.options.stats,
    );
    if (rest !== undefined) this.transmission.feed(rest);
  }

  private write(buf: Buffer, written?: () => void): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    if (written === undefined) this.socket.write(buf);
    else
      this.socket.write(buf, (err) => {
        if (!err) written();
      });
  }

  private close(reason: string, violation: boolean): void {
    if (this.closing) return;
    this.closing = true;
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.transmission?.stop();
    if (violation) {
      this.options.stats.protocolViolations++;
      this.options.logger.warn?.(`nbd ${this.peer}: protocol violation, closing: ${reason}`);
    } else {
      this.options.logger.debug?.(`nbd ${this.peer}: closing: ${reason}`);
    }
    const socket = this.socket;
    if (socket.destroyed) return;
    // Keep reading (and dropping) so the peer's FIN is seen; flush queued replies, then FIN.
    socket.resume();
    socket.end();
    this.graceTimer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
    this.graceTimer.unref();
  }

  private onSocketClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing = true;
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.graceTimer);
    this.transmission?.stop();
    try {
      if (this.attachedName !== undefined) this.options.directory.onAttach?.(this.attachedName, -1);
    } catch (err) {
      // A directory's bookkeeping must not take the process down from a 'close' handler.
      this.options.logger.error?.(
        `nbd ${this.peer}: onAttach threw: ${(err as Error)?.message ?? String(err)}`,
      );
    }
    this.options.onClosed(this);
  }
}
