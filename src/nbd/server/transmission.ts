/**
 * Transmission phase of one connection: requests in, replies out.
 *
 * Each request flows  parser -> validateRequest -> dispatch -> reply:
 *   - the parser (request-parser.ts) frames requests out of arbitrary chunks;
 *   - validateRequest (validate.ts) rejects anything the export must not see;
 *   - dispatch calls the export synchronously (data calls never wait) and writes the reply at
 *     once, so pipelined requests are answered in order; FLUSH and FUA wait for
 *     `export.flush()` and reply when it settles, possibly after later requests;
 *   - an exception from the export fails that request only (../protocol/errno.ts maps it).
 *
 * Replies: simple replies unless structured replies were negotiated, in which case a READ is
 * one OFFSET_DATA chunk flagged DONE, BLOCK_STATUS one BLOCK_STATUS chunk, and errors an ERROR
 * chunk with a message; other successes stay 16-byte simple replies (the spec allows that for
 * replies without payload). The export reads straight into a READ reply's payload.
 *
 * Small replies (READs up to REPLY_SLAB_CARVE_BYTES_MAX, and the 16-byte ones) are built back
 * to back in a reply slab and written as one segment when the batch ends (or before any other
 * reply, so replies stay in order): one socket write per batch, not per request. Slabs come
 * from the recycled large buffers (reply-buffers.ts) and go back once every segment carved
 * from them has been written. Why: at 4 KiB random reads, a fresh 256 KiB slab every ~60
 * replies made V8 run full mark-compact GCs for external memory (up to 15 in a 5 s fio run,
 * 10-50 ms each on a loaded machine; none with recycled slabs), and the pauses of the event
 * loop's only thread are the random-read p99. Fewer socket writes also mean less heap per
 * request (the stream's bookkeeping is per write), so fewer scavenges.
 *
 * Bounds: parsing pauses while the connection's reply queue is at its bound (the session's
 * `replyQueuedBytesMax`) or ASYNC_REQUESTS_MAX flushes are pending, and resumes when both fall
 * back (tryResume). Every READ reserves its reply and every WRITE its payload in the server's
 * global BufferBudget before it is admitted; a request that does not fit is left in the parser
 * (WAIT) and offered again once the budget grants its bytes, so nothing is dropped and requests
 * still run in order.
 */
import type { BudgetAccount, BudgetWaiter, BufferBudget } from './budget.js';
import type { NbdExport } from './export.js';
import type { Negotiated } from './handshake.js';
import {
  BLOCK_STATUS_EXTENTS_MAX,
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_COUNT,
  CMD_DISC,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  EXTENT_DESCRIPTOR_BYTES,
  META_CONTEXT_ID_BASE_ALLOCATION,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  SIMPLE_REPLY_HEADER_BYTES,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_REPLY_HEADER_BYTES,
} from '../protocol/constants.js';
import { ASYNC_REQUESTS_MAX, READ_PIECE_BYTES, WRITE_SKIP_BYTES_MAX } from './limits.js';
import { errnoForError, messageForError } from '../protocol/errno.js';
import { giveLargeReplyBuffer, takeLargeReplyBuffer } from './reply-buffers.js';
import type { RequestHeader, RequestSink, HeaderPlan } from './request-parser.js';
import { PageAlignedPieces } from './write-pieces.js';
import { PAYLOAD_COLLECT, PAYLOAD_NONE, PAYLOAD_SKIP, RequestParser, STOP, WAIT } from './request-parser.js';
import type { StatsCounters } from './stats.js';
import type { ValidationContext } from './validate.js';
import {
  commandName,
  REJECT_TOO_LARGE,
  rejectionErrno,
  rejectionMessage,
  VALID,
  validateRequest,
} from './validate.js';
import {
  BLOCK_STATUS_FIELDS_BYTES,
  encodeErrorChunk,
  encodeSimpleReply,
  OFFSET_DATA_HEADER_BYTES,
  writeOffsetDataHeader,
  writeSimpleReplyHeader,
  writeStructuredReplyHeader,
} from '../protocol/reply.js';

