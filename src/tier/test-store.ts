/**
 * The test double of the page store: a memory store that can be slowed down and made to fail,
 * built from plain data (StoreSpec kind 'test') because the pager's I/O worker builds its store
 * from a spec. Tests of the pager and the destager use it to hold operations in flight and to
 * make chosen writes fail; it keeps the whole contract otherwise (the conformance suite runs on
 * it too).
 *
 * Delays come after the contract's checks, so a bad call still fails at once, and before the
 * operation, so an operation still delayed when close() is called completes before the store
 * closes (close waits for it).
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { MemoryPageStore } from './memory-store.js';
import type { PageStore, StoreSpec } from './page-store.js';
import { StoreGuard, storeFailed } from './store-guard.js';

export type TestStoreSpec = Extract<StoreSpec, { kind: 'test' }>;

/** Longest delay a spec may ask for: a test double must not hang a test run. */
export const TEST_STORE_DELAY_MS_MAX = 60_000;

/** Operations the test store has served (counted when they complete, failed or not). */
export interface TestStoreStats {
  reads: number;
  writes: number;
  discards: number;
  flushes: number;
  /** Writes failed on purpose (failWriteSlots). */
  failedWrites: number;
  /** Operations failed on purpose because failAfterOps had passed. */
  failedOps: number;
  /** Most operations in flight at once. */
  inFlightMax: number;
}

export class TestPageStore implements PageStore {
  readonly name = 'test';
  readonly pageSize: number;
  readonly capacity: number;
  private readonly inner: MemoryPageStore;
  private readonly guard: StoreGuard;
  private readonly readDelayMs: number;
  private readonly writeDelayMs: number;
  private readonly discardDelayMs: number;
  private readonly failWriteSlots: ReadonlySet<number>;
  private readonly failAfterOps: number;
  private opsStarted = 0;
  private inFlight = 0;
  private readonly counters: TestStoreStats = {
    reads: 0,
    writes: 0,
    discards: 0,
    flushes: 0,
    failedWrites: 0,
    failedOps: 0,
    inFlightMax: 0,
  };

  constructor(spec: TestStoreSpec, options: { pageSize: number; capacity: number }) {
    this.inner = new MemoryPageStore({ ...options, name: this.name });
    this.pageSize = options.pageSize;
    this.capacity = options.capacity;
    this.guard = new StoreGuard(this.name, this.pageSize, this.capacity);
    this.readDelayMs = delay(spec.readDelayMs, 'readDelayMs');
    this.writeDelayMs = delay(spec.writeDelayMs, 'writeDelayMs');
    this.discardDelayMs = delay(spec.discardDelayMs, 'discardDelayMs');
    const fail = spec.failWriteSlots ?? [];
    if (!Array.isArray(fail) || !fail.every((slot) => Number.isInteger(slot))) {
      throw invalidArgument(`test store failWriteSlots must be an array of slot numbers`);
    }
    this.failWriteSlots = new Set(fail);
    const after = spec.failAfterOps ?? Infinity;
    if (after !== Infinity && !(Number.isInteger(after) && after >= 0)) {
      throw invalidArgument(`test store failAfterOps ${String(after)} must be a whole number of operations`);
    }
    this.failAfterOps = after;
  }

  /**
   * Past failAfterOps the store is broken for good, as a disk or an appliance dies: every
   * operation rejects with STORE_FAILED whose cause is an injected EIO.
   */
  private checkBroken(what: string, slot?: number): void {
    if (++this.opsStarted <= this.failAfterOps) return;
    this.counters.failedOps++;
    const cause = Object.assign(
      new Error(`EIO: i/o error (injected after ${this.failAfterOps} operations)`),
      {
        code: 'EIO',
        errno: -5,
      },
    );
    throw storeFailed(this.name, what, cause, slot);
  }

  stats(): TestStoreStats {
    return { ...this.counters };
  }

  read(slot: number, dst: Uint8Array): Promise<void> {
    return this.run(slot, dst, this.readDelayMs, () => {
      this.counters.reads++;
      this.checkBroken('read', slot);
      return this.inner.read(slot, dst);
    });
  }

  write(slot: number, src: Uint8Array): Promise<void> {
    return this.run(slot, src, this.writeDelayMs, () => {
      this.counters.writes++;
      this.checkBroken('write', slot);
      if (this.failWriteSlots.has(slot)) {
        this.counters.failedWrites++;
        throw new MemfabricError(
          ErrorCodes.STORE_FAILED,
          `page store ${this.name}: write of slot ${slot} failed: the slot is in failWriteSlots`,
        );
      }
      return this.inner.write(slot, src);
    });
  }

  discard(slot: number): Promise<void> {
    return this.run(slot, undefined, this.discardDelayMs, () => {
      this.counters.discards++;
      this.checkBroken('discard', slot);
      return this.inner.discard(slot);
    });
  }

  async flush(): Promise<void> {
    this.guard.enterAll();
    try {
      this.counters.flushes++;
      this.checkBroken('flush');
      await this.inner.flush();
    } finally {
      this.guard.leave();
    }
  }

  close(): Promise<void> {
    return this.guard.close(() => this.inner.close());
  }

  private async run(
    slot: number,
    page: Uint8Array | undefined,
    delayMs: number,
    operation: () => Promise<void>,
  ): Promise<void> {
    if (page === undefined) this.guard.enter(slot);
    else this.guard.enterPage(slot, page);
    this.counters.inFlightMax = Math.max(this.counters.inFlightMax, ++this.inFlight);
    try {
      if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
      await operation();
    } finally {
      this.inFlight--;
      this.guard.leave();
    }
  }
}

function delay(value: unknown, what: string): number {
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > TEST_STORE_DELAY_MS_MAX) {
    throw invalidArgument(`test store ${what} ${String(value)} must be a number of ms from 0 to 60000`);
  }
  return value;
}
