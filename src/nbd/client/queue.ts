/**
 * A call of the client (read, write, flush, ...) and the bounded FIFO of calls waiting for a
 * slot. A call is issued as one or more pieces (a READ or WRITE larger than the largest piece
 * is split), each piece a slot of the InflightTable; the call settles when its last piece has
 * been answered, failing with the first error any piece met.
 *
 * The queue is a power-of-two ring (undici's fixed-queue idea) that grows by doubling up to the
 * next power of two at or above its bound, so an idle client does not hold a large array:
 *
 *     ring:  [ . . . h x x x x t . . . ]     h = head, t = (head + count) & mask
 *   invariant: the live calls are ring[(head + i) & mask] for 0 <= i < count <= max
 */
import type { MemfabricError } from '../../errors.js';

export const OP_NORMAL = 0;
/** Sent nothing: settles once no mutation issued before it is still in flight. */
export const OP_BARRIER = 1;

export class Op {
  /** Bytes of [offset, offset + length) handed to pieces so far. */
  issued = 0;
  /** Pieces sent and not yet answered. */
  pending = 0;
  /** Still in the queue: more pieces (or, for a FLUSH or barrier, the only one) to issue. */
  queued = false;
  settled = false;
  error: MemfabricError | null = null;
  /** BLOCK_STATUS: extents of the wanted context as (length, flags) pairs. */
  extents: Uint32Array | null = null;
  resolve: (value: never) => void = noop;
  reject: (error: MemfabricError) => void = noop;

  constructor(
    readonly command: number,
    readonly flags: number,
    readonly offset: number,
    readonly length: number,
    /** READ: where data lands; WRITE: the payload (never copied). */
    readonly buffer: Uint8Array | null,
    readonly kind: number = OP_NORMAL,
    /** BLOCK_STATUS: index of the negotiated context whose extents are returned. */
    readonly statusContext: number = -1,
  ) {}
}

function noop(): void {}

const RING_INITIAL = 64;

export class OpQueue {
  private ring: Array<Op | null>;
  private mask: number;
  private head = 0;
  private size = 0;

  constructor(readonly max: number) {
    const initial = Math.min(RING_INITIAL, nextPowerOfTwo(max));
    this.ring = new Array<Op | null>(initial).fill(null);
    this.mask = initial - 1;
  }

  get count(): number {
    return this.size;
  }

  /** Appends `op`; false when `max` calls are already waiting. */
  push(op: Op): boolean {
    if (this.size >= this.max) return false;
    if (this.size === this.ring.length) this.grow();
    this.ring[(this.head + this.size) & this.mask] = op;
    this.size++;
    return true;
  }

  peek(): Op | null {
    return this.size === 0 ? null : this.ring[this.head];
  }

  shift(): Op | null {
    if (this.size === 0) return null;
    const op = this.ring[this.head];
    this.ring[this.head] = null;
    this.head = (this.head + 1) & this.mask;
    this.size--;
    return op;
  }

  /** Removes and returns every waiting call, oldest first. */
  drain(): Op[] {
    const out: Op[] = [];
    for (let op = this.shift(); op !== null; op = this.shift()) out.push(op);
    return out;
  }

  private grow(): void {
    const old = this.ring;
    const next = new Array<Op | null>(old.length * 2).fill(null);
    for (let i = 0; i < this.size; i++) next[i] = old[(this.head + i) & this.mask];
    this.ring = next;
    this.mask = next.length - 1;
    this.head = 0;
  }
}

function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}
