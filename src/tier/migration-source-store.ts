/**
 * The page store of a post-copy destination (src/migrate/postcopy-destination.ts): slots that
 * are still on the migration's source are fetched from it on demand, the source pushes the rest
 * in the background, and every page that arrives is kept in a local store, so the destination
 * stops depending on the source once every page has moved.
 *
 * It runs where every store runs, in the pager's I/O worker: a fault on the main thread waits
 * (Atomics.wait) while this store asks the source's page server for the page over its own TCP
 * connection, authenticated by the migration id. The background push arrives on the same
 * connection, so it never costs the destination program's thread anything, and a fault response
 * and the push of the same page travel in one ordered stream.
 *
 * Slots. [0, slots) are the source's data pages by ordinal (slot i is its i-th data page, see
 * postcopy-protocol.ts); [slots, capacity) are ordinary swap slots for pages the destination
 * evicts, kept in the local store. Each source slot is in one of three states:
 *
 *   REMOTE    still only on the source: a read fetches it (a fault)
 *   ARRIVING  its bytes are on the way into the local store (a fault's answer or a push)
 *   LOCAL     in the local store (arrived), or no longer wanted (the pager wrote or discarded it)
 *
 * Exactly one copy wins: the first copy of a slot to arrive (fault answer or push) moves it
 * from REMOTE or from a fault's ARRIVING to LOCAL; any later copy of it is dropped, counted as a
 * duplicate. A page written at the destination is never overwritten by a late push: the pager
 * writes a new page to a new slot (never to a slot an entry still names), and a source slot it
 * frees is discarded first, which makes it LOCAL, after which no push lands in it. Operations
 * of the pager on a slot wait for any copy still landing in it, so they keep their order.
 *
 * When the source is lost (its connection closes, or a fault goes unanswered for
 * faultTimeoutMs), every read of a slot still REMOTE fails with POSTCOPY_SOURCE_LOST, at once,
 * never hanging; LOCAL slots and the local store keep working, so the pages already moved stay
 * readable.
 *
 * When every slot is LOCAL the store tells the source (PS_HAVE_ALL) and closes the connection:
 * from then on it is a plain local store (memory or a file; default a temporary swap file, like
 * the pager's).
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { MessageConnection } from '../migrate/connection.js';
import {
  PAGES_FAULTED,
  PAGES_PREFIX_BYTES,
  PAGES_PUSHED,
  PS_ATTACH,
  PS_ATTACHED,
  PS_FETCH,
  PS_HAVE_ALL,
  PS_NOT_NEEDED,
  PS_PAGES,
  PS_SLOTS,
  P_BYTES,
  P_BY_FAULT,
  P_BY_PUSH,
  P_DUPLICATES,
  P_IN_FLIGHT,
  READ_AHEAD_DEFAULT,
  P_NOT_NEEDED,
  P_PUSH_BATCHES,
  P_REMAINING,
  P_SLOTS,
  FAULT_TIMEOUT_DEFAULT_MS,
  ProgressCells,
  STATE_COMPLETE,
  STATE_LOST,
  STATE_MAPPED,
  createProgressBuffer,
  encodeSlots,
  sourceLost,
} from '../migrate/postcopy-protocol.js';
import { PAGE_ZERO, decodeJson, encodeJsonFrame, protocolError, readPageBatch } from '../migrate/wire.js';
import type { PageStore, StoreSpec } from './page-store.js';
import { StoreGuard, checkStoreGeometry, storeFailed } from './store-guard.js';

export type MigrationSourceStoreSpec = Extract<StoreSpec, { kind: 'migration-source' }>;

const REMOTE = 0;
const ARRIVING = 1;
const LOCAL = 2;

export const MIGRATION_CONNECT_TIMEOUT_DEFAULT_MS = 10_000;

/** A fault waiting for its page. */
interface Fetch {
  readonly started: number;
  readonly timer: ReturnType<typeof setTimeout>;
  /** The slot a read asked for (its latency is recorded), not one read ahead. */
  readonly demanded: boolean;
  resolve(): void;
  reject(error: unknown): void;
}

