/**
 * Transmission-phase request parser: a state machine fed arbitrary TCP chunks.
 *
 *   HEADER  --28 bytes-->  sink.onHeader(req) decides what follows:
 *             PAYLOAD_NONE     back to HEADER (the sink already dispatched the request)
 *             PAYLOAD_COLLECT  PAYLOAD: req.length bytes handed on as they arrive, in one or more
 *                              sink.onPayloadPiece(req, piece, done) calls, then sink.onPayloadEnd(req)
 *             PAYLOAD_SKIP     SKIP: req.length bytes dropped, then sink.onSkipped(req)
 *             STOP             nothing more is parsed (disconnect or violation)
 *             WAIT             the sink cannot take this request yet (no buffer budget): parsing
 *                              pauses before its payload, and resume() offers the same header
 *                              to onHeader again
 *
 * Payloads are never assembled: each piece is a view of the socket chunk it arrived in, so the
 * sink copies a WRITE's bytes once, straight to where they belong. (Assembling a 1 MiB payload
 * from 64 KiB socket chunks first cost a second copy of every byte, and a buffer to hold it.)
 * Only a header split across chunks is copied, into a 28-byte scratch. The parser allocates
 * nothing per request.
 *
 * Invariants: `req` describes the request being parsed and is valid only during a sink call
 * (it is reused); a piece is valid only during its onPayloadPiece call. Pieces of one payload
 * arrive in order, never empty, and their lengths add up to req.length; onPayloadEnd follows
 * the last one (and is the only call for a zero-length payload). A chunk is only lent to
 * feed(): while paused, unparsed bytes are kept as copies, and parsing continues on resume().
 */
import { REQUEST_HEADER_BYTES } from '../protocol/constants.js';
import { decodeRequestHeader, type RequestHeader } from '../protocol/request.js';

/** The header the sink is handed: one object per connection, reused for every request. */
export type { RequestHeader };

export const PAYLOAD_NONE = 0;
export const PAYLOAD_COLLECT = 1;
export const PAYLOAD_SKIP = 2;
export const STOP = 3;
export const WAIT = 4;
export type HeaderPlan =
  typeof PAYLOAD_NONE | typeof PAYLOAD_COLLECT | typeof PAYLOAD_SKIP | typeof STOP | typeof WAIT;

export interface RequestSink {
  onHeader(req: RequestHeader): HeaderPlan;
  /**
   * The next piece of the payload of `req`, `done` bytes of which came before it. `piece` is a
   * view of a socket chunk, valid only during this call.
   */
  onPayloadPiece(req: RequestHeader, piece: Buffer, done: number): void;
  /** Every byte of the payload of `req` has been handed over. */
  onPayloadEnd(req: RequestHeader): void;
  onSkipped(req: RequestHeader): void;
  /** The byte stream is not NBD requests any more (bad magic); nothing more will be parsed. */
  onViolation(reason: string): void;
}

const STATE_HEADER = 0;
const STATE_PAYLOAD = 1;
const STATE_SKIP = 2;
const STATE_STOPPED = 3;
/** A decoded header the sink answered WAIT: offered again on resume(). */
const STATE_REOFFER = 4;

const EMPTY = Buffer.alloc(0);

