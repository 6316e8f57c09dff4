/**
 * Region migration between appliances: memory moved from one region to another without
 * passing through the clients (seed 001), by iterative pre-copy while the source keeps
 * serving, dirty tracking and a short final blackout (seed 002).
 *
 * Appliance A (this one) copies its region R to appliance B: A reads its own memory and writes
 * it to B over NBD; R's clients keep reading and writing R on A until the blackout, and then
 * find it on B through the `movedTo` that A publishes.
 *
 *   1. Prepare. With the token given for B (`targetToken`): GET B/v1/stats (B's NBD endpoint and free memory: a region whose data cannot
 *      fit is refused before anything is created), POST B/v1/regions (same size and tenant,
 *      file-backed if R is, R's fabric descriptor if it carries one; the name R or
 *      `targetName`), open an NbdClient to it.
 *   2. Round 1. s1 = advanceEpoch(); walk R's extents(): data pages are written to B, zero
 *      pages become WRITE_ZEROES with NO_HOLE (still no memory on B), holes are skipped (B's
 *      region is new, hence all holes).
 *   3. Round k ≥ 2. In one synchronous step: take the pages dirtied since s(k-1), and if
 *      there are more than `blackoutPages` of them, the set shrank since the previous round
 *      and fewer than `maxRounds` rounds ran, sk = advanceEpoch(). Then copy those pages as
 *      they are now: data, zeros, or a hole (TRIM on B).
 *   4. Blackout (otherwise). R's gate closes in that same synchronous step: writes, trims and
 *      zeroes to R fail with MF_MIGRATING, which NBD answers with ESHUTDOWN, and change
 *      nothing; reads go on, descriptor replacements are refused (MF_MIGRATING). Copy the pages
 *      of the last dirty set, FLUSH B, send R's descriptor again if it was replaced since
 *      step 1 (PUT B/v1/regions/:name/descriptor), then mark R moved:
 *      its name answers `movedTo` (GET /v1/regions/:name), its NBD connections are ended and
 *      new ones refused (unknown export), its memory and files are freed.
 *
 * Why nothing acknowledged is lost. Invariant: when round k+1 starts (at epoch s(k+1)), every
 * page whose bytes on B may differ from A has a write epoch ≥ s(k). A copy reads A when it is
 * issued, and B applies one connection's requests in order (each page is copied at most once
 * per round and every round is drained before the next starts); a write to A after the read
 * records an epoch ≥ s(k). A page not copied in round k was not dirty since s(k-1), so by
 * induction B already matched it, and any later change again records an epoch ≥ s(k). Round 1
 * is the base: B starts as holes and every page of A that is not a hole is visited. At the
 * blackout nothing changes any more, so copying the pages dirtied since the last round began
 * makes B equal to A. Hence: a write A acknowledged before the blackout is on B when the
 * migration is done; a write refused during the blackout (ESHUTDOWN) was never acknowledged
 * and must be retried by the client where resolveRegion (src/fabric/follow.ts) now points.
 *
 * Failure (B unreachable or out of memory, a copy or the flush refused, the appliance
 * stopping) before R is marked moved: R's gate reopens, so A serves exactly as before with all
 * its data (a write refused during a failed blackout is retried at A), and the partial region
 * on B is deleted (retried while B still counts our closing NBD connection). `failed` carries
 * the cause's code and message.
 *
 * Pacing: data goes in runs of at most COPY_RUN_PAGES_MAX pages, COPY_INFLIGHT_MAX requests
 * in flight, each from its own buffer (an NBD write holds its buffer until answered); after
 * every COPY_BATCH_PAGES pages the copy yields to the event loop, so A's clients wait at most
 * one batch of memcpy for their turn.
 *
 * What is not moved: chunk allocations (chunk-routes.ts) and the page-sharing of clones and
 * merged pages (B stores every data page on its own until B's merger finds it). Read-only
 * regions are refused (B could not be written).
 */
