/**
 * Content index: an open-addressing hash table from a page-content hash (a 52-bit number) to
 * the first frame of a chain of frames with that hash. The chain itself lives in the merger's
 * per-frame `next` array, so the table holds two numbers per distinct hash and no objects.
 *
 * Written by hand rather than using a Map because a Map boxes every 52-bit key as a heap
 * number (an object per merged page), which is exactly what the memory core must avoid.
 *
 * Linear probing; deletion by backward shift (no tombstones), so a lookup stops at the first
 * empty slot. Invariants:
 *   heads[s] == 0  <=>  slot s is empty        (frame 0 is never a real frame)
 *   count <= capacity * LOAD_MAX
 *   every key sits between its home slot and the first empty slot after it
 */

const LOAD_MAX = 0.6;
const INITIAL_SLOTS = 1024;

export class ContentIndex {
  private keys = new Float64Array(INITIAL_SLOTS);
  private heads = new Int32Array(INITIAL_SLOTS);
  private mask = INITIAL_SLOTS - 1;
  private count = 0;

  get size(): number {
    return this.count;
  }

  get byteLength(): number {
    return this.keys.byteLength + this.heads.byteLength;
  }

  /** The chain head for `key`, or 0. */
  get(key: number): number {
    const mask = this.mask;
    for (let slot = (key >>> 0) & mask; ; slot = (slot + 1) & mask) {
      const head = this.heads[slot]!;
      if (head === 0) return 0;
      if (this.keys[slot] === key) return head;
    }
  }

  /** Sets the chain head for `key` (inserting the key if new). `head` must not be 0. */
  set(key: number, head: number): void {
    if (this.count + 1 > this.heads.length * LOAD_MAX) this.resize(this.heads.length * 2);
    const mask = this.mask;
    for (let slot = (key >>> 0) & mask; ; slot = (slot + 1) & mask) {
      const current = this.heads[slot]!;
      if (current === 0) {
        this.keys[slot] = key;
        this.heads[slot] = head;
        this.count++;
        return;
      }
      if (this.keys[slot] === key) {
        this.heads[slot] = head;
        return;
      }
    }
  }

  /** Removes `key` if present. */
  delete(key: number): void {
    const mask = this.mask;
    let slot = (key >>> 0) & mask;
    for (; ; slot = (slot + 1) & mask) {
      if (this.heads[slot] === 0) return;
      if (this.keys[slot] === key) break;
    }
    this.count--;
    // Backward shift: pull later entries of the probe run into the gap when that keeps them
    // between their home slot and where they sit.
    let gap = slot;
    for (let next = (gap + 1) & mask; this.heads[next] !== 0; next = (next + 1) & mask) {
      const home = (this.keys[next]! >>> 0) & mask;
      const distanceFromHome = (next - home) & mask;
      const distanceFromGap = (next - gap) & mask;
      if (distanceFromHome >= distanceFromGap) {
        this.keys[gap] = this.keys[next]!;
        this.heads[gap] = this.heads[next]!;
        gap = next;
      }
    }
    this.heads[gap] = 0;
    this.keys[gap] = 0;
  }

  private resize(slots: number): void {
    const keys = this.keys;
    const heads = this.heads;
    this.keys = new Float64Array(slots);
    this.heads = new Int32Array(slots);
    this.mask = slots - 1;
    this.count = 0;
    for (let i = 0; i < heads.length; i++) {
      if (heads[i] !== 0) this.set(keys[i]!, heads[i]!);
    }
  }
}
