/**
 * Big-endian integer fields.
 *
 * writeU64 / readU64: 64-bit fields as two 32-bit halves. Offsets and sizes stay below 2^53 and
 * cookies are opaque, so neither needs BigInt.
 *
 * loadU16 / loadU32 / loadU64: unchecked reads for the decoders that run once per request or
 * reply (request.ts, reply.ts). Buffer#readUInt32BE validates its offset on every call, which
 * costs more than the rest of decoding a header; these callers have already made sure the bytes
 * are there (an index past the end would read as 0, never throw).
 */

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

export function loadU16(buf: Buffer, at: number): number {
  return (buf[at] << 8) | buf[at + 1];
}

export function loadU32(buf: Buffer, at: number): number {
  return ((buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]) >>> 0;
}

/** As readU64, unchecked. */
export function loadU64(buf: Buffer, at: number): number {
  return loadU32(buf, at) * TWO_POW_32 + loadU32(buf, at + 4);
}