export class MigrationSourceStore implements PageStore {
  readonly name: string;
  readonly pageSize: number;
  readonly capacity: number;
  private readonly guard: StoreGuard;
  private readonly progress: ProgressCells;
  private readonly faultTimeoutMs: number;
  private readonly readAhead: number;
  /** Source slots (data pages); -1 until the switchover names them. */
  private slots = -1;
  private state = new Uint8Array(0);
  private remaining = 0;
  /** The landing of each ARRIVING slot: resolves once its bytes are in the local store. */
  private readonly landing = new Map<number, Promise<void>>();
  private readonly fetches = new Map<number, Fetch>();
  private mapped!: Promise<void>;
  private resolveMapped!: () => void;
  private rejectMapped!: (error: unknown) => void;
  private lost: MemfabricError | undefined;
  private complete = false;
  private closing = false;
  private notNeeded: number[] = [];
  private notNeededQueued = false;

  private constructor(
    private readonly spec: MigrationSourceStoreSpec,
    private readonly local: PageStore,
    private readonly connection: MessageConnection,
    geometry: { pageSize: number; capacity: number },
  ) {
    this.pageSize = geometry.pageSize;
    this.capacity = geometry.capacity;
    this.name = `migration source ${spec.host}:${spec.port} (moved pages in ${local.name})`;
    this.guard = new StoreGuard(this.name, this.pageSize, this.capacity);
    this.progress = new ProgressCells(spec.progress ?? createProgressBuffer());
    this.faultTimeoutMs = spec.faultTimeoutMs ?? FAULT_TIMEOUT_DEFAULT_MS;
    this.readAhead = spec.readAhead ?? READ_AHEAD_DEFAULT;
    this.mapped = new Promise<void>((resolve, reject) => {
      this.resolveMapped = resolve;
      this.rejectMapped = reject;
    });
    // Nothing waits on `mapped` before the first read; a loss before then must not go unhandled.
    this.mapped.catch(() => undefined);
  }

  /** Opens the local store, connects to the source's page server and attaches to the migration. */
  static async open(
    spec: MigrationSourceStoreSpec,
    geometry: { pageSize: number; capacity: number },
  ): Promise<MigrationSourceStore> {
    checkStoreGeometry(geometry.pageSize, geometry.capacity);
    checkSpec(spec);
    const { openPageStore } = await import('./open-store.js');
    const local = await openPageStore(
      spec.local ?? { kind: 'file', directory: defaultDirectory() },
      geometry,
    );
    let connection: MessageConnection;
    try {
      connection = await MessageConnection.connect({
        host: spec.host,
        port: spec.port,
        timeoutMs: spec.connectTimeoutMs ?? MIGRATION_CONNECT_TIMEOUT_DEFAULT_MS,
      });
    } catch (error) {
      await local.close().catch(() => undefined);
      throw error;
    }
    const store = new MigrationSourceStore(spec, local, connection, geometry);
    try {
      await store.attach(spec.connectTimeoutMs ?? MIGRATION_CONNECT_TIMEOUT_DEFAULT_MS);
    } catch (error) {
      connection.destroy();
      await local.close().catch(() => undefined);
      throw error;
    }
    return store;
  }