export class RequestParser {
  readonly req: RequestHeader = { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
  private state = STATE_HEADER;
  private readonly header = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  private headerFill = 0;
  private payloadFill = 0;
  private skipRemaining = 0;
  private paused = false;
  /** Unparsed bytes (copies) that arrived or were left over while paused, oldest first. */
  private readonly held: Buffer[] = [];
  /** The held copy being parsed by resume(), if any: its rest needs no second copy. */
  private holding: Buffer | undefined;

  constructor(private readonly sink: RequestSink) {}

  get stopped(): boolean {
    return this.state === STATE_STOPPED;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** A WRITE payload (or a skipped one) is partly received: its bytes must keep arriving. */
  get inPayload(): boolean {
    return this.state === STATE_PAYLOAD || this.state === STATE_SKIP;
  }

  /** Part of a request header has arrived (a request is on its way). */
  get inHeader(): boolean {
    return this.headerFill > 0 || this.state === STATE_REOFFER;
  }

  /** Bytes received but not yet parsed because the parser is paused. */
  get heldBytes(): number {
    let total = 0;
    for (const b of this.held) total += b.length;
    return total;
  }

  /** Stops parsing after the current request; takes effect at the next request boundary. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.state === STATE_REOFFER) this.run(EMPTY);
    while (this.held.length > 0 && !this.paused && this.state !== STATE_STOPPED) {
      const chunk = this.held.shift() as Buffer;
      this.holding = chunk;
      this.run(chunk);
      this.holding = undefined;
    }
  }

  /** Stops for good; later chunks are ignored. */
  stop(): void {
    this.state = STATE_STOPPED;
    this.held.length = 0;
  }

  feed(chunk: Buffer): void {
    if (this.state === STATE_STOPPED || chunk.length === 0) return;
    if (this.paused || this.held.length > 0) {
      this.held.push(Buffer.from(chunk));
      return;
    }
    this.run(chunk);
  }

  private run(chunk: Buffer): void {
    const end = chunk.length;
    let pos = 0;
    if (this.state === STATE_REOFFER) {
      this.state = STATE_HEADER;
      pos = this.plan(this.sink.onHeader(this.req), chunk, pos);
      if (pos < 0) return;
    }
    while (pos < end) {
      if (this.paused) {
        this.hold(chunk, pos);
        return;
      }
      if (this.state === STATE_HEADER) {
        let src: Buffer;
        let at: number;
        if (this.headerFill === 0 && end - pos >= REQUEST_HEADER_BYTES) {
          src = chunk;
          at = pos;
          pos += REQUEST_HEADER_BYTES;
        } else {
          const n = Math.min(end - pos, REQUEST_HEADER_BYTES - this.headerFill);
          chunk.copy(this.header, this.headerFill, pos, pos + n);
          this.headerFill += n;
          pos += n;
          if (this.headerFill < REQUEST_HEADER_BYTES) return;
          this.headerFill = 0;
          src = this.header;
          at = 0;
        }
        const req = this.req;
        if (!decodeRequestHeader(src, at, req)) {
          this.state = STATE_STOPPED;
          this.sink.onViolation(`bad request magic 0x${src.readUInt32BE(at).toString(16)}`);
          return;
        }
        pos = this.plan(this.sink.onHeader(req), chunk, pos);
        if (pos < 0) return;
      } else if (this.state === STATE_PAYLOAD) {
        const req = this.req;
        const done = this.payloadFill;
        const n = Math.min(end - pos, req.length - done);
        this.payloadFill += n;
        const last = this.payloadFill === req.length;
        // Back to HEADER before the sink runs, so a sink that stops the parser is obeyed.
        if (last) this.state = STATE_HEADER;
        this.sink.onPayloadPiece(req, pos === 0 && n === end ? chunk : chunk.subarray(pos, pos + n), done);
        pos += n;
        if (!last) return;
        this.sink.onPayloadEnd(req);
      } else if (this.state === STATE_SKIP) {
        const n = Math.min(end - pos, this.skipRemaining);
        this.skipRemaining -= n;
        pos += n;
        if (this.skipRemaining > 0) return;
        this.state = STATE_HEADER;
        this.sink.onSkipped(this.req);
      } else {
        return; // stopped by a sink call
      }
    }
  }

  /**
   * Keeps the unparsed rest of `chunk` (from `pos`) for resume(), ahead of anything held. A copy:
   * the chunk is only lent for the feed() call (the server reads every connection into one
   * buffer). Held chunks are already copies and are kept as they are.
   */
  private hold(chunk: Buffer, pos: number): void {
    const rest = chunk.subarray(pos);
    this.held.unshift(this.holding === chunk ? rest : Buffer.from(rest));
  }

  /**
   * Carries out the sink's plan for the header in `req`, whose payload (if any) starts at `pos`
   * in `chunk`. Returns where parsing goes on, or -1 when it must stop for now.
   */
  private plan(plan: HeaderPlan, chunk: Buffer, pos: number): number {
    const req = this.req;
    if (plan === PAYLOAD_NONE) return pos;
    if (plan === STOP) {
      this.state = STATE_STOPPED;
      return -1;
    }
    if (plan === WAIT) {
      this.state = STATE_REOFFER;
      this.paused = true;
      if (pos < chunk.length) this.hold(chunk, pos);
      return -1;
    }
    if (plan === PAYLOAD_SKIP) {
      this.skipRemaining = req.length;
      if (req.length === 0) this.sink.onSkipped(req);
      else this.state = STATE_SKIP;
      return pos;
    }
    // PAYLOAD_COLLECT
    if (req.length === 0) {
      this.sink.onPayloadEnd(req);
      return pos;
    }
    this.payloadFill = 0;
    this.state = STATE_PAYLOAD;
    return pos;
  }
}
