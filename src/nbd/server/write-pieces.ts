/**
 * Puts a WRITE's payload in place as it arrives in socket-sized pieces, a page at a time where
 * it can. Socket chunks split the payload at arbitrary bytes (the 28-byte request headers alone
 * shift every boundary), and writing each piece as it is would leave a page written in two
 * halves at every boundary: the first half of a page that is out in a page store, or shared
 * copy-on-write, then costs a fetch or a copy of the whole page only to be overwritten by the
 * second half a moment later. So the tail of a piece that ends inside a page is carried (at
 * most a page, the only bytes copied twice) until the next piece completes the page, and
 * every other byte goes straight from the socket chunk to its frame.
 *
 * A page is only ever written partly when the request itself covers part of it (its first and
 * last page). Pieces must come in order and add up to the length given to begin().
 */
export type WriteAt = (offset: number, src: Uint8Array) => void;

export class PageAlignedPieces {
  private readonly carry: Buffer;
  /** Where the carried bytes belong, and how many there are (0: none). */
  private carryAt = 0;
  private carryFill = 0;
  /** The offset of the next piece's first byte, and the end of the write. */
  private next = 0;
  private end = 0;

  constructor(
    private readonly pageSize: number,
    private readonly writeAt: WriteAt,
  ) {
    this.carry = Buffer.allocUnsafe(pageSize);
  }

  /** A new write of `length` bytes at `offset`; drops whatever an abandoned one carried. */
  begin(offset: number, length: number): void {
    this.next = offset;
    this.end = offset + length;
    this.carryFill = 0;
  }

  /** The write's next bytes. Everything up to the last page boundary they reach is written. */
  push(piece: Uint8Array): void {
    const pageSize = this.pageSize;
    const at = this.next;
    const stop = at + piece.length;
    this.next = stop;
    let pos = 0;
    if (this.carryFill > 0) {
      const carryEnd = Math.min(this.end, (Math.floor(this.carryAt / pageSize) + 1) * pageSize);
      const n = Math.min(piece.length, carryEnd - (this.carryAt + this.carryFill));
      this.carry.set(n === piece.length ? piece : piece.subarray(0, n), this.carryFill);
      this.carryFill += n;
      pos = n;
      if (this.carryAt + this.carryFill < carryEnd) return;
      const fill = this.carryFill;
      this.carryFill = 0;
      this.writeAt(this.carryAt, this.carry.subarray(0, fill));
      if (pos === piece.length) return;
    }
    const start = at + pos;
    // The write's last piece goes out whole; any other stops at its last page boundary.
    const cut = stop === this.end ? stop : Math.floor(stop / pageSize) * pageSize;
    if (cut > start) this.writeAt(start, pos === 0 && cut === stop ? piece : piece.subarray(pos, cut - at));
    const carryFrom = Math.max(start, cut);
    if (carryFrom < stop) {
      this.carry.set(piece.subarray(carryFrom - at), 0);
      this.carryAt = carryFrom;
      this.carryFill = stop - carryFrom;
    }
  }
}