/** How a transmission talks to its connection. */
export interface TransmissionIo {
  /** Queues `buf`; `written` runs once the socket is done with it (not if the socket fails). */
  write(buf: Buffer, written?: () => void): void;
  /**
   * Sends what has been written so far now, in the middle of a batch (whose writes are
   * otherwise held until it ends, to leave in one writev).
   */
  push(): void;
  /** Too many reply bytes are queued: stop parsing until the socket drains. */
  congested(): boolean;
  /** Reply bytes queued on the socket now. */
  queuedBytes(): number;
  /** Stop or restart reading the socket (mirrors the parser's pause state). */
  setInputPaused(paused: boolean): void;
  /** The budget granted a waiting request: call tryResume from a guarded context. */
  resume(): void;
  /**
   * The connection is done with its export: after NBD_CMD_DISC (or a shutdown) every request
   * has been answered and nothing more will be parsed, so nothing of this connection can touch
   * the export again. Called once, just before `close`; the session releases its claim on the
   * export here rather than when the socket closes (a client that saw its DISC through may
   * delete the region at once).
   */
  released(): void;
  /** Transmission ended: after NBD_CMD_DISC (`violation` false) or a broken frame. */
  close(reason: string, violation: boolean): void;
  /** A bug in this layer surfaced outside a socket event (in a flush completion). */
  internalError(err: unknown): void;
}

const EXTENT_FLAGS_KNOWN = STATE_HOLE | STATE_ZERO;
/** Requests carried over from earlier batches that one batch times (more are timed at once). */
const CARRIED_MAX = 8;
/** Reply slab size, and the largest reply carved from it (bigger ones get their own buffer). */
const REPLY_SLAB_BYTES = 256 * 1024;
const REPLY_SLAB_CARVE_BYTES_MAX = 64 * 1024;
/**
 * Replies built in one batch that are sent at once rather than at its end: a batch that
 * answers a long backlog (a client at QD64 after the server was descheduled) lets the first
 * replies go while it builds the rest, so they do not all wait for the last one.
 */
const REPLY_PUSH_BYTES = 64 * 1024;

/**
 * A slab small replies are carved from, back to back, and written in segments (several
 * replies each). It goes back to the recycled buffers once it is full (retired) and the
 * socket has written every segment of it; a segment that never completes (the socket failed,
 * or it waited behind a large READ in `deferred`) leaves the slab to the GC instead.
 */
class ReplySlab {
  /** Bytes carved (replies built). */
  used = 0;
  /** Bytes handed to the socket; [flushed, used) is the segment not written yet. */
  flushed = 0;
  /** Segments handed to the socket whose write has not completed. */
  pending = 0;
  retired = false;
  /** Bound once per slab: a segment's write completed. */
  readonly written = (): void => {
    if (--this.pending === 0 && this.retired) giveLargeReplyBuffer(this.buf);
  };

  constructor(readonly buf: Buffer) {}
}

export class Transmission implements RequestSink {
  private readonly parser = new RequestParser(this);
  private readonly exp: NbdExport;
  private readonly ctx: ValidationContext;
  private readonly structured: boolean;
  private asyncInFlight = 0;
  private disconnecting = false;
  private disconnectReason = 'client sent NBD_CMD_DISC';
  private ended = false;
  /** The reason a WRITE is being skipped, answered once its payload has been read. */
  private skipReason = VALID;
  // Latency (latency.ts) is timed per batch, not per request: the session calls beginBatch and
  // endBatch around each chunk of work (a 'data' event, a drain, a grant), whose replies leave
  // together when the socket uncorks. A request that starts and is answered in one batch takes
  // the batch's time (which includes waiting behind the batch's earlier requests); one carried
  // over from an earlier batch (a WRITE payload in several chunks, a wait for the budget, a
  // large READ, a flush) its own start. Two clock reads per batch instead of two per request.
  /** performance.now() when the current request's batch began (its latency starts). */
  private requestStart = 0;
  /** The same for the large READ being streamed. */
  private streamStart = 0;
  private inBatch = false;
  private batchStart = 0;
  /** Requests of each command answered in this batch that also started in it. */
  private readonly batchCounts = new Float64Array(CMD_COUNT + 1);
  private batchCounted = false;
  /** Requests answered in this batch that started earlier: command and start. */
  private readonly carriedTypes = new Uint8Array(CARRIED_MAX);
  private readonly carriedStarts = new Float64Array(CARRIED_MAX);
  private carried = 0;

  // Block status collection: extents as (length, flags) pairs, reused between requests.
  private extents = new Uint32Array(256);
  private extentCount = 0;
  private extentTotal = 0;
  private extentLimit = 0;
  private extentCap = 0;
  private extentsStopped = false;
  private slab: ReplySlab | undefined;
  /** Budget reserved for READ replies built in the slab but not yet written to the socket. */
  private slabReserved = 0;
  /** Bound once, so BLOCK_STATUS does not allocate a closure per request. */
  private readonly emit = (length: number, flags: number): void => this.collectExtent(length, flags);

