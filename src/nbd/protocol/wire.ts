/**
 * Encoders for the server's side of the wire: option replies (handshake) and reply headers
 * (transmission). Each `write*` fills a caller-provided buffer at an offset so that a reply
 * header and its payload share one allocation and leave in one socket write; each `encode*`
 * allocates exactly the bytes of one small, rare message.
 *
 * All integers are big-endian. 64-bit fields are written as two 32-bit halves: offsets fit in
 * 2^53 and cookies are opaque, so neither needs BigInt.
 */
import {
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  REPLY_FLAG_DONE,
  REPLY_TYPE_ERROR,
  SIMPLE_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';

const TWO_POW_32 = 0x1_0000_0000;

/** Writes an unsigned integer below 2^53 as 64 bits. */
export function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/**
 * Reads 64 bits as a number. Values at or above 2^53 lose precision but stay at or above
 * 2^53, which is larger than any export, so range checks on the result remain correct.
 */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_POW_32 + buf.readUInt32BE(at + 4);
}

// ---------------------------------------------------------------------------------------------
// Handshake.

/** One option reply: header plus `data` (a Buffer, or a string sent as UTF-8). */
export function encodeOptionReply(option: number, replyType: number, data?: Buffer | string): Buffer {
  const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const length = payload === undefined ? 0 : payload.length;
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + length);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(replyType >>> 0, 12);
  buf.writeUInt32BE(length, 16);
  if (payload !== undefined) payload.copy(buf, OPTION_REPLY_HEADER_BYTES);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Transmission.

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

export function encodeSimpleReply(errno: number, cookieHi: number, cookieLo: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleReplyHeader(buf, 0, errno, cookieHi, cookieLo);
  return buf;
}

/** A final NBD_REPLY_TYPE_ERROR chunk: errno (32) + message length (16) + message. */
export function encodeErrorChunk(errno: number, cookieHi: number, cookieLo: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8');
  const length = 6 + text.length;
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + length);
  writeStructuredReplyHeader(buf, 0, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookieHi, cookieLo, length);
  buf.writeUInt32BE(errno, STRUCTURED_REPLY_HEADER_BYTES);
  buf.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_BYTES + 4);
  text.copy(buf, STRUCTURED_REPLY_HEADER_BYTES + 6);
  return buf;
}