  /** Sends the migration id and waits for the source to accept it; then serves the connection. */
  private attach(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let attached = false;
      const timer = setTimeout(() => {
        reject(
          new MemfabricError(
            ErrorCodes.TIMEOUT,
            `the migration source at ${this.spec.host}:${this.spec.port} did not accept the store within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      this.connection.onMessage((type, payload) => {
        if (!attached) {
          if (type !== PS_ATTACHED)
            throw protocolError(`the page server answered an attach with message ${type}`);
          attached = true;
          clearTimeout(timer);
          resolve();
          return;
        }
        this.onMessage(type, payload);
      });
      void this.connection.closed.then(() => {
        clearTimeout(timer);
        if (!attached) {
          reject(this.connection.error ?? sourceLost('the page server closed the connection'));
          return;
        }
        if (!this.complete) {
          this.lose(sourceLost(this.connection.error?.message ?? 'the connection to it closed'));
        }
      });
      this.connection.post(encodeJsonFrame(PS_ATTACH, { migrationId: this.spec.migrationId }));
    });
  }

  // ---------------------------------------------------------------------------------------
  // PageStore

  async read(slot: number, dst: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, dst);
    try {
      if (this.slots < 0) await this.mapped;
      if (slot < this.slots) {
        const state = this.state[slot]!;
        if (state === ARRIVING) await this.landing.get(slot);
        else if (state === REMOTE) await this.fetch(slot);
      }
      await this.local.read(slot, dst);
    } finally {
      this.guard.leave();
    }
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, src);
    try {
      await this.settle(slot);
      await this.local.write(slot, src);
    } finally {
      this.guard.leave();
    }
  }

  async discard(slot: number): Promise<void> {
    this.guard.enter(slot);
    try {
      await this.settle(slot);
      await this.local.discard(slot);
    } finally {
      this.guard.leave();
    }
  }

  async flush(): Promise<void> {
    this.guard.enterAll();
    try {
      await this.local.flush();
    } finally {
      this.guard.leave();
    }
  }

  async close(): Promise<void> {
    if (!this.closing) {
      // Closing the pager ends the migration from this side (the source sees the store go).
      // Faults still waiting end now, not when their timeout fires: close must not wait on them.
      this.closing = true;
      this.connection.destroy();
      const closed = new MemfabricError(ErrorCodes.STORE_CLOSED, `page store ${this.name} was closed`);
      for (const [slot, fetch] of this.fetches) {
        clearTimeout(fetch.timer);
        this.landing.delete(slot);
        this.state[slot] = REMOTE;
        fetch.reject(closed);
      }
      this.fetches.clear();
      this.rejectMapped(closed);
    }
    await this.guard.close(() => this.local.close());
  }

  // ---------------------------------------------------------------------------------------
  // Slots

  /**
   * Before the pager writes or discards `slot`: waits for a copy still landing in it, then
   * marks a source slot LOCAL (the pager no longer wants the source's copy; a late push is
   * dropped). The pager frees a source slot only once no page names it, so this never loses data.
   */
  private async settle(slot: number): Promise<void> {
    if (this.slots < 0) await this.mapped;
    if (slot >= this.slots) return;
    if (this.state[slot] === ARRIVING) await this.landing.get(slot)?.catch(() => undefined);
    if (this.state[slot] !== REMOTE) return;
    this.state[slot] = LOCAL;
    this.progress.f64[P_NOT_NEEDED]!++;
    this.arrived();
    this.tellNotNeeded(slot);
  }

  /**
   * A fault: asks the source for `slot` (and, read-ahead, for the slots after it still on the
   * source: the next data pages) and resolves once its bytes are in the local store. Read-ahead
   * slots land in the local store only, like a push: a failure to get one fails no read that
   * did not ask for it.
   */
  private fetch(slot: number): Promise<void> {
    if (this.lost) return Promise.reject(this.lost);
    const wanted = [slot];
    for (let next = slot + 1; next < this.slots && wanted.length <= this.readAhead; next++) {
      if (this.state[next] !== REMOTE) break;
      wanted.push(next);
    }
    const started = performance.now();
    let demanded: Promise<void> | undefined;
    for (const want of wanted) {
      this.state[want] = ARRIVING;
      let resolve!: () => void;
      let reject!: (error: unknown) => void;
      const landed = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      const timer = setTimeout(
        () =>
          this.lose(sourceLost(`a fault of page slot ${want} went unanswered for ${this.faultTimeoutMs} ms`)),
        this.faultTimeoutMs,
      );
      this.fetches.set(want, { started, timer, resolve, reject, demanded: want === slot });
      this.landing.set(want, landed);
      // Other reads of the slot may wait on this landing; none of them must leave it unhandled.
      landed.catch(() => undefined);
      demanded ??= landed;
    }
    this.progress.f64[P_IN_FLIGHT] = this.fetches.size;
    this.connection.post(encodeSlots(PS_FETCH, wanted));
    return demanded!;
  }

  /** A copy of `slot` arrived: the first one lands, later ones are duplicates. */
  private arrive(slot: number, bytes: Uint8Array, reason: number): Promise<void> | undefined {
    const state = this.state[slot]!;
    const fetch = this.fetches.get(slot);
    if (state === LOCAL || (state === ARRIVING && fetch === undefined)) {
      this.progress.f64[P_DUPLICATES]!++;
      return undefined;
    }
    // REMOTE, or ARRIVING for a fault whose answer this is (or which a push now beats).
    if (fetch !== undefined) {
      this.fetches.delete(slot);
      clearTimeout(fetch.timer);
      this.progress.f64[P_IN_FLIGHT] = this.fetches.size;
    }
    this.state[slot] = ARRIVING;
    const landed = this.local.write(slot, bytes).then(
      () => {
        this.landing.delete(slot);
        this.state[slot] = LOCAL;
        this.progress.f64[reason === PAGES_FAULTED ? P_BY_FAULT : P_BY_PUSH]!++;
        if (fetch !== undefined) {
          if (fetch.demanded) this.progress.recordLatency((performance.now() - fetch.started) * 1000);
          fetch.resolve();
        }
        this.arrived();
      },
      (error: unknown) => {
        this.landing.delete(slot);
        this.state[slot] = REMOTE;
        const failure = storeFailed(this.name, 'keeping a moved page', error, slot);
        fetch?.reject(failure);
        // The source believes the page moved: the migration cannot complete any more.
        this.lose(failure);
      },
    );
    this.landing.set(slot, landed);
    return landed;
  }

  /** One more source slot is LOCAL; at the last one the migration is complete. */
  private arrived(): void {
    this.remaining--;
    this.progress.f64[P_REMAINING] = this.remaining;
    if (this.remaining === 0 && !this.complete && !this.lost) this.finish();
  }

  private finish(): void {
    this.complete = true;
    this.flushNotNeeded();
    this.progress.state = STATE_COMPLETE;
    this.connection.post(encodeJsonFrame(PS_HAVE_ALL, {}));
    void this.connection.close();
  }

  private tellNotNeeded(slot: number): void {
    this.notNeeded.push(slot);
    if (this.notNeededQueued) return;
    this.notNeededQueued = true;
    setImmediate(() => this.flushNotNeeded());
  }

  private flushNotNeeded(): void {
    this.notNeededQueued = false;
    if (this.notNeeded.length === 0 || this.complete || this.lost) {
      this.notNeeded = [];
      return;
    }
    this.connection.post(encodeSlots(PS_NOT_NEEDED, this.notNeeded));
    this.notNeeded = [];
  }

  /** The source is gone: every fault waiting fails, and so will every read of a REMOTE slot. */
  private lose(error: MemfabricError): void {
    if (this.lost || this.complete || this.closing) return;
    this.lost = error;
    this.progress.state = STATE_LOST;
    this.rejectMapped(error);
    for (const [slot, fetch] of this.fetches) {
      clearTimeout(fetch.timer);
      this.landing.delete(slot);
      this.state[slot] = REMOTE;
      fetch.reject(error);
    }
    this.fetches.clear();
    this.progress.f64[P_IN_FLIGHT] = 0;
    this.connection.destroy();
  }

  // ---------------------------------------------------------------------------------------
  // Messages from the page server

  private onMessage(type: number, payload: Buffer): void {
    switch (type) {
      case PS_SLOTS: {
        if (this.slots >= 0) throw protocolError('the page server named the slots twice');
        const { slots } = decodeJson<{ slots?: unknown }>(payload);
        if (typeof slots !== 'number' || !Number.isSafeInteger(slots) || slots < 0) {
          throw protocolError('the page server sent no slot count');
        }
        if (slots > this.capacity) {
          this.lose(
            new MemfabricError(
              ErrorCodes.STORE_FULL,
              `the source has ${slots} data pages, more than this store's ${this.capacity} slots; give the destination a larger storeSize`,
            ),
          );
          return;
        }
        this.slots = slots;
        this.state = new Uint8Array(slots);
        this.remaining = slots;
        this.progress.f64[P_SLOTS] = slots;
        this.progress.f64[P_REMAINING] = slots;
        this.progress.state = STATE_MAPPED;
        this.resolveMapped();
        if (slots === 0) this.finish();
        return;
      }
      case PS_PAGES: {
        if (this.slots < 0) throw protocolError('the page server sent pages before the switchover');
        if (payload.length < PAGES_PREFIX_BYTES) throw protocolError('a page message is truncated');
        const reason = payload.readUInt32LE(0);
        if (reason !== PAGES_PUSHED && reason !== PAGES_FAULTED) {
          throw protocolError(`a page message has reason ${reason}`);
        }
        // One copy per message: the payload is a view of a reused chunk, and local writes are async.
        const batch = Buffer.from(payload.subarray(PAGES_PREFIX_BYTES));
        const landings: Promise<void>[] = [];
        const zeros = new Uint8Array(this.pageSize);
        readPageBatch(batch, this.pageSize, this.slots, (first, count, kind, data) => {
          for (let i = 0; i < count; i++) {
            const bytes =
              kind === PAGE_ZERO ? zeros : data.subarray(i * this.pageSize, (i + 1) * this.pageSize);
            this.progress.f64[P_BYTES]! += this.pageSize;
            const landed = this.arrive(first + i, bytes, reason);
            if (landed) landings.push(landed);
          }
        });
        if (reason === PAGES_PUSHED) {
          void Promise.allSettled(landings).then(() => this.progress.f64[P_PUSH_BATCHES]!++);
        }
        return;
      }
      default:
        throw protocolError(`the page server sent message type ${type}`);
    }
  }
}