  // Global budget: the one request waiting for bytes, bytes granted to it, a WRITE's payload.
  private readonly waiter: BudgetWaiter & { bytes: number };
  /** A request is parked in the parser (WAIT) until the budget grants `waiter.bytes`. */
  private waitingForBudget = false;
  /** The parked request was granted; its header is being offered again (not counted twice). */
  private grantedBytes = 0;
  private reoffered = false;
  /** Reserved for the WRITE whose payload is being received. */
  private payloadReserved = 0;

  // The WRITE whose payload is arriving: its pieces go to the export as they come, and the
  // first error (refused by beginWrite, or a failed piece) is answered at its end.
  private readonly pieces: PageAlignedPieces;
  private writeError: unknown = undefined;

  // A large READ being answered piece by piece (streamLeft > 0): parsing waits until it is done,
  // and replies completed meanwhile (flushes) wait in `deferred` so they cannot split it.
  private streamLeft = 0;
  private streamOffset = 0;
  private streamCookieHi = 0;
  private streamCookieLo = 0;
  /** No piece sent yet (a simple reply's header goes with the first piece). */
  private streamFirst = true;
  private readonly deferred: Buffer[] = [];
  private readonly streamWaiter: BudgetWaiter & { bytes: number };
  private streamWaiting = false;
  private streamGrantedBytes = 0;

  constructor(
    negotiated: Negotiated,
    private readonly io: TransmissionIo,
    private readonly stats: StatsCounters,
    private readonly budget: BufferBudget,
    /** The connection's account: what it holds in the budget (its socket's bytes included). */
    private readonly account: BudgetAccount,
  ) {
    // One waiter object each, reused for every request: waiting allocates nothing.
    this.waiter = { account, bytes: 0, since: 0, granted: () => this.onGranted() };
    this.streamWaiter = { account, bytes: 0, since: 0, granted: () => this.onStreamGranted() };
    this.exp = negotiated.export;
    const exp = this.exp;
    const writePiece = exp.writePiece;
    this.pieces = new PageAlignedPieces(
      exp.blockSize,
      writePiece !== undefined
        ? (offset, src) => writePiece.call(exp, offset, src)
        : (offset, src) => exp.write(offset, src),
    );
    this.structured = negotiated.structuredReplies;
    this.ctx = {
      size: this.exp.size,
      readOnly: this.exp.readOnly,
      structuredReplies: negotiated.structuredReplies,
      baseAllocation: negotiated.baseAllocation,
    };
  }

  feed(chunk: Buffer): void {
    this.parser.feed(chunk);
  }

  get inFlight(): number {
    return this.asyncInFlight;
  }

  /** A WRITE payload is partly received (its bytes must keep arriving). */
  get receivingPayload(): boolean {
    return this.parser.inPayload && !this.parser.isPaused;
  }

  /** Nothing in flight, nothing waiting, no request partly received. */
  get idle(): boolean {
    return (
      this.asyncInFlight === 0 &&
      this.streamLeft === 0 &&
      !this.waitingForBudget &&
      !this.parser.inPayload &&
      !this.parser.inHeader
    );
  }

  /** Stops parsing for good (connection closing); pending flushes still complete but reply nowhere. */
  stop(): void {
    this.ended = true;
    this.parser.stop();
    // Give back whatever this connection held or was promised.
    if (this.waitingForBudget && this.budget.cancel(this.waiter)) this.waitingForBudget = false;
    if (this.streamWaiting && this.budget.cancel(this.streamWaiter)) this.streamWaiting = false;
    this.budget.release(
      this.account,
      this.grantedBytes + this.payloadReserved + this.streamGrantedBytes + this.slabReserved,
    );
    this.grantedBytes = 0;
    this.payloadReserved = 0;
    this.slabReserved = 0;
    if (this.slab !== undefined) this.slab.flushed = this.slab.used; // never written
    this.writeError = undefined;
    this.streamGrantedBytes = 0;
    this.streamLeft = 0;
    this.deferred.length = 0;
  }

  /** Like NBD_CMD_DISC from our side: parse nothing more, answer what is in flight, then close. */
  shutdown(reason: string): void {
    if (this.ended) return;
    this.parser.stop();
    this.disconnecting = true;
    this.disconnectReason = reason;
    this.finishDisconnect();
  }

  /** Restarts parsing if nothing holds it back any more. */
  tryResume(): void {
    if (this.streamLeft > 0) {
      if (this.streamWaiting || this.ended) return;
      this.pumpStream();
      if (this.streamLeft > 0) return;
    }
    if (!this.parser.isPaused || this.parser.stopped || this.waitingForBudget) return;
    if (this.io.congested() || this.asyncInFlight >= ASYNC_REQUESTS_MAX) return;
    this.io.setInputPaused(false);
    this.parser.resume();
  }

  // ---- latency batches --------------------------------------------------------------------

