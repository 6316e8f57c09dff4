/**
 * The global buffer budget of one NBD server: bytes every connection together may hold in
 * reply bytes queued on sockets and WRITE payloads being assembled.
 *
 * Every charge is made on behalf of one connection's `BudgetAccount`, so the budget knows what
 * each connection holds. Two kinds of charge:
 *   - reservations, taken before a data request is admitted (`tryTake` / `wait`): a READ's
 *     reply (or one piece of a large READ), a WRITE's whole payload;
 *   - adjustments (`adjust`), for bytes already in use: a session re-charges its socket's
 *     queued bytes whenever they change, so the budget always equals what sockets hold.
 *
 * Grant order (why not FIFO: under hostile load the queue fills with requests of connections
 * that hold bytes they never move, and a well-behaved client queued behind them waits until
 * stall timeouts have closed them all):
 *   - a waiter that has waited BUDGET_AGED_MS or more goes first, oldest first (no starvation:
 *     a large request cannot be overtaken for ever by a stream of smaller ones);
 *   - otherwise the waiter whose connection would hold the least once granted (`held + bytes`)
 *     goes first; ties go to the one that queued first. A client holding nothing and asking
 *     for little is served before connections sitting on unread replies or large payloads.
 *   - only the chosen waiter is granted: when it does not fit, nobody behind it is (the bytes
 *     freed next are its), and `tryTake` succeeds only for a request that ranks strictly before
 *     every waiter and fits.
 * A request larger than the whole budget is granted when nothing else is held, so every
 * request can run.
 *
 * No deadlock. Invariant: every byte held is freed without any further grant — queued reply
 * bytes leave when the client reads them or the stall timeout closes the connection, and a
 * WRITE payload is reserved whole before any of it is read, so it completes (or stalls and is
 * closed) with the bytes already on the wire. Nobody holds part of what it waits for (reserving
 * payloads piece by piece broke this: connections each holding part of a payload, all waiting
 * for the rest). Hence, without new grants, `used` falls to 0, where any request fits; the
 * chosen waiter is therefore granted, and aging makes every waiter the chosen one in bounded
 * time. Also: `used` == Σ accounts' `held`, and `used` <= capacity unless one request alone.
 *
 * The clock is the server's timeout clock (`tick`), so tests move it by hand. With every
 * timeout of the server off there is no timer, so nothing ages: waiters are then served least-
 * holding first only; with the stall timeout off, holders are not closed either, so liveness
 * already rests on clients reading and sending.
 *
 * Cost: with nobody waiting, `tryTake` and `adjust` are a few additions and allocate nothing.
 * Only while requests wait does choosing one scan the queue (one entry per waiting request, at
 * most one per connection) and a grant allocate its setImmediate callback.
 */
import { BUDGET_AGED_MS } from './limits.js';

/** What one connection holds in the budget (socket bytes + reservations). */
export interface BudgetAccount {
  held: number;
}

/** One request waiting for bytes; `granted` runs (from setImmediate) once they are reserved. */
export interface BudgetWaiter {
  readonly account: BudgetAccount;
  readonly bytes: number;
  /** When it queued (the budget's clock); set by `wait`. */
  since: number;
  granted(): void;
}

export class BufferBudget {
  private usedBytes = 0;
  /** Waiters in the order they queued. */
  private readonly queue: BudgetWaiter[] = [];
  private now = 0;

  constructor(
    readonly capacity: number,
    readonly agedMs: number = BUDGET_AGED_MS,
  ) {}

  get used(): number {
    return this.usedBytes;
  }

  /** Requests waiting for bytes. */
  get waiting(): number {
    return this.queue.length;
  }

  /** Moves the budget's clock (never backwards) and grants waiters that have aged and fit. */
  tick(now: number): void {
    if (now > this.now) this.now = now;
    if (this.queue.length > 0) this.pump();
  }

  /** Reserves `bytes` for `account` now if they fit and it ranks before every waiter. */
  tryTake(account: BudgetAccount, bytes: number): boolean {
    if (!this.fits(bytes)) return false;
    if (this.queue.length > 0) {
      const first = this.choose();
      if (this.aged(first) || account.held + bytes >= first.account.held + first.bytes) return false;
    }
    this.usedBytes += bytes;
    account.held += bytes;
    return true;
  }

  /** Queues a waiter; its bytes are reserved (on its account) before `granted` runs. */
  wait(waiter: BudgetWaiter): void {
    waiter.since = this.now;
    this.queue.push(waiter);
  }

  /** Removes a waiter that has not been granted yet; returns whether it was still queued. */
  cancel(waiter: BudgetWaiter): boolean {
    const at = this.queue.indexOf(waiter);
    if (at < 0) return false;
    this.queue.splice(at, 1);
    this.pump();
    return true;
  }

  /** Gives back a reservation. */
  release(account: BudgetAccount, bytes: number): void {
    this.adjust(account, -bytes);
  }

  /** Charges (positive) or refunds (negative) bytes already in use; never waits. */
  adjust(account: BudgetAccount, delta: number): void {
    if (delta === 0) return;
    this.usedBytes += delta;
    account.held += delta;
    if (delta < 0 && this.queue.length > 0) this.pump();
  }

  private fits(bytes: number): boolean {
    return this.usedBytes === 0 || this.usedBytes + bytes <= this.capacity;
  }

  private aged(waiter: BudgetWaiter): boolean {
    return this.now - waiter.since >= this.agedMs;
  }

  /** The waiter to grant next (the queue is not empty): see the grant order above. */
  private choose(): BudgetWaiter {
    const queue = this.queue;
    let best = queue[0];
    // Waiters queued in order, so the oldest is first: if it has aged, it goes first.
    if (this.aged(best)) return best;
    let bestRank = best.account.held + best.bytes;
    for (let i = 1; i < queue.length; i++) {
      const w = queue[i];
      const rank = w.account.held + w.bytes;
      if (rank < bestRank) {
        best = w;
        bestRank = rank;
      }
    }
    return best;
  }

  /** Grants the chosen waiter while it fits. */
  private pump(): void {
    const queue = this.queue;
    while (queue.length > 0) {
      const next = this.choose();
      if (!this.fits(next.bytes)) break;
      this.usedBytes += next.bytes;
      next.account.held += next.bytes;
      queue.splice(queue.indexOf(next), 1);
      // Delivered on a later turn: the caller may be in the middle of another session's work.
      setImmediate(() => next.granted());
    }
  }
}
