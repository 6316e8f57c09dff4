/**
 * The checks every page store makes before it touches a slot, in the order the contract in
 * page-store.ts implies: a closed store refuses everything (STORE_CLOSED), then the slot
 * number (OUT_OF_RANGE), then the buffer (INVALID_ARGUMENT). Keeping them in one place keeps
 * the stores' errors identical, which the conformance suite relies on.
 *
 * A guard also counts operations in flight, so that close() can wait for the I/O already
 * started instead of pulling a file handle or a fabric region from under it.
 *   invariant: inFlight == operations that passed enter() and have not called leave()
 */
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
// frame-pool.js, not memory/index.js: the store worker loads this, and the whole memory core
// (the merger and its native hash among it) would add tens of milliseconds to every start.
import { PAGE_SIZE_MAX, PAGE_SIZE_MIN } from '../memory/frame-pool.js';

/**
 * Most slots one store may have: slot numbers stay 32-bit integers (bitmaps index them with
 * shifts) and a file store's size, (capacity + 1) · pageSize, stays a safe integer.
 */
export const STORE_SLOTS_MAX = 2 ** 31;

/** Throws INVALID_ARGUMENT unless pageSize and capacity describe a store we can build. */
export function checkStoreGeometry(pageSize: unknown, capacity: unknown): void {
  if (
    typeof pageSize !== 'number' ||
    !Number.isInteger(pageSize) ||
    pageSize < PAGE_SIZE_MIN ||
    pageSize > PAGE_SIZE_MAX ||
    (pageSize & (pageSize - 1)) !== 0
  ) {
    throw invalidArgument(
      `page store pageSize ${String(pageSize)} must be a power of two from ${PAGE_SIZE_MIN} to ${PAGE_SIZE_MAX}`,
    );
  }
  if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < 1) {
    throw invalidArgument(
      `page store capacity ${String(capacity)} must be a whole number of slots, at least 1`,
    );
  }
  if (capacity > STORE_SLOTS_MAX) {
    throw invalidArgument(
      `page store capacity ${capacity} is more than the ${STORE_SLOTS_MAX} slots one store may have; ` +
        'use larger pages or several stores',
    );
  }
}

export function storeClosed(name: string): MemfabricError {
  return new MemfabricError(ErrorCodes.STORE_CLOSED, `page store ${name} was closed`);
}

/** STORE_FAILED naming the store, the operation, the slot (if any) and the cause. */
export function storeFailed(name: string, what: string, cause: unknown, slot?: number): MemfabricError {
  const where = slot === undefined ? '' : ` of slot ${slot}`;
  const why = cause instanceof Error ? cause.message : String(cause);
  return new MemfabricError(ErrorCodes.STORE_FAILED, `page store ${name}: ${what}${where} failed: ${why}`, {
    cause,
  });
}

export class StoreGuard {
  private closing: Promise<void> | undefined;
  private inFlight = 0;
  private drained: (() => void) | undefined;

  constructor(
    private readonly name: string,
    private readonly pageSize: number,
    private readonly capacity: number,
  ) {}

  /** Checks state and slot; on success the caller must call leave() when done. */
  enter(slot: number): void {
    this.check(slot);
    this.inFlight++;
  }

  /** Checks state, slot and page buffer; on success the caller must call leave() when done. */
  enterPage(slot: number, page: Uint8Array): void {
    this.checkPage(slot, page);
    this.inFlight++;
  }

  /** Like enter() for operations that name no slot (flush). */
  enterAll(): void {
    if (this.closing) throw storeClosed(this.name);
    this.inFlight++;
  }

  leave(): void {
    this.inFlight--;
    if (this.inFlight === 0) this.drained?.();
  }

  /** The contract's checks without counting the operation (for stores that never await). */
  check(slot: number): void {
    if (this.closing) throw storeClosed(this.name);
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.capacity) {
      throw outOfRange(
        `slot ${String(slot)} is outside page store ${this.name} (slots 0 to ${this.capacity - 1})`,
      );
    }
  }

  checkPage(slot: number, page: Uint8Array): void {
    this.check(slot);
    if (!(page instanceof Uint8Array) || page.length !== this.pageSize) {
      const got = page instanceof Uint8Array ? `${page.length} bytes` : String(page);
      throw invalidArgument(
        `page store ${this.name} moves whole pages: pass a Uint8Array of ${this.pageSize} bytes, not ${got}`,
      );
    }
  }

  /**
   * Refuses new operations, waits for those in flight, then runs release once. Every call,
   * the first and any later one, resolves when release has finished: close() is idempotent.
   */
  close(release: () => Promise<void> | void): Promise<void> {
    this.closing ??= (async () => {
      if (this.inFlight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      await release();
    })();
    return this.closing;
  }
}