  /** Work on this connection starts (`now`: performance.now()); requests parsed now start here. */
  beginBatch(now: number): void {
    if (this.inBatch) return;
    this.inBatch = true;
    this.batchStart = now;
  }

  /** The batch's replies are queued: records the latency of every request it answered. */
  endBatch(): void {
    if (!this.inBatch) return;
    this.flushReplies();
    this.inBatch = false;
    if (!this.batchCounted && this.carried === 0) return;
    const now = performance.now();
    const latency = this.stats.latency;
    if (this.batchCounted) {
      this.batchCounted = false;
      const ms = now - this.batchStart;
      const counts = this.batchCounts;
      for (let type = 0; type <= CMD_COUNT; type++) {
        if (counts[type] === 0) continue;
        latency.observeCount(type, ms, counts[type]);
        counts[type] = 0;
      }
    }
    for (let i = 0; i < this.carried; i++) latency.observe(this.carriedTypes[i], now - this.carriedStarts[i]);
    this.carried = 0;
  }

  /** A request of command `type` that started at `start` has been answered. */
  private timed(type: number, start: number): void {
    const command = type < CMD_COUNT ? type : CMD_COUNT;
    if (this.inBatch && start === this.batchStart) {
      this.batchCounts[command]++;
      this.batchCounted = true;
    } else if (this.inBatch && this.carried < CARRIED_MAX) {
      this.carriedTypes[this.carried] = command;
      this.carriedStarts[this.carried++] = start;
    } else {
      this.stats.latency.observe(command, performance.now() - start);
    }
  }

  // ---- RequestSink ------------------------------------------------------------------------

  onHeader(req: RequestHeader): HeaderPlan {
    if (this.reoffered) this.reoffered = false;
    else {
      this.stats.countRequest(req.type);
      this.requestStart = this.inBatch ? this.batchStart : performance.now();
    }
    if (req.type === CMD_DISC) {
      // Answer everything outstanding, then close; the client sends nothing after DISC.
      this.disconnecting = true;
      this.finishDisconnect();
      return STOP;
    }
    const reason = validateRequest(req, this.ctx);
    if (req.type === CMD_WRITE) {
      if (reason === VALID) {
        // The whole payload is reserved before any of it is read, never piece by piece as it
        // arrives: connections each holding part of a payload while waiting for the rest
        // would deadlock once they hold the whole budget (hold and wait).
        if (!this.admit(req.length)) return WAIT;
        // The payload no longer waits in a buffer (its pieces are written as they arrive), but
        // the reservation stays: it bounds what all connections have in flight at once.
        this.payloadReserved = req.length;
        this.pieces.begin(req.offset, req.length);
        if (this.exp.beginWrite !== undefined) {
          try {
            this.exp.beginWrite(req.offset, req.length);
          } catch (err) {
            this.writeError = err; // answered once the payload has been read past
          }
        }
        return PAYLOAD_COLLECT;
      }
      if (reason === REJECT_TOO_LARGE && req.length > WRITE_SKIP_BYTES_MAX) {
        this.flushReplies(); // answers before this one still leave
        this.ended = true;
        this.io.close(`write of ${req.length} bytes is absurdly large`, true);
        return STOP;
      }
      // Read and drop the payload so the stream stays in sync, then answer the error.
      this.skipReason = reason;
      return PAYLOAD_SKIP;
    }
    if (reason !== VALID) {
      this.reject(req, reason);
    } else if (req.type === CMD_READ && req.length > READ_PIECE_BYTES) {
      this.startStream(req);
      if (this.streamLeft > 0) {
        this.parser.pause();
        this.io.setInputPaused(true);
        return PAYLOAD_NONE;
      }
    } else if (req.type === CMD_READ) {
      const cost = this.readReplyBytes(req.length);
      if (!this.admit(cost)) return WAIT;
      // The reply is charged to the budget (via the socket's queue) once it is written; until
      // then (built in the slab) the reservation holds it.
      this.read(req, cost);
    } else {
      this.dispatch(req);
    }
    this.afterRequest();
    return PAYLOAD_NONE;
  }

  onPayloadPiece(_req: RequestHeader, piece: Buffer): void {
    if (this.writeError !== undefined) return; // refused or failed: the rest is only read and dropped
    try {
      this.pieces.push(piece);
    } catch (err) {
      // Earlier pieces stay written: NBD leaves a failed WRITE's range unspecified. Memory
      // running out, the usual cause, was checked for the whole range before the first piece.
      this.writeError = err;
    }
  }

