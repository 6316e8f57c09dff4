/**
 * Transmission-phase reply parser of the client: a state machine fed arbitrary TCP chunks.
 *
 *   HEADER --4 bytes: magic--> simple (16 bytes) or structured chunk header (20 bytes)
 *     simple, READ, errno 0, no structured replies   SIMPLE_DATA: length bytes into the read's buffer
 *     simple, anything else                          the request is done
 *     chunk NONE                                     (DONE) the request is done
 *     chunk OFFSET_DATA   FIXED (8: offset)   then DATA: length - 8 bytes into the read's buffer
 *     chunk OFFSET_HOLE   FIXED (12: offset, size)   zeros into the read's buffer
 *     chunk BLOCK_STATUS  FIXED (4: context id) then EXTENTS: (length, flags) descriptors
 *     chunk ERROR, ERROR_OFFSET, unknown error type  FIXED (whole payload): errno, message, offset
 *   after a chunk: HEADER again, or the request is done when the chunk carries REPLY_FLAG_DONE.
 *
 * Copies: read data goes straight from the socket chunk into the caller's buffer (the only
 * copy a byte makes); headers and small fixed payloads are read in place when the chunk holds
 * them whole, and gathered in one reused scratch buffer only when a chunk boundary splits them.
 *
 * Every length a server sends is checked before it is used: a READ's content must lie inside
 * the request and may not overlap earlier content; a successful READ must cover every byte;
 * a BLOCK_STATUS chunk must name a negotiated context, once, with 1..2^20 non-empty extents
 * (exactly one with REQ_ONE); error chunks are at most ERROR_CHUNK_BYTES_MAX with a message that
 * fits. Anything else - bad magic, an unknown cookie, a chunk type the request cannot have,
 * a structured chunk without structured replies - is a violation: the parser stops for good
 * and tells its sink, which closes the connection.
 */
import {
  BLOCK_STATUS_EXTENTS_MAX,
  CMD_BLOCK_STATUS,
  CMD_FLAG_REQ_ONE,
  CMD_READ,
  EINVAL,
  EXTENT_DESCRIPTOR_BYTES,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_ERROR_OFFSET,
  REPLY_TYPE_NONE,
  REPLY_TYPE_OFFSET_DATA,
  REPLY_TYPE_OFFSET_HOLE,
  SIMPLE_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
} from '../protocol/constants.js';
import { ERROR_CHUNK_BYTES_MAX, META_CONTEXTS_MAX } from './limits.js';
import { commandLabel } from './errors.js';
import type { InflightTable } from './inflight.js';
import {
  BLOCK_STATUS_FIELDS_BYTES,
  decodeSimpleReplyHeader,
  decodeStructuredReplyHeader,
  ERROR_FIELDS_BYTES,
  OFFSET_DATA_FIELDS_BYTES,
  OFFSET_HOLE_FIELDS_BYTES,
  type SimpleReplyHeader,
  type StructuredReplyHeader,
} from '../protocol/reply.js';
import { readU64 } from '../protocol/integers.js';

export interface ReplySink {
  /** The reply to `slot` is complete; the table holds its outcome (errno 0: success). */
  replyDone(slot: number): void;
  /** The stream broke the protocol; the parser has stopped and parses nothing more. */
  violation(reason: string): void;
}

export interface ReplyParserOptions {
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  readonly structured: boolean;
  /** Ids of the metadata contexts selected with NBD_OPT_SET_META_CONTEXT, in negotiation order. */
  readonly contextIds: readonly number[];
}

const STATE_HEADER = 0;
const STATE_SIMPLE_DATA = 1;
const STATE_FIXED = 2;
const STATE_DATA = 3;
const STATE_EXTENTS = 4;
const STATE_STOPPED = 5;

const MAGIC_BYTES = 4;
const ERROR_TYPE_BIT = 0x8000;

export class ReplyParser {
  private state = STATE_HEADER;
  /** Gathers headers and fixed payloads split across chunks. */
  private readonly scratch = Buffer.allocUnsafe(ERROR_CHUNK_BYTES_MAX);
  private fill = 0;
  /** Bytes the scratch must hold before the current header / fixed payload is complete. */
  private need = 0;
  /** The last decoded headers, reused for every reply. */
  private readonly simple: SimpleReplyHeader = { errno: 0, cookieHi: 0, cookieLo: 0 };
  private readonly chunk: StructuredReplyHeader = { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, length: 0 };

