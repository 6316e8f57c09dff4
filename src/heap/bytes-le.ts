/**
 * Little-endian fields in a Uint8Array, without a DataView: collection nodes are read from
 * borrowed page views (subarrays of a pool segment), and making a DataView per view would
 * allocate on every lookup. These helpers allocate nothing.
 */
const f64 = new Float64Array(1);
const f64Bytes = new Uint8Array(f64.buffer);

export function getU16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

export function putU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
}

export function getU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

export function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

export function getF64(b: Uint8Array, o: number): number {
  for (let i = 0; i < 8; i++) f64Bytes[i] = b[o + i]!;
  return f64[0]!;
}

export function putF64(b: Uint8Array, o: number, v: number): void {
  f64[0] = v;
  for (let i = 0; i < 8; i++) b[o + i] = f64Bytes[i]!;
}

const nativeCopy = Buffer.prototype.copy;

/**
 * Copies src[srcStart, srcStart + length) to dst[dstStart]: a memcpy that, unlike
 * `dst.set(src.subarray(...))`, makes no view object (hot paths must not allocate).
 */
export function copyBytes(
  src: Uint8Array,
  srcStart: number,
  dst: Uint8Array,
  dstStart: number,
  length: number,
): void {
  if (length <= 16) {
    for (let i = 0; i < length; i++) dst[dstStart + i] = src[srcStart + i]!;
    return;
  }
  nativeCopy.call(src, dst, dstStart, srcStart, srcStart + length);
}