  onPayloadEnd(req: RequestHeader): void {
    // Every byte is in place: the reservation ends here.
    this.budget.release(this.account, this.payloadReserved);
    this.payloadReserved = 0;
    const err = this.writeError;
    if (err !== undefined) {
      this.writeError = undefined;
      this.fail(req, err);
    } else {
      this.stats.bytesWritten += req.length;
      this.complete(req);
    }
    this.afterRequest();
  }

  onSkipped(req: RequestHeader): void {
    this.reject(req, this.skipReason);
    this.afterRequest();
  }

  onViolation(reason: string): void {
    this.flushReplies(); // answers before this one still leave
    this.ended = true;
    this.io.close(reason, true);
  }

  // ---- global budget ----------------------------------------------------------------------

  /**
   * Takes `bytes` of the global budget for the request being parsed: the grant it waited for,
   * or fresh bytes; otherwise queues for them, stops reading and answers false (WAIT).
   */
  private admit(bytes: number): boolean {
    if (this.grantedBytes > 0) {
      // The same request, offered again: the grant was sized for it.
      this.budget.adjust(this.account, bytes - this.grantedBytes);
      this.grantedBytes = 0;
      return true;
    }
    if (this.budget.tryTake(this.account, bytes)) return true;
    this.stats.budgetWaits++;
    this.waiter.bytes = bytes;
    this.waitingForBudget = true;
    this.budget.wait(this.waiter);
    this.io.setInputPaused(true);
    return false;
  }

  private onGranted(): void {
    this.waitingForBudget = false;
    if (this.ended) {
      this.budget.release(this.account, this.waiter.bytes);
      return;
    }
    this.grantedBytes = this.waiter.bytes;
    this.reoffered = true;
    this.io.resume();
  }

  // ---- large READs, piece by piece -------------------------------------------------------

  private startStream(req: RequestHeader): void {
    // Replies built before it leave first: nothing may come between its pieces.
    this.flushReplies();
    this.stats.bytesRead += req.length;
    this.streamStart = this.requestStart;
    this.streamCookieHi = req.cookieHi;
    this.streamCookieLo = req.cookieLo;
    this.streamOffset = req.offset;
    this.streamLeft = req.length;
    this.streamFirst = true;
    this.pumpStream();
  }

  /**
   * Sends pieces while the socket holds less than one and the budget grants them; returns when
   * the stream is done or must wait (for 'drain' or a grant, both ending in tryResume).
   */
  private pumpStream(): void {
    const structured = this.structured;
    while (this.streamLeft > 0 && !this.ended) {
      if (this.io.queuedBytes() >= READ_PIECE_BYTES || this.io.congested()) return;
      const headerBytes = structured
        ? OFFSET_DATA_HEADER_BYTES
        : this.streamFirst
          ? SIMPLE_REPLY_HEADER_BYTES
          : 0;
      // Header and data fill exactly one piece: a power of two, the size class of the recycled
      // buffers (a piece plus its header would take the next class, twice the memory).
      const n = Math.min(READ_PIECE_BYTES - headerBytes, this.streamLeft);
      const size = headerBytes + n;
      if (this.streamGrantedBytes > 0) {
        this.budget.adjust(this.account, size - this.streamGrantedBytes);
        this.streamGrantedBytes = 0;
      } else if (!this.budget.tryTake(this.account, size)) {
        this.stats.budgetWaits++;
        this.streamWaiter.bytes = size;
        this.streamWaiting = true;
        this.budget.wait(this.streamWaiter);
        return;
      }
      const large = takeLargeReplyBuffer(size);
      const buf = large.subarray(0, size);
      try {
        this.exp.read(this.streamOffset, buf.subarray(headerBytes));
      } catch (err) {
        giveLargeReplyBuffer(large);
        this.budget.release(this.account, size);
        this.streamFailed(err);
        return;
      }
      const last = n === this.streamLeft;
      if (structured) {
        writeOffsetDataHeader(
          buf,
          0,
          last ? REPLY_FLAG_DONE : 0,
          this.streamCookieHi,
          this.streamCookieLo,
          this.streamOffset,
          n,
        );
      } else if (this.streamFirst) {
        writeSimpleReplyHeader(buf, 0, 0, this.streamCookieHi, this.streamCookieLo);
      }
      this.io.write(buf, () => giveLargeReplyBuffer(large));
      this.budget.release(this.account, size);
      this.streamOffset += n;
      this.streamLeft -= n;
      this.streamFirst = false;
    }
    if (this.streamLeft === 0 && !this.ended) this.finishStream();
  }