  // The reply being parsed.
  private slot = -1;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  private dataDst: Uint8Array | null = null;
  private dataAt = 0;
  private remaining = 0;
  private extentsLeft = 0;
  private extentsOut: Uint32Array | null = null;
  private extentsAt = 0;

  private readonly structured: boolean;
  private readonly contextIds: readonly number[];
  /** Bits of every negotiated context: a successful BLOCK_STATUS has a chunk for each. */
  private readonly allContexts: number;

  constructor(
    private readonly table: InflightTable,
    private readonly sink: ReplySink,
    options: ReplyParserOptions,
  ) {
    this.structured = options.structured;
    if (options.contextIds.length > META_CONTEXTS_MAX) {
      throw new RangeError(`at most ${META_CONTEXTS_MAX} metadata contexts`);
    }
    this.contextIds = options.contextIds;
    this.allContexts = options.contextIds.length === 32 ? 0xffffffff : (1 << options.contextIds.length) - 1;
  }

  get stopped(): boolean {
    return this.state === STATE_STOPPED;
  }

  /** Parses nothing more (the connection is closing). */
  stop(): void {
    this.state = STATE_STOPPED;
  }

  feed(chunk: Buffer): void {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      switch (this.state) {
        case STATE_HEADER:
          pos = this.header(chunk, pos);
          break;
        case STATE_SIMPLE_DATA:
        case STATE_DATA:
          pos = this.data(chunk, pos);
          break;
        case STATE_FIXED:
          pos = this.fixed(chunk, pos);
          break;
        case STATE_EXTENTS:
          pos = this.extents(chunk, pos);
          break;
        default:
          return;
      }
    }
  }

  // ---- headers ------------------------------------------------------------------------------

  private header(chunk: Buffer, pos: number): number {
    const avail = chunk.length - pos;
    if (this.fill === 0 && avail >= SIMPLE_REPLY_HEADER_BYTES) {
      // Fast path: the header is read where it lies.
      const magic = chunk.readUInt32BE(pos);
      if (magic === SIMPLE_REPLY_MAGIC) {
        this.simpleHeader(chunk, pos);
        return pos + SIMPLE_REPLY_HEADER_BYTES;
      }
      if (magic === STRUCTURED_REPLY_MAGIC && avail >= STRUCTURED_REPLY_HEADER_BYTES) {
        this.chunkHeader(chunk, pos);
        return pos + STRUCTURED_REPLY_HEADER_BYTES;
      }
    }
    const scratch = this.scratch;
    if (this.fill < MAGIC_BYTES) {
      const n = Math.min(avail, MAGIC_BYTES - this.fill);
      chunk.copy(scratch, this.fill, pos, pos + n);
      this.fill += n;
      pos += n;
      if (this.fill < MAGIC_BYTES) return pos;
      const magic = scratch.readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) this.need = SIMPLE_REPLY_HEADER_BYTES;
      else if (magic === STRUCTURED_REPLY_MAGIC) this.need = STRUCTURED_REPLY_HEADER_BYTES;
      else {
        this.fail(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`);
        return chunk.length;
      }
    }
    const n = Math.min(chunk.length - pos, this.need - this.fill);
    chunk.copy(scratch, this.fill, pos, pos + n);
    this.fill += n;
    pos += n;
    if (this.fill < this.need) return pos;
    this.fill = 0;
    if (this.need === SIMPLE_REPLY_HEADER_BYTES) this.simpleHeader(scratch, 0);
    else this.chunkHeader(scratch, 0);
    return pos;
  }

  private simpleHeader(buf: Buffer, at: number): void {
    const header = this.simple;
    decodeSimpleReplyHeader(buf, at, header);
    const errno = header.errno;
    const s = this.table.find(header.cookieHi, header.cookieLo);
    if (s < 0) {
      this.fail('simple reply for a cookie that is not in flight');
      return;
    }
    const table = this.table;
    const command = table.command[s];
    if (errno !== 0) {
      // No payload follows an error, whatever the command (also a READ with structured replies:
      // unambiguous, so accepted although the spec asks for an error chunk).
      table.errno[s] = errno;
      this.complete(s);
      return;
    }
    if (command === CMD_READ) {
      if (this.structured) {
        this.fail('successful simple reply to a read after structured replies were negotiated');
        return;
      }
      table.cover(s, table.offset[s], table.length[s]);
      this.slot = s;
      this.dataDst = table.dst[s];
      this.dataAt = table.dstAt[s];
      this.remaining = table.length[s];
      this.state = STATE_SIMPLE_DATA;
      if (this.remaining === 0) this.complete(s);
      return;
    }
    if (command === CMD_BLOCK_STATUS) {
      this.fail('successful simple reply to a block status request (no extents)');
      return;
    }
    this.complete(s);
  }

  private chunkHeader(buf: Buffer, at: number): void {
    if (!this.structured) {
      this.fail('structured reply chunk, but structured replies were not negotiated');
      return;
    }
    const header = this.chunk;
    decodeStructuredReplyHeader(buf, at, header);
    const { flags, type, length } = header;
    const s = this.table.find(header.cookieHi, header.cookieLo);
    if (s < 0) {
      this.fail(`reply chunk (type ${type}) for a cookie that is not in flight`);
      return;
    }
    const table = this.table;
    const command = table.command[s];
    this.slot = s;
    this.chunkFlags = flags;
    this.chunkType = type;
    this.chunkLength = length;
    switch (type) {
      case REPLY_TYPE_NONE:
        if (length !== 0) this.fail(`NONE chunk with a payload of ${length} bytes`);
        else if ((flags & REPLY_FLAG_DONE) === 0) this.fail('NONE chunk without the DONE flag');
        else this.complete(s);
        return;
      case REPLY_TYPE_OFFSET_DATA:
        if (command !== CMD_READ) this.fail(`OFFSET_DATA chunk in reply to ${commandLabel(command)}`);
        else if (length <= OFFSET_DATA_FIELDS_BYTES || length - OFFSET_DATA_FIELDS_BYTES > table.length[s]) {
          this.fail(`OFFSET_DATA chunk of ${length} bytes for a read of ${table.length[s]}`);
        } else this.expectFixed(OFFSET_DATA_FIELDS_BYTES);
        return;
      case REPLY_TYPE_OFFSET_HOLE:
        if (command !== CMD_READ) this.fail(`OFFSET_HOLE chunk in reply to ${commandLabel(command)}`);
        else if (length !== OFFSET_HOLE_FIELDS_BYTES) {
          this.fail(`OFFSET_HOLE chunk of ${length} bytes (must be ${OFFSET_HOLE_FIELDS_BYTES})`);
        } else this.expectFixed(OFFSET_HOLE_FIELDS_BYTES);
        return;
      case REPLY_TYPE_BLOCK_STATUS: {
        const count = (length - BLOCK_STATUS_FIELDS_BYTES) / EXTENT_DESCRIPTOR_BYTES;
        if (command !== CMD_BLOCK_STATUS) {
          this.fail(`BLOCK_STATUS chunk in reply to ${commandLabel(command)}`);
        } else if (
          length < BLOCK_STATUS_FIELDS_BYTES + EXTENT_DESCRIPTOR_BYTES ||
          (length - BLOCK_STATUS_FIELDS_BYTES) % EXTENT_DESCRIPTOR_BYTES !== 0
        ) {
          this.fail(`BLOCK_STATUS chunk of ${length} bytes (must be 4 + a positive multiple of 8)`);
        } else if (count > BLOCK_STATUS_EXTENTS_MAX) {
          this.fail(`BLOCK_STATUS chunk with ${count} extents (at most ${BLOCK_STATUS_EXTENTS_MAX})`);
        } else if ((table.flags[s] & CMD_FLAG_REQ_ONE) !== 0 && count !== 1) {
          this.fail(`BLOCK_STATUS chunk with ${count} extents in reply to REQ_ONE`);
        } else {
          this.extentsLeft = count;
          this.expectFixed(BLOCK_STATUS_FIELDS_BYTES);
        }
        return;
      }
      default:
        if ((type & ERROR_TYPE_BIT) === 0) this.fail(`unknown reply chunk type ${type}`);
        else if (length < ERROR_FIELDS_BYTES || length > ERROR_CHUNK_BYTES_MAX) {
          this.fail(`error chunk of ${length} bytes (6 to ${ERROR_CHUNK_BYTES_MAX})`);
        } else this.expectFixed(length);
        return;
    }
  }

  // ---- payloads -----------------------------------------------------------------------------

  private expectFixed(bytes: number): void {
    this.need = bytes;
    this.fill = 0;
    this.state = STATE_FIXED;
  }

  private fixed(chunk: Buffer, pos: number): number {
    const avail = chunk.length - pos;
    if (this.fill === 0 && avail >= this.need) {
      const need = this.need;
      this.fixedPayload(chunk, pos);
      return pos + need;
    }
    const n = Math.min(avail, this.need - this.fill);
    chunk.copy(this.scratch, this.fill, pos, pos + n);
    this.fill += n;
    pos += n;
    if (this.fill < this.need) return pos;
    this.fill = 0;
    this.fixedPayload(this.scratch, 0);
    return pos;
  }

  private fixedPayload(buf: Buffer, at: number): void {
    const s = this.slot;
    const table = this.table;
    const type = this.chunkType;
    if (type === REPLY_TYPE_OFFSET_DATA || type === REPLY_TYPE_OFFSET_HOLE) {
      const offset = readU64(buf, at);
      const length =
        type === REPLY_TYPE_OFFSET_DATA
          ? this.chunkLength - OFFSET_DATA_FIELDS_BYTES
          : buf.readUInt32BE(at + 8);
      if (length === 0) {
        this.fail('OFFSET_HOLE chunk of zero bytes');
        return;
      }
      const start = table.offset[s];
      if (offset < start || offset + length > start + table.length[s]) {
        this.fail(`content chunk ${offset}+${length} outside the read ${start}+${table.length[s]}`);
        return;
      }
      if (!table.cover(s, offset, length)) {
        this.fail(`content chunk ${offset}+${length} overlaps earlier content (or too fragmented)`);
        return;
      }
      const dst = table.dst[s];
      const dstAt = table.dstAt[s] + (offset - start);
      if (type === REPLY_TYPE_OFFSET_HOLE) {
        if (dst !== null) dst.fill(0, dstAt, dstAt + length);
        this.chunkDone();
        return;
      }
      this.dataDst = dst;
      this.dataAt = dstAt;
      this.remaining = length;
      this.state = STATE_DATA;
      return;
    }
    if (type === REPLY_TYPE_BLOCK_STATUS) {
      const id = buf.readUInt32BE(at);
      const index = this.contextIds.indexOf(id);
      if (index < 0) {
        this.fail(`BLOCK_STATUS chunk for metadata context ${id}, which was not negotiated`);
        return;
      }
      const bit = 1 << index;
      if ((table.statusSeen[s] & bit) !== 0) {
        this.fail(`two BLOCK_STATUS chunks for metadata context ${id} in one reply`);
        return;
      }
      table.statusSeen[s] |= bit;
      if (index === table.statusContext[s]) {
        this.extentsOut = table.extents[s] = new Uint32Array(2 * this.extentsLeft);
      } else {
        this.extentsOut = null;
      }
      this.extentsAt = 0;
      this.state = STATE_EXTENTS;
      return;
    }
    this.errorPayload(buf, at);
  }

  private errorPayload(buf: Buffer, at: number): void {
    const s = this.slot;
    const table = this.table;
    const type = this.chunkType;
    const length = this.chunkLength;
    let errno = buf.readUInt32BE(at);
    const messageLength = buf.readUInt16BE(at + 4);
    let errorOffset = -1;
    if (type === REPLY_TYPE_ERROR) {
      if (length !== ERROR_FIELDS_BYTES + messageLength) {
        this.fail(`ERROR chunk of ${length} bytes with a ${messageLength}-byte message`);
        return;
      }
    } else if (type === REPLY_TYPE_ERROR_OFFSET) {
      if (length !== ERROR_FIELDS_BYTES + messageLength + 8) {
        this.fail(`ERROR_OFFSET chunk of ${length} bytes with a ${messageLength}-byte message`);
        return;
      }
      errorOffset = readU64(buf, at + ERROR_FIELDS_BYTES + messageLength);
      const start = table.offset[s];
      if (errorOffset < start || errorOffset >= start + Math.max(1, table.length[s])) {
        this.fail(`ERROR_OFFSET ${errorOffset} outside the request ${start}+${table.length[s]}`);
        return;
      }
    } else if (ERROR_FIELDS_BYTES + messageLength > length) {
      // An unknown error type: the reply has failed, and the stream goes on if the message fits.
      this.fail(`error chunk (type ${type}) with a message longer than the chunk`);
      return;
    }
    if (errno === 0) {
      if (type === REPLY_TYPE_ERROR || type === REPLY_TYPE_ERROR_OFFSET) {
        this.fail('error chunk with errno 0');
        return;
      }
      errno = EINVAL;
    }
    if (table.errno[s] === 0) {
      table.errno[s] = errno;
      table.message[s] = buf.toString(
        'utf8',
        at + ERROR_FIELDS_BYTES,
        at + ERROR_FIELDS_BYTES + messageLength,
      );
      table.errorOffset[s] = errorOffset;
    }
    this.chunkDone();
  }

  private data(chunk: Buffer, pos: number): number {
    const n = Math.min(chunk.length - pos, this.remaining);
    if (this.dataDst !== null) chunk.copy(this.dataDst, this.dataAt, pos, pos + n);
    this.dataAt += n;
    this.remaining -= n;
    pos += n;
    if (this.remaining === 0) {
      this.dataDst = null;
      if (this.state === STATE_SIMPLE_DATA) this.complete(this.slot);
      else this.chunkDone();
    }
    return pos;
  }

  private extents(chunk: Buffer, pos: number): number {
    const end = chunk.length;
    const s = this.slot;
    const reqOne = (this.table.flags[s] & CMD_FLAG_REQ_ONE) !== 0;
    const requested = this.table.length[s];
    const out = this.extentsOut;
    while (this.extentsLeft > 0 && pos < end) {
      let length: number;
      let flags: number;
      if (this.fill === 0 && end - pos >= EXTENT_DESCRIPTOR_BYTES) {
        length = chunk.readUInt32BE(pos);
        flags = chunk.readUInt32BE(pos + 4);
        pos += EXTENT_DESCRIPTOR_BYTES;
      } else {
        const n = Math.min(end - pos, EXTENT_DESCRIPTOR_BYTES - this.fill);
        chunk.copy(this.scratch, this.fill, pos, pos + n);
        this.fill += n;
        pos += n;
        if (this.fill < EXTENT_DESCRIPTOR_BYTES) return pos;
        this.fill = 0;
        length = this.scratch.readUInt32BE(0);
        flags = this.scratch.readUInt32BE(4);
      }
      if (length === 0) {
        this.fail('block status extent of length 0');
        return end;
      }
      if (reqOne && length > requested) {
        this.fail(`REQ_ONE block status extent of ${length} bytes for a request of ${requested}`);
        return end;
      }
      if (out !== null) {
        out[this.extentsAt++] = length;
        out[this.extentsAt++] = flags;
      }
      this.extentsLeft--;
    }
    if (this.extentsLeft === 0) {
      this.extentsOut = null;
      this.chunkDone();
    }
    return pos;
  }

  // ---- completion ---------------------------------------------------------------------------

  private chunkDone(): void {
    if ((this.chunkFlags & REPLY_FLAG_DONE) !== 0) this.complete(this.slot);
    else this.state = STATE_HEADER;
  }

  private complete(s: number): void {
    const table = this.table;
    if (table.errno[s] === 0) {
      const command = table.command[s];
      if (command === CMD_READ && table.covered[s] !== table.length[s]) {
        this.fail(`read reply claims success with ${table.covered[s]} of ${table.length[s]} bytes`);
        return;
      }
      if (command === CMD_BLOCK_STATUS && table.statusSeen[s] !== this.allContexts >>> 0) {
        this.fail('block status reply claims success without a chunk for every metadata context');
        return;
      }
    }
    this.state = STATE_HEADER;
    this.slot = -1;
    this.sink.replyDone(s);
  }

  private fail(reason: string): void {
    this.state = STATE_STOPPED;
    this.sink.violation(reason);
  }
}