import { randomUUID } from 'node:crypto';
import { setImmediate as yieldToEventLoop, setTimeout as delay } from 'node:timers/promises';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { EXTENT_HOLE, EXTENT_ZERO, type AddressSpace } from '../memory/index.js';
import { NbdClient } from '../nbd/index.js';
import { adminRequest, type AdminTarget } from './admin-client.js';
import type { Appliance, Endpoint } from './appliance.js';
import { GATE_BLACKOUT, GATE_OPEN, type MovedTo, type Region } from './region.js';

/** Pre-copy rounds (round 1 included) before the blackout at the latest. */
export const MAX_ROUNDS_DEFAULT = 30;
export const MAX_ROUNDS_MAX = 1000;
/** Go to the blackout once this few pages are dirty (256 pages: 1 MiB with 4 KiB pages). */
export const BLACKOUT_PAGES_DEFAULT = 256;
export const BLACKOUT_PAGES_MAX = 1 << 24;
/** Pages copied between two yields to the event loop. */
export const COPY_BATCH_PAGES = 256;
/** Pages per NBD WRITE (128 KiB with 4 KiB pages). */
export const COPY_RUN_PAGES_MAX = 32;
/** NBD requests the copy keeps in flight to B. */
export const COPY_INFLIGHT_MAX = 8;
/** Bytes per WRITE_ZEROES or TRIM sent to B (bounds the work one request costs B). */
export const COPY_ZERO_BYTES_MAX = 64 * 1024 * 1024;
/** Extents described per extents() call, and bytes scanned per call. */
const EXTENTS_PER_STEP = 64;
const SCAN_PAGES_PER_STEP = 16384;
/** Dirty pages grouped into one contiguous range at most. */
const DIRTY_RUN_PAGES_MAX = 4096;
/** Calls to B's admin API; B's NBD requests. */
export const MIGRATION_ADMIN_TIMEOUT_MS = 10_000;
export const MIGRATION_NBD_TIMEOUT_MS = 10_000;
/** Deleting the partial region on B after a failure: attempts while B reports it busy. */
const CLEANUP_ATTEMPTS_MAX = 50;
const CLEANUP_RETRY_MS = 20;
const CLEANUP_CANCELLED_TIMEOUT_MS = 1000;
/** Finished migrations remembered for GET …/migration; beyond this the oldest is forgotten. */
const MIGRATIONS_KEPT_MAX = 4096;

/**
 * preparing -> copying -> blackout -> done, or from any of the first three -> aborting (the
 * region serves on A again; the target's partial region is being deleted) -> failed.
 */
export type MigrationState = 'preparing' | 'copying' | 'blackout' | 'aborting' | 'done' | 'failed';

export interface MigrateOptions {
  /** The target appliance's admin URL, e.g. http://10.0.0.2:10880. */
  target: string;
  /** The region's name on the target (default: the same name). */
  targetName?: string;
  /**
   * The target's admin token (or a token of the region's tenant there), sent with every call
   * to the target. Never shown in the status or the log.
   */
  targetToken?: string;
  maxRounds?: number;
  blackoutPages?: number;
}

export interface MigrationRound {
  round: number;
  /** Pages sent to B in this round (data, zero and trimmed pages). */
  pages: number;
  ms: number;
}

export interface MigrationStatus {
  id: string;
  region: string;
  target: { appliance: string; region: string };
  state: MigrationState;
  /** The round under way (copying), or the number of rounds that ran. */
  round: number;
  /** Pages sent to B so far, every round and the blackout together. */
  pagesCopied: number;
  /** Pages of the current round (or of the blackout) not yet sent. */
  dirtyRemaining: number;
  rounds: MigrationRound[];
  /** Why the pre-copy stopped: 'converged', 'not-shrinking' or 'max-rounds'. */
  stopReason: string | null;
  blackout: { pages: number; ms: number } | null;
  movedTo: MovedTo | null;
  error: { code: string; message: string } | null;
  /** Failure only: whether the partial region on the target was deleted. */
  targetCleanedUp: boolean | null;
  maxRounds: number;
  blackoutPages: number;
  startedAt: string;
  finishedAt: string | null;
}

interface TargetStats {
  memory: { pageSize: number; freeBytes: number };
  endpoints: { nbd: Endpoint };
}

/** The appliance's migrations, one at a time per region. */
export class MigrationManager {
  private readonly migrations = new Map<string, Migration>();
  private closed = false;

