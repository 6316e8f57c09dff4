/**
 * SlotMap: a map from slot numbers (int32 >= 0) to int32 values in two typed arrays, for the
 * destager's per-slot bookkeeping (newest pending operation of a slot, tail of a slot's chain).
 * Hand-written rather than a `Map` so the hot paths allocate nothing per operation.
 *
 * Open addressing with linear probing and backward-shift deletion (no tombstones), so a probe
 * sequence never crosses an empty cell:
 *   keys[i] == EMPTY  or  every cell from home(keys[i]) to i holds a key.
 * The table doubles when it is more than half full: size <= capacity / 2.
 */

const EMPTY = -1;
const MIN_CAPACITY = 16;

/** What `get` returns for a slot that is not in the map. */
export const MISSING = -0x80000000;

export class SlotMap {
  private keys: Int32Array;
  private values: Int32Array;
  private mask: number;
  /** 32 - log2(capacity): the multiplicative hash keeps the top bits. */
  private shift: number;
  size = 0;

  constructor(expected = MIN_CAPACITY) {
    let capacity = MIN_CAPACITY;
    while (capacity < expected * 2) capacity *= 2;
    this.keys = new Int32Array(capacity).fill(EMPTY);
    this.values = new Int32Array(capacity);
    this.mask = capacity - 1;
    this.shift = 32 - Math.log2(capacity);
  }

  private home(key: number): number {
    return Math.imul(key, 0x9e3779b1) >>> this.shift;
  }

  get(key: number): number {
    const keys = this.keys;
    for (let i = this.home(key); ; i = (i + 1) & this.mask) {
      const k = keys[i];
      if (k === key) return this.values[i];
      if (k === EMPTY) return MISSING;
    }
  }

  set(key: number, value: number): void {
    if ((this.size + 1) * 2 > this.keys.length) this.grow();
    const keys = this.keys;
    for (let i = this.home(key); ; i = (i + 1) & this.mask) {
      const k = keys[i];
      if (k === key) {
        this.values[i] = value;
        return;
      }
      if (k === EMPTY) {
        keys[i] = key;
        this.values[i] = value;
        this.size++;
        return;
      }
    }
  }

  /** Removes `key`; returns whether it was present. */
  delete(key: number): boolean {
    const keys = this.keys;
    const mask = this.mask;
    let i = this.home(key);
    for (; ; i = (i + 1) & mask) {
      const k = keys[i];
      if (k === key) break;
      if (k === EMPTY) return false;
    }
    // Backward shift: pull later members of the probe run into the hole when their home
    // position does not lie cyclically in (hole, j].
    let hole = i;
    for (let j = (i + 1) & mask; keys[j] !== EMPTY; j = (j + 1) & mask) {
      const h = this.home(keys[j]);
      const between = hole <= j ? hole < h && h <= j : hole < h || h <= j;
      if (!between) {
        keys[hole] = keys[j];
        this.values[hole] = this.values[j];
        hole = j;
      }
    }
    keys[hole] = EMPTY;
    this.size--;
    return true;
  }

  clear(): void {
    this.keys.fill(EMPTY);
    this.size = 0;
  }

  private grow(): void {
    const oldKeys = this.keys;
    const oldValues = this.values;
    const capacity = oldKeys.length * 2;
    this.keys = new Int32Array(capacity).fill(EMPTY);
    this.values = new Int32Array(capacity);
    this.mask = capacity - 1;
    this.shift = 32 - Math.log2(capacity);
    this.size = 0;
    for (let i = 0; i < oldKeys.length; i++) {
      if (oldKeys[i] !== EMPTY) this.set(oldKeys[i], oldValues[i]);
    }
  }
}
