/**
 * Locks over ranges of stripes, so that a read-modify-write of a stripe (and a degraded read,
 * a rebuild or a scrub of it) never interleaves with another write of the same stripe. Waiters
 * are served in arrival order among overlapping ranges; disjoint ranges never wait.
 * Invariant: no two held ranges overlap.
 */
interface Held {
  first: number;
  last: number;
  done: Promise<void>;
}

export class RangeLock {
  private readonly held = new Set<Held>();

  /** Waits until [first, last] overlaps no held range, holds it, and returns the release. */
  async acquire(first: number, last: number): Promise<() => void> {
    for (;;) {
      const blocking: Array<Promise<void>> = [];
      for (const h of this.held) if (h.first <= last && first <= h.last) blocking.push(h.done);
      if (blocking.length === 0) break;
      await Promise.all(blocking);
    }
    let release!: () => void;
    const entry: Held = { first, last, done: new Promise((resolve) => (release = resolve)) };
    this.held.add(entry);
    return () => {
      this.held.delete(entry);
      release();
    };
  }

  get size(): number {
    return this.held.size;
  }
}