  constructor(private readonly appliance: Appliance) {}

  /** Starts migrating region `name`; throws (changing nothing) if it cannot start. */
  start(name: string, options: MigrateOptions): MigrationStatus {
    if (this.closed) throw new MemfabricError(ErrorCodes.BUSY, 'the appliance is stopping');
    const region = this.appliance.registry.require(name);
    const target = parseTarget(options.target);
    const maxRounds = checkCount(options.maxRounds ?? MAX_ROUNDS_DEFAULT, 1, MAX_ROUNDS_MAX, 'maxRounds');
    const blackoutPages = checkCount(
      options.blackoutPages ?? BLACKOUT_PAGES_DEFAULT,
      0,
      BLACKOUT_PAGES_MAX,
      'blackoutPages',
    );
    if (region.migrating) {
      throw new MemfabricError(
        ErrorCodes.MIGRATING,
        `region ${name} is already migrating; see GET /v1/regions/${name}/migration`,
      );
    }
    if (region.readOnly) {
      throw new MemfabricError(
        ErrorCodes.READ_ONLY,
        `region ${name} is read-only and cannot be migrated (the copy writes it on the target); clone it to a writable region and migrate that`,
      );
    }
    const migration = new Migration(this.appliance, region, {
      target,
      targetApi: {
        url: target,
        ...(options.targetToken !== undefined ? { token: options.targetToken } : {}),
        ...(this.appliance.peerCa !== undefined ? { ca: this.appliance.peerCa } : {}),
      },
      targetName: options.targetName ?? name,
      maxRounds,
      blackoutPages,
    });
    this.migrations.delete(name);
    this.migrations.set(name, migration);
    this.forgetOldest();
    migration.start();
    return migration.status();
  }

  /** The latest migration of region `name` (under way or finished). */
  status(name: string): MigrationStatus {
    const migration = this.migrations.get(name);
    if (!migration) {
      throw new MemfabricError(
        ErrorCodes.NOT_FOUND,
        `region ${name} has no migration; start one with POST /v1/regions/${name}/migrate`,
      );
    }
    return migration.status();
  }

  /** Fails every migration under way (their regions stay here) and waits for them to settle. */
  async close(): Promise<void> {
    this.closed = true;
    const running = [...this.migrations.values()].filter((m) => !m.finished);
    for (const migration of running) migration.cancel('the appliance is stopping');
    await Promise.all(running.map((m) => m.settled));
  }

  private forgetOldest(): void {
    for (const [name, migration] of this.migrations) {
      if (this.migrations.size <= MIGRATIONS_KEPT_MAX) return;
      if (migration.finished) this.migrations.delete(name);
    }
  }
}

interface MigrationPlan {
  target: string;
  /** The target's URL with its token and the CA to trust. */
  targetApi: AdminTarget;
  targetName: string;
  maxRounds: number;
  blackoutPages: number;
}

class Migration {
  readonly id = randomUUID();
  settled: Promise<void> = Promise.resolve();
  private state: MigrationState = 'preparing';
  private round = 0;
  private pagesCopied = 0;
  private roundTotal = 0;
  private roundCopied = 0;
  private readonly rounds: MigrationRound[] = [];
  private stopReason: string | null = null;
  private blackout: { pages: number; ms: number } | null = null;
  private movedTo: MovedTo | null = null;
  private error: { code: string; message: string } | null = null;
  private targetCleanedUp: boolean | null = null;
  private readonly startedAt = new Date();
  private finishedAt: Date | null = null;
  private readonly abort = new AbortController();
  private client: NbdClient | undefined;
  private running = false;

  constructor(
    private readonly appliance: Appliance,
    private readonly region: Region,
    private readonly plan: MigrationPlan,
  ) {}

  /** run() has returned: nothing of this migration is under way any more (cleanup included). */
  get finished(): boolean {
    return !this.running;
  }

  start(): void {
    this.region.migrating = true;
    this.running = true;
    this.settled = this.run();
  }

