/**
 * The write gate a migration puts on its space (AddressSpace.writeGate; see WriteGate there).
 *
 *   open ──close()──▶ closed ──moved()──▶ moved (for good)
 *    ▲                  │
 *    └────reopen()──────┘   (a migration failed before its handover)
 *
 * open: writes pass; each page becoming dirty is counted and charged the throttle's delay
 * (auto-converge). closed: the blackout; every write, zeroing and trim throws MF_MIGRATING and
 * changes nothing. moved: the same refusal, for good, saying where the space went. Reads are
 * never refused: a moved space still reads as it was at the handover until it is destroyed.
 *
 * Closing refuses *every* later write only because the engine advances the space's epoch in
 * the same synchronous step: that drops every writable translation, so the next write to any
 * page takes the slow path through `dirtied`.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { AddressSpace, WriteGate } from '../memory/address-space.js';
import { Throttle } from './throttle.js';

export const GATE_OPEN = 0;
export const GATE_CLOSED = 1;
export const GATE_MOVED = 2;

export class MigrationGate implements WriteGate {
  state: typeof GATE_OPEN | typeof GATE_CLOSED | typeof GATE_MOVED = GATE_OPEN;
  readonly throttle: Throttle;
  /** Where the space went, for the refusal's message once moved. */
  private destination = '';
  private waiters: { resolve: () => void; reject: (error: unknown) => void }[] = [];

  constructor(autoConverge: boolean) {
    this.throttle = new Throttle(autoConverge);
  }

  /**
   * Installs the gate on `space`. A space has one gate: a second migration (or a standby
   * replication) of the same space is refused.
   */
  install(space: AddressSpace): void {
    if (space.writeGate !== undefined) {
      throw new MemfabricError(
        ErrorCodes.MIGRATING,
        'this address space is already being migrated or replicated; wait for that to finish (or cancel it) first',
      );
    }
    space.writeGate = this;
  }

  /** Takes the gate off `space` (a failed migration: the space is the program's again). */
  uninstall(space: AddressSpace): void {
    if (space.writeGate === this) space.writeGate = undefined;
  }

  admit(): void {
    if (this.state !== GATE_OPEN) throw this.refusal();
  }

  dirtied(): void {
    if (this.state !== GATE_OPEN) throw this.refusal();
    this.throttle.charge();
  }

  /** The blackout begins: every write from now on is refused (see the header for the epoch step). */
  close(): void {
    this.state = GATE_CLOSED;
    this.throttle.stop();
  }

  /** The migration failed before its handover: writes go on, and writers waiting are let go. */
  reopen(): void {
    if (this.state === GATE_MOVED) return;
    this.state = GATE_OPEN;
    this.throttle.stop();
    this.settleWaiters();
  }

  /** The handover happened: refuse writes for good, naming the destination. */
  moved(destination: string): void {
    this.destination = destination;
    this.state = GATE_MOVED;
    this.throttle.stop();
    this.settleWaiters();
  }

  /**
   * For async writers: resolves when writing may go on — at once, after serving the throttle's
   * delay, or after the blackout if the migration fails — and rejects with MF_MIGRATING once
   * the space has moved.
   */
  async writable(): Promise<void> {
    if (this.state === GATE_OPEN) return this.throttle.served();
    if (this.state === GATE_MOVED) throw this.refusal();
    await new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private settleWaiters(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) {
      if (this.state === GATE_MOVED) waiter.reject(this.refusal());
      else waiter.resolve();
    }
  }

  private refusal(): MemfabricError {
    if (this.state === GATE_MOVED) {
      return new MemfabricError(
        ErrorCodes.MIGRATING,
        `this address space has moved to ${this.destination} and refuses writes; write there (it still reads as it was at the handover)`,
      );
    }
    return new MemfabricError(
      ErrorCodes.MIGRATING,
      'this address space is moving to another process (migration blackout) and refuses writes; retry after the migration settles (await migration.writable())',
    );
  }
}
