/**
 * The global buffer budget of one NBD server: bytes every connection together may hold in
 * reply bytes queued on sockets and WRITE payloads being assembled.
 *
 * Two kinds of charge:
 *   - reservations, taken before a data request is admitted (`tryTake` / `wait`): a READ's
 *     reply, a WRITE's payload. A request that does not fit waits in one FIFO queue: nobody
 *     overtakes a waiter (a stream of small requests cannot starve a large one), and the head
 *     is granted as soon as its bytes are free. A request larger than the whole budget is
 *     admitted when nothing else is held, so every request can run.
 *   - adjustments (`adjust`), for bytes already in use: a session re-charges its socket's
 *     queued bytes whenever they change, so the budget always equals what sockets hold.
 *
 * Bytes are freed only when clients read replies or send payloads; a client that does neither
 * is closed by the stall timeout (session.ts), so every waiter is eventually granted.
 * Invariant: `used` == Σ reservations held + Σ sessions' charged socket bytes.
 */

/** One request waiting for bytes; `granted` runs (from setImmediate) once they are reserved. */
export interface BudgetWaiter {
  readonly bytes: number;
  granted(): void;
}

export class BufferBudget {
  private usedBytes = 0;
  private readonly queue: BudgetWaiter[] = [];
  private head = 0;

  constructor(readonly capacity: number) {}

  get used(): number {
    return this.usedBytes;
  }

  /** Requests waiting for bytes. */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  /** Reserves `bytes` now if they fit and nobody is waiting ahead. */
  tryTake(bytes: number): boolean {
    if (this.waiting > 0 || !this.fits(bytes)) return false;
    this.usedBytes += bytes;
    return true;
  }

  /** Queues a waiter behind the others; its bytes are reserved before `granted` runs. */
  wait(waiter: BudgetWaiter): void {
    this.queue.push(waiter);
  }

  /** Removes a waiter that has not been granted yet; returns whether it was still queued. */
  cancel(waiter: BudgetWaiter): boolean {
    const at = this.queue.indexOf(waiter, this.head);
    if (at < 0) return false;
    this.queue.splice(at, 1);
    this.pump();
    return true;
  }

  /** Gives back a reservation. */
  release(bytes: number): void {
    this.adjust(-bytes);
  }

  /** Charges (positive) or refunds (negative) bytes already in use; never waits. */
  adjust(delta: number): void {
    if (delta === 0) return;
    this.usedBytes += delta;
    if (delta < 0) this.pump();
  }

  private fits(bytes: number): boolean {
    return this.usedBytes === 0 || this.usedBytes + bytes <= this.capacity;
  }

  /** Grants waiters in order while the head fits. */
  private pump(): void {
    while (this.head < this.queue.length) {
      const next = this.queue[this.head];
      if (!this.fits(next.bytes)) break;
      this.usedBytes += next.bytes;
      this.head++;
      // Delivered on a later turn: the caller may be in the middle of another session's work.
      setImmediate(() => next.granted());
    }
    // Drop the consumed prefix once it is worth it, so the queue does not grow for ever.
    if (this.head > 0) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
  }
}
