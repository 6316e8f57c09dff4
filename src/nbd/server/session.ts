/**
 * One client connection: the socket, its handshake, then its transmission.
 *
 * Lifecycle: greeting -> Handshake -> Transmission -> closing -> closed.
 * Whatever ends a session (NBD_OPT_ABORT, NBD_CMD_DISC, a protocol violation, a timeout, server
 * close) goes through `close`: stop parsing, end the socket so replies already queued still
 * leave, and destroy it if the peer has not gone within CLOSE_GRACE_MS. A violation therefore
 * costs only this connection. Socket errors are logged and end the session; they never propagate.
 *
 * The connection's claim on its export (directory.onAttach +1 when transmission starts) is given
 * back exactly once (`releaseClaim`): when the transmission has answered everything after
 * NBD_CMD_DISC (or a server shutdown), or else when the socket closes, whichever comes first.
 * Releasing at DISC matters to clients that delete the export right after disconnecting: the
 * client sees its disconnect complete when the server's FIN arrives, and the server's socket
 * 'close' may come after the client's next admin call.
 *
 * Writes are corked for the duration of one 'data' event, so every reply produced by one
 * chunk of pipelined requests leaves in one writev (small replies already come from the
 * transmission as one contiguous segment per batch).
 *
 * Resources (every one bounded, see docs/nbd.md "Resource bounds"):
 *   - reply bytes queued on the socket: reading stops (handshake options and requests alike)
 *     while `replyQueuedBytesMax` are queued, and resumes on 'drain';
 *   - the server's global BufferBudget is charged with exactly what the socket holds
 *     (`settle`, after every write and write completion) plus the transmission's reservations;
 *   - time: the server calls `tick` a few times per timeout; it measures progress (bytes in,
 *     bytes out, options seen) and closes a session that is idle in the handshake, idle in
 *     transmission (when enabled), or holding a request whose bytes stopped moving.
 *
 * The socket is wired in one method (`attach`). TLS: after the handshake acknowledges
 * NBD_OPT_STARTTLS, `startTls` wraps the socket in a TLSSocket and attaches that instead; the
 * parsing, corking, back-pressure and budget code runs unchanged over the new socket. The
 * handshake idle timeout still runs (no option arrives during the TLS handshake), so it bounds
 * the TLS handshake too.
 */
import type { Socket } from 'node:net';
import type { BudgetAccount, BufferBudget } from './budget.js';
import { CLOSE_GRACE_MS, PRESSURE_STALL_MS, TCP_KEEPALIVE_MS } from './limits.js';
import type { NbdExport, NbdExportDirectory } from './export.js';
import type { Negotiated } from './handshake.js';
import { greeting, Handshake } from './handshake.js';
import type { NbdLogger } from './logger.js';
import type { StatsCounters } from './stats.js';
import type { ServerTls } from './tls.js';
import { upgradeServerSocket } from './tls.js';
import { adoptWithReceiveBuffer } from './receive-buffer.js';
import { Transmission } from './transmission.js';

/** Per-connection limits; 0 turns a timeout off. */
export interface SessionLimits {
  readonly replyQueuedBytesMax: number;
  readonly handshakeIdleMs: number;
  readonly idleMs: number;
  readonly stallMs: number;
}

export interface SessionOptions {
  readonly directory: NbdExportDirectory;
  readonly stats: StatsCounters;
  readonly logger: NbdLogger;
  readonly budget: BufferBudget;
  readonly limits: SessionLimits;
  readonly onClosed: (session: Session) => void;
  /**
   * The server's receive buffer, shared by every connection (see receive-buffer.ts). The
   * socket given to the session was accepted paused; the session adopts it into one that
   * reads into this buffer.
   */
  readonly receiveBuffer: Buffer;
  /** TLS policy and credentials; absent: NOTLS. */
  readonly tls?: ServerTls;
}

export class Session {
  private socket!: Socket;
  private readonly handshake: Handshake;
  private transmission: Transmission | undefined;
  private attachedName: string | undefined;
  private attachedExport: NbdExport | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private closed = false;
  private peer = '?';
  // For the log lines of a connection that reached transmission: when it was accepted, the
  // export it used, who it authenticated as over TLS, and why it closed.
  private readonly openedAt = Date.now();
  private loggedExport: string | undefined;
  private tlsIdentity: string | undefined;
  private closeReason = 'the client closed the connection';
  /** Handshake bytes not parsed yet because the socket was congested (a copy: chunks are lent). */
  private handshakeRest: Buffer | undefined;
  /** STARTTLS done: bytes come from the TLSSocket, none from the plain socket. */
  private tlsStarted = false;

