/**
 * Transmission-phase request parser: a state machine fed arbitrary TCP chunks.
 *
 *   HEADER  --28 bytes-->  sink.onHeader(req) decides what follows:
 *             PAYLOAD_NONE     back to HEADER (the sink already dispatched the request)
 *             PAYLOAD_COLLECT  PAYLOAD: req.length bytes, then sink.onPayload(req, bytes)
 *             PAYLOAD_SKIP     SKIP: req.length bytes dropped, then sink.onSkipped(req)
 *             STOP             nothing more is parsed (disconnect or violation)
 *             WAIT             the sink cannot take this request yet (no buffer budget): parsing
 *                              pauses before its payload, and resume() offers the same header
 *                              to onHeader again
 *
 * Only frames split across chunks are copied: a header into a 28-byte scratch, a WRITE payload
 * into a scratch buffer reused between requests (kept up to PAYLOAD_SCRATCH_KEEP_BYTES_MAX; larger
 * ones come from the recycled buffers of reply-buffers.ts and go back after onPayload). A
 * header or payload wholly inside one chunk is handed to the sink as a view of that chunk. The
 * sink bounds every length in onHeader before asking for a payload, so the parser never
 * allocates more than the sink allowed.
 *
 * Invariants: `req` describes the request being parsed and is valid only during a sink call
 * (it is reused); a payload view is valid only during onPayload. While paused, unparsed bytes
 * are kept as views of their chunks (never copied) and parsing continues on resume().
 */
import { REQUEST_HEADER_BYTES } from '../protocol/constants.js';
import { decodeRequestHeader, type RequestHeader } from '../protocol/request.js';
import { PAYLOAD_SCRATCH_KEEP_BYTES_MAX } from './limits.js';
import { giveLargeReplyBuffer, takeLargeReplyBuffer } from './reply-buffers.js';

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
  /** `payload` is a view valid only during this call. */
  onPayload(req: RequestHeader, payload: Buffer): void;
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
  private scratch: Buffer = EMPTY;
  private payload: Buffer = EMPTY;
  /** The recycled buffer behind a large split payload, given back once the sink has it. */
  private large: Buffer | undefined;
  private payloadFill = 0;
  private skipRemaining = 0;
  private paused = false;
  /** Unparsed views of chunks that arrived or were left over while paused, oldest first. */
  private readonly held: Buffer[] = [];

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
      this.run(this.held.shift() as Buffer);
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
      this.held.push(chunk);
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
        this.held.unshift(chunk.subarray(pos));
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
        const want = this.req.length;
        const n = Math.min(end - pos, want - this.payloadFill);
        chunk.copy(this.payload, this.payloadFill, pos, pos + n);
        this.payloadFill += n;
        pos += n;
        if (this.payloadFill < want) return;
        const payload = this.payload;
        const large = this.large;
        this.payload = EMPTY;
        this.large = undefined;
        this.state = STATE_HEADER;
        this.sink.onPayload(this.req, payload);
        if (large !== undefined) giveLargeReplyBuffer(large);
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
      if (pos < chunk.length) this.held.unshift(chunk.subarray(pos));
      return -1;
    }
    if (plan === PAYLOAD_SKIP) {
      this.skipRemaining = req.length;
      if (req.length === 0) this.sink.onSkipped(req);
      else this.state = STATE_SKIP;
      return pos;
    }
    // PAYLOAD_COLLECT
    if (chunk.length - pos >= req.length) {
      const payload = req.length === 0 ? EMPTY : chunk.subarray(pos, pos + req.length);
      this.sink.onPayload(req, payload);
      return pos + req.length;
    }
    this.payload = this.scratchFor(req.length);
    this.payloadFill = 0;
    this.state = STATE_PAYLOAD;
    return pos;
  }

  /** A buffer of exactly `length` bytes for a split payload, reusing the scratch when small. */
  private scratchFor(length: number): Buffer {
    if (length > PAYLOAD_SCRATCH_KEEP_BYTES_MAX) {
      // Recycled like large replies: a fresh multi-MiB buffer per WRITE would only be returned
      // to the system whenever the GC gets round to it, so RSS would run ahead of the budget.
      this.large = takeLargeReplyBuffer(length);
      return this.large.subarray(0, length);
    }
    if (this.scratch.length < length) {
      // Grow in 64 KiB steps so a mix of request sizes settles on one buffer.
      const size = Math.min(PAYLOAD_SCRATCH_KEEP_BYTES_MAX, Math.ceil(length / 65536) * 65536);
      this.scratch = Buffer.allocUnsafe(size);
    }
    return this.scratch.subarray(0, length);
  }
}