  /** The export failed in the middle of a large READ. */
  private streamFailed(err: unknown): void {
    const message = `read at ${this.streamOffset}: ${messageForError(err)}`;
    this.stats.countError(errnoForError(err), this.exp);
    if (this.structured || this.streamFirst) {
      // Nothing of a simple reply has left yet, or structured chunks can end with an error.
      this.streamLeft = 0;
      this.io.write(
        this.structured
          ? encodeErrorChunk(errnoForError(err), this.streamCookieHi, this.streamCookieLo, message)
          : encodeSimpleReply(errnoForError(err), this.streamCookieHi, this.streamCookieLo),
      );
      this.finishStream();
      return;
    }
    // A simple reply half sent cannot carry an error: the spec's answer is a hard disconnect.
    this.timed(CMD_READ, this.streamStart);
    this.ended = true;
    this.io.close(`read failed in the middle of a reply: ${message}`, false);
  }

  private onStreamGranted(): void {
    this.streamWaiting = false;
    if (this.ended) {
      this.budget.release(this.account, this.streamWaiter.bytes);
      return;
    }
    this.streamGrantedBytes = this.streamWaiter.bytes;
    this.io.resume();
  }

  /** The large READ is answered: replies held back meanwhile go out, then parsing may go on. */
  private finishStream(): void {
    this.timed(CMD_READ, this.streamStart);
    for (const buf of this.deferred) this.io.write(buf);
    this.deferred.length = 0;
    if (this.disconnecting) this.finishDisconnect();
  }

  private readReplyBytes(length: number): number {
    return (this.structured ? OFFSET_DATA_HEADER_BYTES : SIMPLE_REPLY_HEADER_BYTES) + length;
  }

  // ---- dispatch ---------------------------------------------------------------------------

  /** Everything but READ (admitted by the budget first) and WRITE (after its payload). */
  private dispatch(req: RequestHeader): void {
    const exp = this.exp;
    try {
      switch (req.type) {
        case CMD_FLUSH:
          this.afterFlush(req.type, req.cookieHi, req.cookieLo);
          return;
        case CMD_TRIM:
          exp.trim(req.offset, req.length);
          break;
        case CMD_WRITE_ZEROES:
          // FAST_ZERO needs nothing: zeroing memory is always faster than writing it.
          exp.writeZeroes(req.offset, req.length, (req.flags & CMD_FLAG_NO_HOLE) === 0);
          break;
        case CMD_CACHE:
          // Memory is as cached as it gets.
          break;
        case CMD_BLOCK_STATUS:
          this.blockStatus(req);
          return;
      }
    } catch (err) {
      this.fail(req, err);
      return;
    }
    this.complete(req);
  }

  /** Answers a READ admitted with `cost` bytes of the budget (held until its reply is written). */
  private read(req: RequestHeader, cost: number): void {
    const length = req.length;
    const headerBytes = this.structured ? OFFSET_DATA_HEADER_BYTES : SIMPLE_REPLY_HEADER_BYTES;
    const size = headerBytes + length;
    if (size > REPLY_SLAB_CARVE_BYTES_MAX) {
      this.readLarge(req, size, headerBytes, cost);
      return;
    }
    // Built in place in the slab: the export reads into it, the header goes in front.
    const slab = this.carve(size);
    const at = slab.used;
    try {
      const exp = this.exp;
      if (exp.readInto !== undefined) exp.readInto(req.offset, length, slab.buf, at + headerBytes);
      else exp.read(req.offset, slab.buf.subarray(at + headerBytes, at + size));
    } catch (err) {
      this.budget.release(this.account, cost);
      this.fail(req, err);
      return;
    }
    if (this.structured) {
      writeOffsetDataHeader(slab.buf, at, REPLY_FLAG_DONE, req.cookieHi, req.cookieLo, req.offset, length);
    } else {
      writeSimpleReplyHeader(slab.buf, at, 0, req.cookieHi, req.cookieLo);
    }
    slab.used = at + size;
    this.slabReserved += cost;
    this.stats.bytesRead += length;
    if (!this.inBatch) this.flushReplies();
    else if (slab.used - slab.flushed >= REPLY_PUSH_BYTES) {
      this.flushReplies();
      this.io.push();
    }
    this.timed(CMD_READ, this.requestStart);
  }

  /** A READ too big for the slab (up to READ_PIECE_BYTES): a recycled buffer of its own. */
  private readLarge(req: RequestHeader, size: number, headerBytes: number, cost: number): void {
    const large = takeLargeReplyBuffer(size);
    const buf = large.subarray(0, size);
    try {
      this.exp.read(req.offset, buf.subarray(headerBytes));
    } catch (err) {
      giveLargeReplyBuffer(large);
      this.budget.release(this.account, cost);
      this.fail(req, err);
      return;
    }
    if (this.structured) {
      writeOffsetDataHeader(buf, 0, REPLY_FLAG_DONE, req.cookieHi, req.cookieLo, req.offset, req.length);
    } else {
      writeSimpleReplyHeader(buf, 0, 0, req.cookieHi, req.cookieLo);
    }
    this.stats.bytesRead += req.length;
    this.flushReplies();
    this.io.write(buf, () => giveLargeReplyBuffer(large));
    this.budget.release(this.account, cost);
    this.timed(CMD_READ, this.requestStart);
  }

