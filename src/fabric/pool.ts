/**
 * A bounded pool of reusable buffers (coding batches, send runs): at most `max` are ever made,
 * lazily; a taker finds a free one, makes one while under the bound, or waits in arrival order
 * for the next one given back. Invariant: made = free + held, made <= max.
 */
export class Pool<T> {
  private readonly free: T[] = [];
  private readonly waiters: Array<(item: T) => void> = [];
  private made = 0;

  constructor(
    readonly max: number,
    private readonly make: () => T,
  ) {}

  take(): Promise<T> {
    const free = this.free.pop();
    if (free !== undefined) return Promise.resolve(free);
    if (this.made < this.max) {
      this.made++;
      return Promise.resolve(this.make());
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  give(item: T): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.free.push(item);
  }
}