  // Budget: bytes of this socket's queue charged to the global budget.
  private charged = 0;
  /** Everything this connection holds in the budget (socket bytes and its transmission's reservations). */
  private readonly account: BudgetAccount = { held: 0 };
  /** Bytes ever queued on the socket; minus writableLength, the bytes that have left. */
  private queuedTotal = 0;

  // Progress, sampled by tick(): the last values seen and when they last changed.
  private seenBytesRead = 0;
  private seenSent = 0;
  private seenOptions = 0;
  private lastInputAt: number;
  private lastOutputAt: number;
  private lastOptionAt: number;

  /** Bound once: every write completion re-charges the budget. */
  private readonly onWritten = (): void => this.settle();
  /** Bound once, so that STARTTLS can take them off the plain socket. */
  private readonly onDataListener = (chunk: Buffer): void => this.onData(chunk);
  private readonly onDrainListener = (): void => this.onDrain();

  constructor(
    socket: Socket,
    private readonly options: SessionOptions,
  ) {
    const now = Date.now();
    this.lastInputAt = now;
    this.lastOutputAt = now;
    this.lastOptionAt = now;
    this.handshake = new Handshake(
      options.directory,
      {
        write: (buf) => this.write(buf),
        ready: (negotiated, rest) => this.enterTransmission(negotiated, rest),
        close: (reason, violation) => this.close(reason, violation),
        congested: () => this.congested(),
        listRefused: () => this.options.stats.listRefusals++,
        startTls: () => this.startTls(),
      },
      { mode: options.tls?.mode ?? 'off' },
    );
    const adopted = adoptWithReceiveBuffer(socket, options.receiveBuffer, (chunk) => this.receive(chunk));
    this.attach(adopted ?? socket);
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
   * Checks the timeouts; `now` is Date.now(). Progress is sampled here rather than recorded on
   * every event, so the data path pays nothing for it; a timeout therefore fires between its
   * value and one tick later.
   */
  tick(now: number): void {
    if (this.closing) return;
    const socket = this.socket;
    const limits = this.options.limits;
    const stats = this.options.stats;
    if (socket.bytesRead !== this.seenBytesRead) {
      this.seenBytesRead = socket.bytesRead;
      this.lastInputAt = now;
    }
    const queued = socket.writableLength;
    const sent = this.queuedTotal - queued;
    if (sent !== this.seenSent || queued === 0) {
      this.seenSent = sent;
      this.lastOutputAt = now;
    }
    this.settle();
    if (this.transmission === undefined) {
      const options = this.handshake.options;
      if (options !== this.seenOptions) {
        this.seenOptions = options;
        this.lastOptionAt = now;
      }
      if (limits.handshakeIdleMs > 0 && now - this.lastOptionAt >= limits.handshakeIdleMs) {
        stats.handshakeTimeouts++;
        this.close(`no handshake option for ${limits.handshakeIdleMs} ms`, false);
      }
      return;
    }
    const t = this.transmission;
    if (limits.stallMs > 0) {
      // While others wait for the budget, whoever holds bytes without moving them gets less time.
      const stallMs =
        this.options.budget.waiting > 0 ? Math.min(limits.stallMs, PRESSURE_STALL_MS) : limits.stallMs;
      if (queued > 0 && now - this.lastOutputAt >= stallMs) {
        stats.replyStalls++;
        // No grace period: the client is not reading, and the queued bytes hold the budget.
        this.close(`${queued} reply bytes unread for ${stallMs} ms`, false);
        this.socket.destroy();
        return;
      }
      if (t.receivingPayload && now - this.lastInputAt >= stallMs) {
        stats.payloadStalls++;
        this.close(`write payload stalled for ${stallMs} ms`, false);
        return;
      }
    }
    if (limits.idleMs > 0 && queued === 0 && t.idle && now - this.lastInputAt >= limits.idleMs) {
      stats.idleTimeouts++;
      this.close(`idle for ${limits.idleMs} ms`, false);
    }
  }

  /** Wires `socket` to this session (all socket events are handled here and only here). */
  private attach(socket: Socket): void {
    this.socket = socket;
    this.peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.seenBytesRead = socket.bytesRead;
    this.queuedTotal = socket.writableLength;
    this.seenSent = 0;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, TCP_KEEPALIVE_MS);
    socket.on('data', this.onDataListener);
    socket.on('drain', this.onDrainListener);
    socket.on('error', (err) =>
      this.options.logger.debug?.(`nbd ${this.peer}: socket error: ${err.message}`),
    );
    socket.on('close', () => this.onSocketClosed());
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
    this.tlsStarted = true;
    plain.off('data', this.onDataListener);
    plain.off('drain', this.onDrainListener);
    plain.uncork(); // the ACK must leave in plain text before the first TLS record
    // What the plain socket still holds (the ACK) leaves with it; the budget follows the new socket.
    this.options.budget.adjust(this.account, -this.charged);
    this.charged = 0;
    const peer = this.peer;
    const secure = upgradeServerSocket(plain, tls, (socket, authenticated) => {
      if (this.closing) return;
      const identity = authenticated.identity;
      const admin = identity !== undefined && tls.adminIdentities.has(identity);
      const as = identity === undefined ? '' : ` as '${identity}'${admin ? ' (admin)' : ''}`;
      this.tlsIdentity = identity;
      this.options.logger.debug?.(
        `nbd ${peer}: ${socket.getProtocol() ?? 'TLS'} ${socket.getCipher().name} established${as}`,
      );
      this.guarded(() => this.handshake.tlsEstablished(admin ? undefined : identity));
    });
    secure.on('error', (err) => {
      // A failed TLS handshake (bad PSK, untrusted certificate) ends this connection only.
      this.options.logger.warn?.(`nbd ${peer}: TLS failed: ${err.message}`);
      this.close(`TLS failed: ${err.message}`, false);
    });
    this.attach(secure);
    this.peer = peer;
  }