  private blockStatus(req: RequestHeader): void {
    this.extentCount = 0;
    this.extentTotal = 0;
    this.extentLimit = req.length;
    this.extentCap = (req.flags & CMD_FLAG_REQ_ONE) !== 0 ? 1 : BLOCK_STATUS_EXTENTS_MAX;
    this.extentsStopped = false;
    this.exp.blockStatus(req.offset, req.length, this.emit);
    if (this.extentCount === 0) {
      // At least one descriptor is required; status 0 ("allocated, contents unknown") is always true.
      this.extents[0] = req.length;
      this.extents[1] = 0;
      this.extentCount = 1;
    }
    const n = this.extentCount;
    const payloadBytes = BLOCK_STATUS_FIELDS_BYTES + n * EXTENT_DESCRIPTOR_BYTES;
    const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
    writeStructuredReplyHeader(
      buf,
      0,
      REPLY_FLAG_DONE,
      REPLY_TYPE_BLOCK_STATUS,
      req.cookieHi,
      req.cookieLo,
      payloadBytes,
    );
    let at = STRUCTURED_REPLY_HEADER_BYTES;
    buf.writeUInt32BE(META_CONTEXT_ID_BASE_ALLOCATION, at);
    at += BLOCK_STATUS_FIELDS_BYTES;
    const extents = this.extents;
    for (let i = 0; i < 2 * n; i++, at += 4) buf.writeUInt32BE(extents[i], at);
    this.write(buf);
    this.timed(CMD_BLOCK_STATUS, this.requestStart);
  }

  /**
   * Receives one extent from the export. Extents are clipped to the requested range, empty ones
   * dropped, neighbours with equal flags merged, and at most `extentCap` kept: the export
   * cannot be told to stop, so the rest is ignored.
   */
  private collectExtent(length: number, flags: number): void {
    if (this.extentsStopped || !(length > 0)) return;
    const room = this.extentLimit - this.extentTotal;
    if (room <= 0) {
      this.extentsStopped = true;
      return;
    }
    const len = Math.min(Math.floor(length), room);
    if (len <= 0) return;
    const f = flags & EXTENT_FLAGS_KNOWN;
    const n = this.extentCount;
    if (n > 0 && this.extents[2 * n - 1] === f) {
      this.extents[2 * n - 2] += len; // the sum stays <= extentLimit < 2^32
    } else if (n < this.extentCap) {
      if (2 * n + 2 > this.extents.length) {
        const grown = new Uint32Array(Math.min(2 * this.extents.length, 2 * BLOCK_STATUS_EXTENTS_MAX));
        grown.set(this.extents);
        this.extents = grown;
      }
      this.extents[2 * n] = len;
      this.extents[2 * n + 1] = f;
      this.extentCount = n + 1;
    } else {
      this.extentsStopped = true;
      return;
    }
    this.extentTotal += len;
  }

  // ---- completion -------------------------------------------------------------------------

  /** A mutation succeeded: reply now, or after a flush when FUA asks for durability. */
  private complete(req: RequestHeader): void {
    if ((req.flags & CMD_FLAG_FUA) !== 0 && req.type !== CMD_READ && req.type !== CMD_CACHE) {
      this.afterFlush(req.type, req.cookieHi, req.cookieLo);
      return;
    }
    this.replyOk(req.cookieHi, req.cookieLo);
    this.timed(req.type, this.requestStart);
  }

  private replyOk(cookieHi: number, cookieLo: number): void {
    const slab = this.carve(SIMPLE_REPLY_HEADER_BYTES);
    writeSimpleReplyHeader(slab.buf, slab.used, 0, cookieHi, cookieLo);
    slab.used += SIMPLE_REPLY_HEADER_BYTES;
    if (!this.inBatch) this.flushReplies();
  }

  /** Replies once `export.flush()` settles; the cookie is captured since `req` is reused. */
  private afterFlush(type: number, cookieHi: number, cookieLo: number): void {
    this.asyncInFlight++;
    const start = this.requestStart;
    let flushed: Promise<void>;
    try {
      flushed = this.exp.flush();
    } catch (err) {
      flushed = Promise.reject(err);
    }
    flushed
      .then(
        () => this.asyncDone(type, cookieHi, cookieLo, 0, undefined, start),
        (err: unknown) => this.asyncDone(type, cookieHi, cookieLo, errnoForError(err), err, start),
      )
      .catch((err: unknown) => this.io.internalError(err));
  }