  cancel(reason: string): void {
    if (this.finished) return;
    this.abort.abort(new MemfabricError(ErrorCodes.CONNECTION_CLOSED, `migration cancelled: ${reason}`));
    this.client?.destroy();
  }

  status(): MigrationStatus {
    return {
      id: this.id,
      region: this.region.name,
      target: { appliance: this.plan.target, region: this.plan.targetName },
      state: this.state,
      round: this.round,
      pagesCopied: this.pagesCopied,
      dirtyRemaining:
        this.state === 'done' || this.state === 'failed'
          ? 0
          : Math.max(0, this.roundTotal - this.roundCopied),
      rounds: this.rounds.map((r) => ({ ...r })),
      stopReason: this.stopReason,
      blackout: this.blackout ? { ...this.blackout } : null,
      movedTo: this.movedTo,
      error: this.error ? { ...this.error } : null,
      targetCleanedUp: this.targetCleanedUp,
      maxRounds: this.plan.maxRounds,
      blackoutPages: this.plan.blackoutPages,
      startedAt: this.startedAt.toISOString(),
      finishedAt: this.finishedAt?.toISOString() ?? null,
    };
  }

  private log(message: string, fields: Record<string, unknown> = {}): void {
    this.appliance.logger?.info(
      { region: this.region.name, migration: this.id, target: this.plan.target, ...fields },
      message,
    );
  }

