/**
 * Transmission replies, each encoder beside its decoder:
 *
 *   simple reply          magic(32) error(32) cookie(64)                         16 bytes
 *   structured chunk      magic(32) flags(16) type(16) cookie(64) length(32)     20 bytes, then:
 *     OFFSET_DATA           offset(64) data
 *     OFFSET_HOLE           offset(64) hole size(32)
 *     BLOCK_STATUS          context id(32) (extent length(32) status flags(32))...
 *     ERROR, ERROR_OFFSET   errno(32) message length(16) message [offset(64)]
 *
 * These run once per reply on the data path, so nothing here allocates but the encode* helpers
 * of rare messages (errors, simple replies without payload). Writers fill a caller's buffer at
 * an offset, so that a header and its payload share one allocation and leave in one socket
 * write; decoders fill a header object the reader reuses for every reply. A reader tells the
 * two headers apart by their magic (SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC) before it
 * decodes, since that decides how many bytes to wait for.
 */
import {
  REPLY_FLAG_DONE,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_OFFSET_DATA,
  SIMPLE_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { loadU16, loadU32, writeU64 } from './integers.js';

/** Fixed fields of each chunk type's payload, before any variable part. */
export const OFFSET_DATA_FIELDS_BYTES = 8; // offset
export const OFFSET_HOLE_FIELDS_BYTES = 12; // offset + size
export const BLOCK_STATUS_FIELDS_BYTES = 4; // context id
export const ERROR_FIELDS_BYTES = 6; // errno + message length
/** A READ's structured reply up to its data: chunk header and offset. */
export const OFFSET_DATA_HEADER_BYTES = STRUCTURED_REPLY_HEADER_BYTES + OFFSET_DATA_FIELDS_BYTES;

// ---- simple replies ---------------------------------------------------------------------------

/** A decoded simple reply header (after its magic); reused for every reply. */
export interface SimpleReplyHeader {
  errno: number;
  cookieHi: number;
  cookieLo: number;
}

export function writeSimpleReplyHeader(
  buf: Buffer,
  at: number,
  errno: number,
  cookieHi: number,
  cookieLo: number,
): void {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(errno, at + 4);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
}

/** Fills `out` from the SIMPLE_REPLY_HEADER_BYTES at `at` (the caller has them and checked the magic). */
export function decodeSimpleReplyHeader(buf: Buffer, at: number, out: SimpleReplyHeader): void {
  out.errno = loadU32(buf, at + 4);
  out.cookieHi = loadU32(buf, at + 8);
  out.cookieLo = loadU32(buf, at + 12);
}

export function encodeSimpleReply(errno: number, cookieHi: number, cookieLo: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleReplyHeader(buf, 0, errno, cookieHi, cookieLo);
  return buf;
}

// ---- structured reply chunks ------------------------------------------------------------------

/** A decoded structured reply chunk header (after its magic); reused for every chunk. */
export interface StructuredReplyHeader {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  /** Payload bytes after the header. */
  length: number;
}

export function writeStructuredReplyHeader(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  buf.writeUInt32BE(length, at + 16);
}

/** Fills `out` from the STRUCTURED_REPLY_HEADER_BYTES at `at` (the caller has them and checked the magic). */
export function decodeStructuredReplyHeader(buf: Buffer, at: number, out: StructuredReplyHeader): void {
  out.flags = loadU16(buf, at + 4);
  out.type = loadU16(buf, at + 6);
  out.cookieHi = loadU32(buf, at + 8);
  out.cookieLo = loadU32(buf, at + 12);
  out.length = loadU32(buf, at + 16);
}

/**
 * The first OFFSET_DATA_HEADER_BYTES of an OFFSET_DATA chunk carrying `dataLength` bytes read
 * at `offset`; the data follows at `at + OFFSET_DATA_HEADER_BYTES`.
 */
export function writeOffsetDataHeader(
  buf: Buffer,
  at: number,
  flags: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  dataLength: number,
): void {
  writeStructuredReplyHeader(
    buf,
    at,
    flags,
    REPLY_TYPE_OFFSET_DATA,
    cookieHi,
    cookieLo,
    OFFSET_DATA_FIELDS_BYTES + dataLength,
  );
  writeU64(buf, at + STRUCTURED_REPLY_HEADER_BYTES, offset);
}

/** A final NBD_REPLY_TYPE_ERROR chunk: errno (32) + message length (16) + message. */
export function encodeErrorChunk(errno: number, cookieHi: number, cookieLo: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8');
  const length = ERROR_FIELDS_BYTES + text.length;
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + length);
  writeStructuredReplyHeader(buf, 0, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookieHi, cookieLo, length);
  buf.writeUInt32BE(errno, STRUCTURED_REPLY_HEADER_BYTES);
  buf.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_BYTES + 4);
  text.copy(buf, STRUCTURED_REPLY_HEADER_BYTES + ERROR_FIELDS_BYTES);
  return buf;
}
