/**
 * Recycled buffers for large replies (READs too big to carve from a connection's slab).
 *
 * A fresh multi-MiB allocation per READ is paid for in page faults on every page it touches
 * (malloc hands big blocks back to the kernel when they are freed): measured, that was most
 * of the cost of 1 MiB sequential reads. So a large reply buffer goes back to a free list once
 * the socket has written it, and the next large READ reuses it.
 *
 * Buffers have power-of-two sizes from LARGE_REPLY_BYTES_MIN up; one free list per size.
 * Process-wide, at most LARGE_REPLY_KEPT_BYTES_MAX bytes are kept free; beyond that a returned
 * buffer is left to the GC. Invariant: keptBytes == Σ length of the buffers in `free`.
 */
const MiB = 1024 * 1024;

/** The smallest large reply buffer (the slab carves anything up to 64 KiB). */
export const LARGE_REPLY_BYTES_MIN = 128 * 1024;
/** Free large reply buffers kept for reuse, across all connections. */
export const LARGE_REPLY_KEPT_BYTES_MAX = 64 * MiB;

const free: Buffer[][] = [];
let keptBytes = 0;

function sizeClass(size: number): number {
  return Math.max(17, Math.ceil(Math.log2(size)));
}

/** A buffer of at least `size` bytes (its length is a power of two); give it back when written. */
export function takeLargeReplyBuffer(size: number): Buffer {
  const cls = sizeClass(size);
  const buf = free[cls]?.pop();
  if (buf === undefined) return Buffer.allocUnsafe(2 ** cls);
  keptBytes -= buf.length;
  return buf;
}

/** Returns a buffer from takeLargeReplyBuffer once nothing refers to its bytes any more. */
export function giveLargeReplyBuffer(buf: Buffer): void {
  if (keptBytes + buf.length > LARGE_REPLY_KEPT_BYTES_MAX) return;
  (free[sizeClass(buf.length)] ??= []).push(buf);
  keptBytes += buf.length;
}