  private async run(): Promise<void> {
    const { region, plan } = this;
    const space = region.space;
    let created = false;
    let committed = false;
    try {
      this.log('migration started', { targetName: plan.targetName });
      const stats = await this.unlessCancelled(
        adminRequest<TargetStats>(plan.targetApi, 'GET', '/v1/stats', undefined, MIGRATION_ADMIN_TIMEOUT_MS),
      );
      const needed = space.stats().dataPages * space.pageSize;
      if (needed > stats.memory.freeBytes) {
        throw new MemfabricError(
          ErrorCodes.POOL_EXHAUSTED,
          `the target ${plan.target} has ${stats.memory.freeBytes} bytes free; region ${region.name} holds ${needed} bytes of data`,
        );
      }
      // The descriptor as sent; one replaced during the pre-copy is sent again in the blackout.
      const sentDescriptor = region.descriptor;
      await this.unlessCancelled(
        adminRequest(
          plan.targetApi,
          'POST',
          '/v1/regions',
          {
            name: plan.targetName,
            size: region.size,
            tenant: region.tenant,
            ...(region.backing ? { file: true } : {}),
            ...(sentDescriptor !== undefined ? { descriptor: sentDescriptor } : {}),
          },
          MIGRATION_ADMIN_TIMEOUT_MS,
        ),
      );
      // Only a region B said it created is deleted on failure: never one someone else named so.
      created = true;
      const nbd = publicEndpoint(stats.endpoints.nbd, plan.target);
      const tls = this.appliance.peerTls(region.tenant);
      const connecting = NbdClient.connect({
        host: nbd.host,
        port: nbd.port,
        ...(tls ? { tls } : {}),
        exportName: plan.targetName,
        requestTimeoutMs: MIGRATION_NBD_TIMEOUT_MS,
        inflightMax: COPY_INFLIGHT_MAX,
      });
      // A connection that opens after a cancellation is closed at once.
      connecting.then(
        (late) => this.abort.signal.aborted && late.destroy(),
        () => undefined,
      );
      const client = await this.unlessCancelled(connecting);
      this.client = client;
      if (client.size !== region.size) {
        throw new MemfabricError(
          ErrorCodes.INTERNAL,
          `the target's region ${plan.targetName} has ${client.size} bytes, not ${region.size}`,
        );
      }
      const copier = new PageCopier(space, client, this.abort.signal, (pages) => {
        this.pagesCopied += pages;
        this.roundCopied += pages;
      });

      // Round 1: everything allocated.
      this.state = 'copying';
      let since = space.advanceEpoch();
      const before = space.stats();
      this.beginRound(1, before.dataPages + before.zeroPages);
      let started = performance.now();
      await copier.copyRange(0, space.size, false);
      let previous = this.endRound(started);

      // Rounds 2…: what was dirtied during the previous one, until it is small or stops shrinking.
      let last: Float64Array;
      for (;;) {
        // One synchronous step: nothing can write between taking the set and acting on it.
        last = space.dirtyPages(since);
        const stop =
          last.length <= plan.blackoutPages
            ? 'converged'
            : last.length >= previous
              ? 'not-shrinking'
              : this.round >= plan.maxRounds
                ? 'max-rounds'
                : null;
        if (stop !== null) {
          this.stopReason = stop;
          region.gate = GATE_BLACKOUT;
          break;
        }
        since = space.advanceEpoch();
        this.beginRound(this.round + 1, last.length);
        started = performance.now();
        await copier.copyPages(last);
        previous = this.endRound(started);
      }

      // Blackout: writes are refused; copy the last dirty set, flush, publish movedTo.
      this.state = 'blackout';
      const blackoutStarted = performance.now();
      this.roundTotal = last.length;
      this.roundCopied = 0;
      this.log('migration blackout', { pages: last.length, rounds: this.round, stopReason: this.stopReason });
      await copier.copyPages(last);
      await client.flush();
      // Replacements are refused in the blackout (registry.putDescriptor), so this one is final.
      const descriptor = region.descriptor;
      if (descriptor !== undefined && descriptor !== sentDescriptor) {
        await this.unlessCancelled(
          adminRequest(
            plan.targetApi,
            'PUT',
            `/v1/regions/${encodeURIComponent(plan.targetName)}/descriptor`,
            { descriptor },
            MIGRATION_ADMIN_TIMEOUT_MS,
          ),
        );
      }
      this.checkCancelled();
      // The point of no return: B holds every byte A acknowledged, and A accepts no more.
      committed = true;
      const movedTo: MovedTo = { appliance: plan.target, region: plan.targetName, nbd };
      const moving = this.appliance.registry.markMoved(region, movedTo);
      const ended = this.appliance.nbdServer.disconnectExport(
        region,
        `region ${region.name} moved to ${plan.target}`,
      );
      this.movedTo = movedTo;
      this.blackout = { pages: last.length, ms: round3(performance.now() - blackoutStarted) };
      this.finish('done');
      this.log('migration done', { blackout: this.blackout, connectionsEnded: ended });
      await moving.catch((error: unknown) =>
        this.appliance.logger?.error({ err: error, region: region.name }, 'freeing a moved region failed'),
      );
      await client.disconnect().catch(() => client.destroy());
    } catch (error) {
      if (committed) {
        this.appliance.logger?.error({ err: error, region: region.name }, 'after migrating');
        return;
      }
      if (region.gate === GATE_BLACKOUT) region.gate = GATE_OPEN;
      this.client?.destroy();
      this.error = describe(error);
      // Not in the blackout any more: clients waiting it out go back to A at once.
      this.state = 'aborting';
      if (created) this.targetCleanedUp = await this.deleteOnTarget();
      this.finish('failed');
      this.appliance.logger?.warn(
        { region: region.name, migration: this.id, target: plan.target, error: this.error },
        'migration failed; the region stays here',
      );
    } finally {
      region.migrating = false;
      this.running = false;
    }
  }

  private beginRound(round: number, pages: number): void {
    this.round = round;
    this.roundTotal = pages;
    this.roundCopied = 0;
  }

  /** Records the round; returns the pages it copied. */
  private endRound(started: number): number {
    const entry = { round: this.round, pages: this.roundCopied, ms: round3(performance.now() - started) };
    this.rounds.push(entry);
    this.log('migration round', entry);
    return this.roundCopied;
  }

  private finish(state: 'done' | 'failed'): void {
    this.state = state;
    this.finishedAt = new Date();
  }

  private checkCancelled(): void {
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
  }

