/**
 * 64-bit fields as two big-endian 32-bit halves. Offsets and sizes stay below 2^53 and cookies
 * are opaque, so neither needs BigInt.
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