  private asyncDone(
    type: number,
    cookieHi: number,
    cookieLo: number,
    errno: number,
    err: unknown,
    start: number,
  ): void {
    this.asyncInFlight--;
    // A batch of its own: tryResume may answer requests parsed meanwhile.
    const began = !this.inBatch;
    if (began) this.beginBatch(performance.now());
    if (!this.ended) {
      if (errno === 0) this.replyOk(cookieHi, cookieLo);
      else this.replyError(errno, cookieHi, cookieLo, `${commandName(type)}: ${messageForError(err)}`);
      this.timed(type, start);
    }
    if (this.disconnecting) this.finishDisconnect();
    else this.tryResume();
    if (began) this.endBatch();
  }

  private finishDisconnect(): void {
    if (this.asyncInFlight > 0 || this.streamLeft > 0 || this.ended) return;
    // Replies still in the slab leave before the close (which ends the socket).
    this.flushReplies();
    this.ended = true;
    this.io.released();
    this.io.close(this.disconnectReason, false);
  }

  private reject(req: RequestHeader, reason: number): void {
    const errno = rejectionErrno(reason, req, this.ctx);
    this.replyError(errno, req.cookieHi, req.cookieLo, rejectionMessage(reason, req, this.ctx));
    this.timed(req.type, this.requestStart);
  }

  private fail(req: RequestHeader, err: unknown): void {
    const message = `${commandName(req.type)} at ${req.offset}+${req.length}: ${messageForError(err)}`;
    this.replyError(errnoForError(err), req.cookieHi, req.cookieLo, message);
    this.timed(req.type, this.requestStart);
  }

  private replyError(errno: number, cookieHi: number, cookieLo: number, message: string): void {
    this.stats.countError(errno, this.exp);
    this.write(
      this.structured
        ? encodeErrorChunk(errno, cookieHi, cookieLo, message)
        : encodeSimpleReply(errno, cookieHi, cookieLo),
    );
  }

  /**
   * The slab the next small reply (at most REPLY_SLAB_CARVE_BYTES_MAX) is built in, at
   * `slab.used`; the caller advances `used` once the reply is complete. Replies are contiguous
   * (no padding), so everything built since the last flush leaves as one segment. A slab
   * without room is flushed and retired: its bytes are never handed out twice (the socket may
   * still hold them), and it is recycled once all its segments are written.
   */
  private carve(size: number): ReplySlab {
    const slab = this.slab;
    if (slab !== undefined && slab.used + size <= slab.buf.length) return slab;
    if (slab !== undefined) {
      this.flushReplies();
      slab.retired = true;
      if (slab.pending === 0) giveLargeReplyBuffer(slab.buf);
    }
    const fresh = new ReplySlab(takeLargeReplyBuffer(REPLY_SLAB_BYTES));
    this.slab = fresh;
    return fresh;
  }

  /**
   * Writes the replies built in the slab since the last flush, as one segment, and hands their
   * budget reservation over to the socket's queue (which the session charges). Called at the
   * end of every batch and before any reply that does not come from the slab.
   */
  flushReplies(): void {
    const slab = this.slab;
    if (slab === undefined || slab.used === slab.flushed) return;
    const segment = slab.buf.subarray(slab.flushed, slab.used);
    slab.flushed = slab.used;
    if (this.streamLeft > 0) {
      // A large READ is on its way: the segment waits in `deferred` (written without a
      // completion, so this slab is left to the GC rather than recycled).
      slab.pending++;
      this.deferred.push(segment);
    } else {
      slab.pending++;
      this.io.write(segment, slab.written);
    }
    if (this.slabReserved > 0) {
      this.budget.release(this.account, this.slabReserved);
      this.slabReserved = 0;
    }
  }

  /** Any reply not built in the slab: the slab's replies go first, so replies stay in order. */
  private write(buf: Buffer): void {
    this.flushReplies();
    // A large READ is on its way: nothing may come between its pieces.
    if (this.streamLeft > 0) this.deferred.push(buf);
    else this.io.write(buf);
  }

  private afterRequest(): void {
    if (this.parser.isPaused || this.parser.stopped) return;
    const congested = this.io.congested();
    if (congested || this.asyncInFlight >= ASYNC_REQUESTS_MAX) {
      if (congested) this.stats.replyPauses++;
      this.parser.pause();
      this.io.setInputPaused(true);
    }
  }
}