  private congested(): boolean {
    return this.socket.writableLength >= this.options.limits.replyQueuedBytesMax;
  }

  /**
   * Bytes read by the plain socket into the server's shared receive buffer (when the socket was
   * made with one, it emits no 'data'): valid only during this call. After STARTTLS the bytes
   * come decrypted from the TLSSocket instead.
   */
  private receive(chunk: Buffer): void {
    if (!this.tlsStarted) this.onData(chunk);
  }

  private onData(chunk: Buffer): void {
    this.options.stats.bytesReceived += chunk.length;
    if (this.closing) return;
    this.guarded(() => {
      if (this.transmission !== undefined) this.transmission.feed(chunk);
      else this.feedHandshake(chunk);
    });
  }

  private onDrain(): void {
    this.settle();
    if (this.closing) return;
    this.guarded(() => {
      if (this.transmission !== undefined) {
        this.transmission.tryResume();
      } else if (this.handshakeRest !== undefined && !this.congested()) {
        const rest = this.handshakeRest;
        this.handshakeRest = undefined;
        this.socket.resume();
        this.feedHandshake(rest);
      }
    });
  }

  /** Feeds the handshake; when it stops for congestion, keeps the rest and stops reading. */
  private feedHandshake(chunk: Buffer): void {
    if (this.handshakeRest !== undefined) {
      this.handshakeRest = Buffer.concat([this.handshakeRest, chunk]);
      return;
    }
    const rest = this.handshake.feed(chunk);
    if (rest === undefined || this.closing) return;
    if (this.transmission !== undefined) {
      // The handshake finished inside this chunk; `ready` already handed the rest on.
      return;
    }
    this.handshakeRest = Buffer.from(rest); // the chunk it is part of is only lent to us
    this.options.stats.replyPauses++;
    this.socket.pause();
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
    // Requests answered by this work are timed from here to their replies' uncork (one batch).
    this.transmission?.beginBatch(performance.now());
    try {
      work();
    } catch (err) {
      this.internalError(err);
    } finally {
      // Replies built in the transmission's slab join this writev (endBatch would write them
      // after the uncork, as a write of their own).
      this.transmission?.flushReplies();
      socket.uncork();
      this.transmission?.endBatch();
      this.settle();
    }
  }

  private internalError(err: unknown): void {
    this.options.logger.error?.(`nbd ${this.peer}: internal error: ${(err as Error)?.stack ?? String(err)}`);
    this.close('internal error', false);
  }

