/**
 * The transmission request header, encoder beside decoder:
 *
 *   magic(32) flags(16) type(16) cookie(64) offset(64) length(32)     REQUEST_HEADER_BYTES
 *
 * Both run once per request on the data path, so neither allocates: the client writes into its
 * header slab, the server decodes into one RequestHeader reused for every request of a
 * connection. The cookie is two opaque 32-bit halves, echoed verbatim in the reply.
 */
import { REQUEST_MAGIC } from './constants.js';
import { loadU16, loadU32, loadU64, writeU64 } from './integers.js';

/** One decoded request header; the server reuses one for every request of a connection. */
export interface RequestHeader {
  flags: number;
  type: number;
  /** The cookie as two opaque 32-bit halves, echoed verbatim in the reply. */
  cookieHi: number;
  cookieLo: number;
  /** Byte offset; at or above 2^53 it is imprecise but still beyond any export. */
  offset: number;
  length: number;
}

/** One request header at `at`. */
export function writeRequestHeader(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  length: number,
): void {
  buf.writeUInt32BE(REQUEST_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHi, at + 8);
  buf.writeUInt32BE(cookieLo, at + 12);
  writeU64(buf, at + 16, offset);
  buf.writeUInt32BE(length, at + 24);
}

/**
 * Decodes the REQUEST_HEADER_BYTES at `at` (the caller has them) into `req`. Returns false,
 * leaving `req` as it was, when the magic is not REQUEST_MAGIC: the stream is not NBD requests.
 */
export function decodeRequestHeader(buf: Buffer, at: number, req: RequestHeader): boolean {
  if (loadU32(buf, at) !== REQUEST_MAGIC) return false;
  req.flags = loadU16(buf, at + 4);
  req.type = loadU16(buf, at + 6);
  req.cookieHi = loadU32(buf, at + 8);
  req.cookieLo = loadU32(buf, at + 12);
  req.offset = loadU64(buf, at + 16);
  req.length = loadU32(buf, at + 24);
  return true;
}