  /** Waits for `work` unless the migration is cancelled first (then `work` is left to settle). */
  private async unlessCancelled<T>(work: Promise<T>): Promise<T> {
    const signal = this.abort.signal;
    this.checkCancelled();
    let onAbort = (): void => undefined;
    const cancelled = new Promise<never>((_resolve, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([work, cancelled]);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Deletes the partial region on the target; B may still count our closing connection. */
  private async deleteOnTarget(): Promise<boolean> {
    const path = `/v1/regions/${encodeURIComponent(this.plan.targetName)}`;
    // A cancelled migration (the appliance stopping) spends little time on a silent target.
    const timeoutMs = this.abort.signal.aborted ? CLEANUP_CANCELLED_TIMEOUT_MS : MIGRATION_ADMIN_TIMEOUT_MS;
    for (let attempt = 1; attempt <= CLEANUP_ATTEMPTS_MAX; attempt++) {
      try {
        await adminRequest(this.plan.targetApi, 'DELETE', path, undefined, timeoutMs);
        return true;
      } catch (error) {
        const code = (error as MemfabricError).code;
        if (code === ErrorCodes.NOT_FOUND) return true;
        if (code !== ErrorCodes.BUSY) {
          this.appliance.logger?.warn(
            { err: error, target: this.plan.target, region: this.plan.targetName },
            'could not delete the partial region on the target',
          );
          return false;
        }
        await delay(CLEANUP_RETRY_MS);
      }
    }
    return false;
  }
}

/**
 * Copies pages of an address space to an NBD export at the same offsets, keeping up to
 * COPY_INFLIGHT_MAX requests in flight. Slots: each in-flight request owns one buffer of
 * COPY_RUN_PAGES_MAX pages; `free` holds the indexes of idle slots (free.length + inFlight ===
 * COPY_INFLIGHT_MAX). The first failed request fails the whole copy.
 */
class PageCopier {
  private readonly pageSize: number;
  private readonly buffers: Uint8Array[] = [];
  private readonly free: number[] = [];
  private inFlight = 0;
  private wake: (() => void) | null = null;
  private failure: unknown = undefined;
  private sinceYield = 0;
  /** Extents of one extents() call: lengths and flags (reused). */
  private readonly extentLengths = new Float64Array(EXTENTS_PER_STEP);
  private readonly extentFlags = new Uint8Array(EXTENTS_PER_STEP);
  private extentCount = 0;
  private readonly collect = (length: number, flags: number): void => {
    this.extentLengths[this.extentCount] = length;
    this.extentFlags[this.extentCount] = flags;
    this.extentCount++;
  };

  constructor(
    private readonly space: AddressSpace,
    private readonly client: NbdClient,
    private readonly signal: AbortSignal,
    private readonly progress: (pages: number) => void,
  ) {
    this.pageSize = space.pageSize;
    for (let i = 0; i < COPY_INFLIGHT_MAX; i++) {
      this.buffers.push(new Uint8Array(COPY_RUN_PAGES_MAX * this.pageSize));
      this.free.push(i);
    }
  }

  /** Copies the sorted, distinct `pages` as they are now (data, zeros or holes), then drains. */
  async copyPages(pages: Float64Array): Promise<void> {
    const size = this.space.size;
    let i = 0;
    while (i < pages.length) {
      const first = pages[i]!;
      let count = 1;
      while (i + count < pages.length && count < DIRTY_RUN_PAGES_MAX && pages[i + count] === first + count)
        count++;
      await this.scan(first * this.pageSize, Math.min(size, (first + count) * this.pageSize), true);
      i += count;
    }
    await this.drain();
  }

  /**
   * Copies [start, end) by extents: data is written, zero pages are zeroed (NO_HOLE), holes
   * are trimmed when `trimHoles` (else skipped: the target is known to be a hole there).
   */
  async copyRange(start: number, end: number, trimHoles: boolean): Promise<void> {
    await this.scan(start, end, trimHoles);
    await this.drain();
  }

  /** Sends the requests that copy [start, end); some may still be in flight when it returns. */
  private async scan(start: number, end: number, trimHoles: boolean): Promise<void> {
    const pageSize = this.pageSize;
    let pos = start;
    while (pos < end) {
      this.check();
      this.extentCount = 0;
      this.space.extents(
        pos,
        Math.min(end - pos, SCAN_PAGES_PER_STEP * pageSize),
        this.collect,
        EXTENTS_PER_STEP,
      );
      for (let e = 0; e < this.extentCount; e++) {
        const length = this.extentLengths[e]!;
        const flags = this.extentFlags[e]!;
        if (flags & EXTENT_HOLE) {
          if (trimHoles) await this.zeroOrTrim(pos, length, true);
        } else if (flags & EXTENT_ZERO) {
          await this.zeroOrTrim(pos, length, false);
        } else {
          await this.writeData(pos, length);
        }
        pos += length;
      }
      // A scan step costs about as much as copying a page, even over holes.
      this.sinceYield += 1;
      if (this.sinceYield >= COPY_BATCH_PAGES) await this.yield();
    }
  }

  private async writeData(offset: number, length: number): Promise<void> {
    const runBytes = COPY_RUN_PAGES_MAX * this.pageSize;
    for (let at = offset; at < offset + length; at += runBytes) {
      const n = Math.min(runBytes, offset + length - at);
      const slot = await this.acquire();
      // Read at the moment of sending: a write to A after this read dirties the page again.
      const data = this.buffers[slot]!.subarray(0, n);
      this.space.read(at, data);
      this.track(slot, this.client.write(at, data));
      await this.counted(n);
    }
  }

  private async zeroOrTrim(offset: number, length: number, hole: boolean): Promise<void> {
    for (let at = offset; at < offset + length; at += COPY_ZERO_BYTES_MAX) {
      const n = Math.min(COPY_ZERO_BYTES_MAX, offset + length - at);
      const slot = await this.acquire();
      this.track(slot, hole ? this.client.trim(at, n) : this.client.writeZeroes(at, n, { noHole: true }));
      await this.counted(n);
    }
  }

  private async counted(bytes: number): Promise<void> {
    const pages = Math.ceil(bytes / this.pageSize);
    this.progress(pages);
    this.sinceYield += pages;
    if (this.sinceYield >= COPY_BATCH_PAGES) await this.yield();
  }

  /** Lets A's clients run between batches. */
  private async yield(): Promise<void> {
    this.sinceYield = 0;
    await yieldToEventLoop();
    this.check();
  }

  private async acquire(): Promise<number> {
    while (this.free.length === 0) {
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    this.check();
    return this.free.pop()!;
  }

  private track(slot: number, request: Promise<void>): void {
    this.inFlight++;
    request.then(
      () => this.release(slot),
      (error: unknown) => {
        this.failure ??= error;
        this.release(slot);
      },
    );
  }

  private release(slot: number): void {
    this.inFlight--;
    this.free.push(slot);
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Waits for every request in flight; throws the first failure. */
  async drain(): Promise<void> {
    while (this.inFlight > 0) {
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    this.check();
  }

  private check(): void {
    if (this.signal.aborted) throw this.signal.reason;
    if (this.failure !== undefined) throw this.failure;
  }
}

/** An admin URL of the form http(s)://host[:port], returned as its origin. */
export function parseTarget(target: unknown): string {
  let url: URL | undefined;
  try {
    url = typeof target === 'string' ? new URL(target) : undefined;
  } catch {
    url = undefined;
  }
  if (
    url === undefined ||
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.username !== '' ||
    url.password !== '' ||
    url.search !== '' ||
    url.hash !== '' ||
    url.pathname !== '/'
  ) {
    throw invalidArgument(
      `target ${JSON.stringify(target)} must be an appliance admin URL like http://10.0.0.2:10880 (no path)`,
    );
  }
  return url.origin;
}

/** Where to reach an NBD server: a wildcard bind address becomes the admin URL's host. */
export function publicEndpoint(nbd: Endpoint, adminUrl: string): Endpoint {
  const wildcard = nbd.host === '' || nbd.host === '0.0.0.0' || nbd.host === '::';
  const host = wildcard ? new URL(adminUrl).hostname.replace(/^\[(.*)\]$/, '$1') : nbd.host;
  return { host, port: nbd.port };
}

function checkCount(value: number, min: number, max: number, what: string): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalidArgument(`${what} must be a whole number from ${min} to ${max}`);
  }
  return value;
}

function describe(error: unknown): { code: string; message: string } {
  if (error instanceof MemfabricError) return { code: error.code, message: error.message };
  return { code: ErrorCodes.INTERNAL, message: error instanceof Error ? error.message : String(error) };
}

function round3(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
