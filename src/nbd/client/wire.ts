/**
 * Encoders for the client's side of the wire: the handshake's client flags and options, and
 * transmission request headers. Integers are big-endian; 64-bit fields go through wire.ts's
 * writeU64 (offsets stay below 2^53, so no BigInt).
 */
import {
  CLIENT_FLAGS_BYTES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
} from '../protocol/constants.js';
import { writeU64 } from '../protocol/wire.js';

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.allocUnsafe(CLIENT_FLAGS_BYTES);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

/** IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data?: Buffer): Buffer {
  const length = data === undefined ? 0 : data.length;
  const buf = Buffer.allocUnsafe(OPTION_HEADER_BYTES + length);
  buf.writeUInt32BE(IHAVEOPT_HI, 0);
  buf.writeUInt32BE(IHAVEOPT_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(length, 12);
  if (data !== undefined) data.copy(buf, OPTION_HEADER_BYTES);
  return buf;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name length, name, request count, requests. */
export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBytes.length + 2 + 2 * infos.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  let at = 4 + nameBytes.length;
  buf.writeUInt16BE(infos.length, at);
  at += 2;
  for (const info of infos) {
    buf.writeUInt16BE(info, at);
    at += 2;
  }
  return buf;
}

/** NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT data: export name, query count, queries. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const queryBytes = queries.map((q) => Buffer.from(q, 'utf8'));
  let size = 4 + nameBytes.length + 4;
  for (const q of queryBytes) size += 4 + q.length;
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  let at = 4 + nameBytes.length;
  buf.writeUInt32BE(queryBytes.length, at);
  at += 4;
  for (const q of queryBytes) {
    buf.writeUInt32BE(q.length, at);
    q.copy(buf, at + 4);
    at += 4 + q.length;
  }
  return buf;
}

/** One 28-byte request header at `at`. The cookie is two opaque 32-bit halves. */
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

export const REQUEST_HEADER_STRIDE_BYTES = (REQUEST_HEADER_BYTES + 7) & ~7;
