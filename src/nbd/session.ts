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
 */
import type { Socket } from 'node:net';
import { CLOSE_GRACE_MS, REPLY_QUEUED_BYTES_MAX } from './constants.js';
import type { NbdExport, NbdExportDirectory } from './export.js';
import type { Negotiated } from './handshake.js';
import { greeting, Handshake } from './handshake.js';
import type { NbdLogger } from './logger.js';
import type { StatsCounters } from './stats.js';
import { Transmission } from './transmission.js';

export interface SessionOptions {
  readonly directory: NbdExportDirectory;
  readonly stats: StatsCounters;
  readonly logger: NbdLogger;
  readonly handshakeTimeoutMs: number;
  readonly onClosed: (session: Session) => void;
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

  constructor(
    private readonly socket: Socket,
    private readonly options: SessionOptions,
  ) {
    this.peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.handshake = new Handshake(options.directory, {
      write: (buf) => this.write(buf),
      ready: (negotiated, rest) => this.enterTransmission(negotiated, rest),
      close: (reason, violation) => this.close(reason, violation),
    });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.guarded(() => this.transmission?.tryResume()));
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