  private enterTransmission(negotiated: Negotiated, rest: Buffer | undefined): void {
    this.options.directory.onAttach?.(negotiated.exportName, 1, negotiated.export);
    // Only an attach that succeeded is undone (releaseClaim).
    this.attachedName = negotiated.exportName;
    this.attachedExport = negotiated.export;
    this.loggedExport = negotiated.exportName;
    this.options.logger.info?.(`nbd ${this.peer}: connection opened on export '${negotiated.exportName}'`, {
      event: 'nbd connection opened',
      peer: this.peer,
      export: negotiated.exportName,
      ...(this.tlsIdentity !== undefined ? { tlsIdentity: this.tlsIdentity } : {}),
    });
    // Idleness and stalls are measured from here: the handshake's bytes are not news.
    this.lastInputAt = Date.now();
    this.seenBytesRead = this.socket.bytesRead;
    this.transmission = new Transmission(
      negotiated,
      {
        write: (buf, written) => this.write(buf, written),
        push: () => {
          const socket = this.socket;
          if (socket.writableCorked === 0) return;
          socket.uncork();
          socket.cork();
        },
        congested: () => this.congested(),
        queuedBytes: () => this.socket.writableLength,
        setInputPaused: (paused) => {
          if (this.closing) return;
          if (paused) this.socket.pause();
          else this.socket.resume();
        },
        resume: () => this.guarded(() => this.transmission?.tryResume()),
        released: () => this.releaseClaim(),
        close: (reason, violation) => this.close(reason, violation),
        internalError: (err) => this.internalError(err),
      },
      this.options.stats,
      this.options.budget,
      this.account,
    );
    // The handshake ended inside a guarded chunk: what follows it is this batch's.
    this.transmission.beginBatch(performance.now());
    if (rest !== undefined) this.transmission.feed(rest);
  }

  private write(buf: Buffer, written?: () => void): void {
    const socket = this.socket;
    if (this.closed || socket.destroyed || socket.writableEnded) return;
    this.queuedTotal += buf.length;
    if (written === undefined) {
      socket.write(buf, this.onWritten);
    } else {
      socket.write(buf, (err) => {
        this.settle();
        if (!err) written();
      });
    }
    this.settle();
  }

  /** Re-charges the global budget with what the socket holds now. */
  private settle(): void {
    if (this.closed) return;
    const queued = this.socket.writableLength;
    if (queued === this.charged) return;
    this.options.budget.adjust(this.account, queued - this.charged);
    this.charged = queued;
  }

  private close(reason: string, violation: boolean): void {
    if (this.closing) return;
    this.closing = true;
    this.closeReason = reason;
    this.handshakeRest = undefined;
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
    this.closing = true;
    clearTimeout(this.graceTimer);
    this.transmission?.stop();
    // Whatever the socket still held is gone with it.
    this.options.budget.adjust(this.account, -this.charged);
    this.charged = 0;
    this.closed = true;
    this.releaseClaim();
    this.logClosed();
    this.options.onClosed(this);
  }

  /**
   * One line per connection that reached transmission (info), with what it did; connections
   * that only listed exports or probed the handshake get a debug line.
   */
  private logClosed(): void {
    const durationMs = Date.now() - this.openedAt;
    const fields = {
      event: 'nbd connection closed',
      peer: this.peer,
      ...(this.loggedExport !== undefined ? { export: this.loggedExport } : {}),
      ...(this.tlsIdentity !== undefined ? { tlsIdentity: this.tlsIdentity } : {}),
      durationMs,
      bytesIn: this.socket.bytesRead,
      bytesOut: this.socket.bytesWritten,
      reason: this.closeReason,
    };
    const message = `nbd ${this.peer}: connection closed after ${durationMs} ms (${this.closeReason})`;
    if (this.loggedExport === undefined) this.options.logger.debug?.(message, fields);
    else this.options.logger.info?.(message, fields);
  }

  /** Gives back this connection's claim on its export, once (DISC answered, or socket closed). */
  private releaseClaim(): void {
    const name = this.attachedName;
    if (name === undefined) return;
    this.attachedName = undefined;
    try {
      this.options.directory.onAttach?.(name, -1, this.attachedExport);
    } catch (err) {
      // A directory's bookkeeping must not take the process down from a 'close' handler.
      this.options.logger.error?.(
        `nbd ${this.peer}: onAttach threw: ${(err as Error)?.message ?? String(err)}`,
      );
    }
  }
}