function defaultDirectory(): string {
  // The worker has no tmpdir import otherwise; process.env is what os.tmpdir reads too.
  return process.env.TMPDIR || '/tmp';
}

function checkSpec(spec: MigrationSourceStoreSpec): void {
  if (typeof spec.host !== 'string' || spec.host === '') {
    throw invalidArgument("a 'migration-source' page store needs host (the source's page server)");
  }
  if (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65535) {
    throw invalidArgument(`a 'migration-source' page store needs a port from 1 to 65535, not ${spec.port}`);
  }
  if (typeof spec.migrationId !== 'string' || spec.migrationId === '') {
    throw invalidArgument("a 'migration-source' page store needs the migration's id");
  }
  for (const [field, value] of [
    ['faultTimeoutMs', spec.faultTimeoutMs],
    ['connectTimeoutMs', spec.connectTimeoutMs],
  ] as const) {
    if (value !== undefined && (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value))) {
      throw invalidArgument(`${field} ${String(value)} must be a positive number of milliseconds`);
    }
  }
  const ahead = spec.readAhead;
  if (ahead !== undefined && (!Number.isInteger(ahead) || ahead < 0 || ahead > 256)) {
    throw invalidArgument(`readAhead ${String(ahead)} must be a whole number of pages from 0 to 256`);
  }
  if (spec.local !== undefined && spec.local.kind !== 'memory' && spec.local.kind !== 'file') {
    throw invalidArgument("a 'migration-source' store keeps moved pages in a 'memory' or 'file' store");
  }
}
