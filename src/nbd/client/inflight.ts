/**
 * The requests one connection has in flight, in fixed arrays indexed by slot: the reply
 * parser matches cookies against it and records each reply's progress in it, the client
 * issues into it and settles out of it. Nothing is allocated per request except the caller's
 * `owner` object; no Map is touched.
 *
 *   cookie = hi: slot, lo: seq[slot]   (seq changes on every acquire, so a late or duplicated
 *                                       reply for a reused slot is an unknown cookie)
 *
 * Invariants:
 *   free[0 .. freeCount) lists the idle slots, each once;  busy[s] === 1 for every other slot
 *   inFlight === capacity - freeCount
 *   a cookie names a live request  <=>  hi < capacity && busy[hi] === 1 && seq[hi] === lo
 *   for a READ: offset[s] <= contigEnd[s] <= offset[s] + length[s]; islands[s] holds sorted,
 *     disjoint, non-adjacent [start, end) pairs, all > contigEnd[s]; covered[s] is the number
 *     of bytes in [offset, contigEnd) plus the islands
 */
import { READ_ISLANDS_MAX } from './limits.js';

/** `Owner`: what the client hangs off a slot (its call); the table only stores and returns it. */
export class InflightTable<Owner extends object = object> {
  readonly capacity: number;
  readonly busy: Uint8Array;
  readonly seq: Uint32Array;
  readonly command: Uint8Array;
  readonly flags: Uint16Array;
  /** The piece's range in the export. */
  readonly offset: Float64Array;
  readonly length: Float64Array;
  /** Value of the client's coarse tick when the request was sent. */
  readonly issuedTick: Float64Array;
  /** Mutating requests (WRITE, TRIM, WRITE_ZEROES) are counted so FLUSH can wait for them. */
  readonly mutating: Uint8Array;
  /** READ destination: byte `offset[s]` of the export lands at `dst[s][dstAt[s]]`. */
  readonly dst: Array<Uint8Array | null>;
  readonly dstAt: Float64Array;
  readonly owner: Array<Owner | null>;

  // ---- reply progress, reset on acquire ----
  readonly covered: Float64Array;
  readonly contigEnd: Float64Array;
  readonly islands: Array<number[] | null>;
  /** First error reported for the request (0: none) and its message / offset (-1: none). */
  readonly errno: Uint32Array;
  readonly message: string[];
  readonly errorOffset: Float64Array;
  /** BLOCK_STATUS: bit i set once the chunk for negotiated context i has arrived. */
  readonly statusSeen: Uint32Array;
  /** BLOCK_STATUS: the context index whose extents are kept, and those extents (length, flags pairs). */
  readonly statusContext: Int8Array;
  readonly extents: Array<Uint32Array | null>;

  private readonly free: Int32Array;
  private freeCount: number;
  private nextSeq = 1;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.busy = new Uint8Array(capacity);
    this.seq = new Uint32Array(capacity);
    this.command = new Uint8Array(capacity);
    this.flags = new Uint16Array(capacity);
    this.offset = new Float64Array(capacity);
    this.length = new Float64Array(capacity);
    this.issuedTick = new Float64Array(capacity);
    this.mutating = new Uint8Array(capacity);
    this.dst = new Array<Uint8Array | null>(capacity).fill(null);
    this.dstAt = new Float64Array(capacity);
    this.owner = new Array<Owner | null>(capacity).fill(null);
    this.covered = new Float64Array(capacity);
    this.contigEnd = new Float64Array(capacity);
    this.islands = new Array<number[] | null>(capacity).fill(null);
    this.errno = new Uint32Array(capacity);
    this.message = new Array<string>(capacity).fill('');
    this.errorOffset = new Float64Array(capacity);
    this.statusSeen = new Uint32Array(capacity);
    this.statusContext = new Int8Array(capacity);
    this.extents = new Array<Uint32Array | null>(capacity).fill(null);
    this.free = new Int32Array(capacity);
    // Hand out low slots first: slot 0 is reused at depth 1, which keeps the arrays hot.
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.freeCount = capacity;
  }

  get inFlight(): number {
    return this.capacity - this.freeCount;
  }

  get hasFree(): boolean {
    return this.freeCount > 0;
  }

  /** Takes an idle slot for a request and resets its reply progress; -1 when all are busy. */
  acquire(
    owner: Owner,
    command: number,
    flags: number,
    offset: number,
    length: number,
    mutating: boolean,
  ): number {
    if (this.freeCount === 0) return -1;
    const s = this.free[--this.freeCount];
    this.busy[s] = 1;
    this.seq[s] = this.nextSeq;
    this.nextSeq = (this.nextSeq + 1) >>> 0 || 1;
    this.command[s] = command;
    this.flags[s] = flags;
    this.offset[s] = offset;
    this.length[s] = length;
    this.mutating[s] = mutating ? 1 : 0;
    this.owner[s] = owner;
    this.dst[s] = null;
    this.dstAt[s] = 0;
    this.covered[s] = 0;
    this.contigEnd[s] = offset;
    this.islands[s] = null;
    this.errno[s] = 0;
    this.message[s] = '';
    this.errorOffset[s] = -1;
    this.statusSeen[s] = 0;
    this.statusContext[s] = -1;
    this.extents[s] = null;
    return s;
  }

  release(s: number): void {
    this.busy[s] = 0;
    this.owner[s] = null;
    this.dst[s] = null;
    this.islands[s] = null;
    this.extents[s] = null;
    this.free[this.freeCount++] = s;
  }

  /** The slot a reply's cookie names, or -1 when no live request has that cookie. */
  find(cookieHi: number, cookieLo: number): number {
    if (cookieHi >= this.capacity || this.busy[cookieHi] === 0 || this.seq[cookieHi] !== cookieLo) return -1;
    return cookieHi;
  }

  /**
   * Records that READ content [start, start + length) arrived. Returns false when it overlaps
   * content already received (a protocol violation) or fragments the reply beyond
   * READ_ISLANDS_MAX out-of-order pieces. The common case, chunks in order, touches two numbers.
   */
  cover(s: number, start: number, length: number): boolean {
    const end = start + length;
    if (start === this.contigEnd[s]) {
      let contig = end;
      const islands = this.islands[s];
      if (islands !== null) {
        // Absorb islands the prefix now reaches; one that starts inside it overlaps.
        while (islands.length > 0 && islands[0] <= contig) {
          if (islands[0] < contig) return false;
          contig = islands[1];
          islands.splice(0, 2);
        }
      }
      this.contigEnd[s] = contig;
    } else if (start < this.contigEnd[s]) {
      return false;
    } else {
      let islands = this.islands[s];
      if (islands === null) islands = this.islands[s] = [];
      // First island ending after `start` (binary search over the pairs): the only one that
      // can overlap or follow; the one before it ends at or before `start`.
      let lo = 0;
      let hi = islands.length >> 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (islands[2 * mid + 1] <= start) lo = mid + 1;
        else hi = mid;
      }
      const i = 2 * lo;
      if (i < islands.length && islands[i] < end) return false;
      const joinsPrev = i > 0 && islands[i - 1] === start;
      const joinsNext = i < islands.length && islands[i] === end;
      if (joinsPrev && joinsNext) {
        islands[i - 1] = islands[i + 1];
        islands.splice(i, 2);
      } else if (joinsPrev) {
        islands[i - 1] = end;
      } else if (joinsNext) {
        islands[i] = start;
      } else {
        if (islands.length >= 2 * READ_ISLANDS_MAX) return false;
        islands.splice(i, 0, start, end);
      }
    }
    this.covered[s] += length;
    return true;
  }
}
