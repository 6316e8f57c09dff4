/**
 * Region migration between appliances: memory moved from one region to another without
 * passing through the clients (seed 001), by iterative pre-copy while the source keeps
 * serving, dirty tracking and a short final blackout (seed 002).
 *
 * Appliance A (this one) copies its region R to appliance B: A reads its own memory and writes
 * it to B over NBD; R's clients keep reading and writing R on A until the blackout, and then
 * find it on B through the `movedTo` that A publishes. The rounds, the dirty epochs, the
 * downtime target and the blackout are the pre-copy engine's (src/migrate/engine.ts, the one
 * engine every migration runs on, where the invariant is argued); this file is the transport:
 * the NBD sink (migration-sink.ts), the handover, and what an appliance does around them.
 *
 *   1. Prepare. With the token given for B (`targetToken`): GET B/v1/stats (B's NBD endpoint and
 *      free memory: a region whose data cannot fit is refused before anything is created),
 *      POST B/v1/regions (same size and tenant, file-backed if R is, R's fabric descriptor if
 *      it carries one; the name R or `targetName`), open an NbdClient to it and time a few
 *      round trips (the engine adds two to the expected downtime).
 *   2. Pre-copy (the engine). Round 1 sends every page of R that is not a hole: data pages as
 *      NBD WRITEs, zero pages (and data pages that read as zeros) as WRITE_ZEROES with NO_HOLE;
 *      holes are skipped (B's region is new, hence all holes). Round k sends the pages dirtied
 *      since round k−1 began as they are now (a hole becomes a TRIM on B). After each round the
 *      engine blacks out once the dirty set can be sent within `maxDowntimeMs` at the bandwidth
 *      it measured (QEMU's rule), or after `maxRounds`, or when the set stopped shrinking.
 *   3. Blackout. The engine closes R's write gate (src/migrate/gate.ts, installed on R's space;
 *      Region.gate reads it) in the step that decides: writes, trims and zeroes to R fail with
 *      MF_MIGRATING, which NBD answers with ESHUTDOWN, and change nothing; reads go on,
 *      descriptor replacements are refused (MF_MIGRATING). It sends the last dirty set and
 *      drains it; then the handover: FLUSH B, send R's descriptor again if it was replaced
 *      since step 1 (PUT B/v1/regions/:name/descriptor). Then, in one synchronous step, the
 *      gate moves for good and R is marked moved: its name answers `movedTo`
 *      (GET /v1/regions/:name), its NBD connections are ended and new ones refused (unknown
 *      export), its memory and files are freed.
 *
 * Why nothing acknowledged is lost: the engine's invariant (B applies one connection's requests
 * in order; each page is sent at most once per round; every round is drained before the next
 * decision) makes B equal to A at the blackout. A write A acknowledged before the blackout is
 * on B when the migration is done; a write refused during the blackout (ESHUTDOWN) was never
 * acknowledged and must be retried by the client where resolveRegion (src/fabric/follow.ts)
 * now points.
 *
 * Failure (B unreachable or out of memory, a copy or the flush refused, the appliance
 * stopping) before R is marked moved: the engine reopens R's gate and takes it off, so A serves
 * exactly as before with all its data (a write refused during a failed blackout is retried at
 * A), and the partial region on B is deleted (retried while B still counts our closing NBD
 * connection). `failed` carries the cause's code and message.
 *
 * Auto-converge is off for regions. The engine's throttle parks a writer that owes it delay
 * synchronously (Atomics.wait), and a region's writers are NBD requests served on the
 * appliance's one thread: parking would stall every region's clients and the copy itself.
 * Slowing one region means delaying its NBD write replies, which the throttle cannot do yet.
 *
 * Pacing: data goes in runs of at most COPY_RUN_PAGES_MAX pages, COPY_INFLIGHT_MAX requests in
 * flight (migration-sink.ts); the engine yields to the event loop between batches of pages, so
 * A's clients wait at most one batch of memcpy for their turn.
 *
 * What is not moved: chunk allocations (chunk-routes.ts) and the page-sharing of clones and
 * merged pages (B stores every data page on its own until B's merger finds it). Read-only
 * regions are refused (B could not be written).
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import {
  MAX_DOWNTIME_DEFAULT_MS,
  MAX_DOWNTIME_MAX_MS,
  MAX_ROUNDS_DEFAULT,
  MAX_ROUNDS_MAX,
  PreCopyEngine,
  checkPreCopyOptions,
  idleProgress,
  type Handover,
  type MigrationProgress,
  type StopReason,
} from '../migrate/engine.js';
import type { ThrottleReport } from '../migrate/throttle.js';
import { NbdClient } from '../nbd/index.js';
import { adminRequest, type AdminTarget } from './admin-client.js';
import type { Appliance, Endpoint } from './appliance.js';
import { COPY_INFLIGHT_MAX, NbdPageSink } from './migration-sink.js';
import type { MovedTo, Region } from './region.js';

export { MAX_DOWNTIME_DEFAULT_MS, MAX_DOWNTIME_MAX_MS, MAX_ROUNDS_DEFAULT, MAX_ROUNDS_MAX };
/** Calls to B's admin API; B's NBD requests. */
export const MIGRATION_ADMIN_TIMEOUT_MS = 10_000;
export const MIGRATION_NBD_TIMEOUT_MS = 10_000;
/** Round trips timed before the copy (the fastest one counts). */
const RTT_PROBES = 3;
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
  /** Pre-copy rounds (round 1 included) before the blackout at the latest (default 30). */
  maxRounds?: number;
  /** Longest blackout to aim for, ms (default 30): the engine's downtime target. */
  maxDowntimeMs?: number;
  /** Only `false` is accepted for a region (see the file header); the default. */
  autoConverge?: boolean;
}

export interface MigrationRound {
  round: number;
  /** Pages sent to B in this round (data, zero and trimmed pages). */
  pages: number;
  /** Bytes put on the wire for them (NBD request headers and data). */
  bytes: number;
  ms: number;
  /** Pages dirtied while the round ran (the next round's set, or the blackout's). */
  dirtyAfter: number;
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
  /** Bytes put on the wire to B so far (NBD request headers and data). */
  bytesSent: number;
  /** Pages of the current round (or of the blackout) not yet sent. */
  dirtyRemaining: number;
  /** The dirty set at the engine's last decision, pages. */
  dirtyPages: number;
  /** Pages R's clients dirtied per second during the last round, and as bytes. */
  dirtyRatePagesPerSec: number;
  dirtyRateBytesPerSec: number;
  /** Bytes per second B applied over the last rounds. */
  bandwidthBytesPerSec: number;
  /**
   * What a blackout would cost now, ms (before it); what the engine expected it to cost when it
   * started it (after). Null while it cannot be known (pages dirty, no bandwidth measured yet).
   */
  expectedDowntimeMs: number | null;
  /** One NBD round trip to B, ms (the fastest of a few before the copy). */
  rttMs: number;
  /** Completed rounds. */
  rounds: MigrationRound[];
  /** Why the pre-copy stopped: 'converged', 'max-rounds' or 'not-converging'. */
  stopReason: StopReason | null;
  /** The blackout: pages sent in it, and its measured length (writes refused until acknowledged). */
  blackout: { pages: number; ms: number } | null;
  /** Auto-converge's throttle (always level 0 for a region; see the file header). */
  throttle: ThrottleReport & { level: number };
  movedTo: MovedTo | null;
  error: { code: string; message: string } | null;
  /** Failure only: whether the partial region on the target was deleted. */
  targetCleanedUp: boolean | null;
  maxRounds: number;
  maxDowntimeMs: number;
  autoConverge: boolean;
  startedAt: string;
  finishedAt: string | null;
}

/** What the appliance's metrics show of its migrations (see metrics.ts). */
export interface MigrationTotals {
  inProgress: number;
  done: number;
  failed: number;
  pagesSent: number;
  bytesSent: number;
  rounds: number;
  /** The last completed migration's measured blackout, ms (null before the first). */
  lastBlackoutMs: number | null;
}

interface TargetStats {
  memory: { pageSize: number; freeBytes: number };
  endpoints: { nbd: Endpoint };
}

/** The appliance's migrations, one at a time per region. */
export class MigrationManager {
  private readonly migrations = new Map<string, Migration>();
  private closed = false;
  /** Sums over the migrations that finished (counters keep counting after one is forgotten). */
  private readonly ended = { done: 0, failed: 0, pagesSent: 0, bytesSent: 0, rounds: 0 };
  private lastBlackoutMs: number | null = null;

  constructor(private readonly appliance: Appliance) {}

  /** Starts migrating region `name`; throws (changing nothing) if it cannot start. */
  start(name: string, options: MigrateOptions): MigrationStatus {
    if (this.closed) throw new MemfabricError(ErrorCodes.BUSY, 'the appliance is stopping');
    const region = this.appliance.registry.require(name);
    const target = parseTarget(options.target);
    if (options.autoConverge === true) {
      throw invalidArgument(
        'autoConverge is not available for an appliance region: slowing its writers would stall every client of the appliance; leave it out, or raise maxDowntimeMs or maxRounds',
      );
    }
    const checked = checkPreCopyOptions({
      ...(options.maxRounds !== undefined ? { maxRounds: options.maxRounds } : {}),
      ...(options.maxDowntimeMs !== undefined ? { maxDowntimeMs: options.maxDowntimeMs } : {}),
      autoConverge: false,
    });
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
    const migration = new Migration(
      this.appliance,
      region,
      {
        target,
        targetApi: {
          url: target,
          ...(options.targetToken !== undefined ? { token: options.targetToken } : {}),
          ...(this.appliance.peerCa !== undefined ? { ca: this.appliance.peerCa } : {}),
        },
        targetName: options.targetName ?? name,
        maxRounds: checked.maxRounds,
        maxDowntimeMs: checked.maxDowntimeMs,
      },
      (ended) => this.record(ended),
    );
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

  /** Every migration's figures together, finished and under way (for the metrics). */
  totals(): MigrationTotals {
    const totals: MigrationTotals = { inProgress: 0, ...this.ended, lastBlackoutMs: this.lastBlackoutMs };
    for (const migration of this.migrations.values()) {
      if (migration.finished) continue;
      const status = migration.status();
      // Ended but still letting go of its connection: already in the sums.
      if (status.state === 'done' || status.state === 'failed') continue;
      totals.inProgress++;
      totals.pagesSent += status.pagesCopied;
      totals.bytesSent += status.bytesSent;
      totals.rounds += status.rounds.length;
    }
    return totals;
  }

  /** Fails every migration under way (their regions stay here) and waits for them to settle. */
  async close(): Promise<void> {
    this.closed = true;
    const running = [...this.migrations.values()].filter((m) => !m.finished);
    for (const migration of running) migration.cancel('the appliance is stopping');
    await Promise.all(running.map((m) => m.settled));
  }

  /** A migration ended: its figures join the sums. */
  private record(status: MigrationStatus): void {
    if (status.state === 'done') this.ended.done++;
    else this.ended.failed++;
    this.ended.pagesSent += status.pagesCopied;
    this.ended.bytesSent += status.bytesSent;
    this.ended.rounds += status.rounds.length;
    if (status.blackout !== null && status.state === 'done') this.lastBlackoutMs = status.blackout.ms;
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
  maxDowntimeMs: number;
}

/** The engine's progress before it starts. */
const NO_PROGRESS: MigrationProgress = idleProgress('copying');

const NO_THROTTLE: ThrottleReport = { levelMax: 0, pagesDelayed: 0, delayMs: 0, parkedMs: 0, awaitedMs: 0 };

class Migration {
  readonly id = randomUUID();
  settled: Promise<void> = Promise.resolve();
  private state: MigrationState = 'preparing';
  private rounds: MigrationRound[] = [];
  /** The round being reconstructed from the engine's progress calls (0: none open). */
  private roundOpen = 0;
  private roundStart = { pages: 0, bytes: 0, at: 0 };
  private stopReason: StopReason | null = null;
  private blackout: { pages: number; ms: number } | null = null;
  private expectedDowntimeMs: number | null = null;
  private rttMs = 0;
  private throttle: ThrottleReport = NO_THROTTLE;
  private movedTo: MovedTo | null = null;
  private error: { code: string; message: string } | null = null;
  private targetCleanedUp: boolean | null = null;
  private readonly startedAt = new Date();
  private finishedAt: Date | null = null;
  private readonly abort = new AbortController();
  private client: NbdClient | undefined;
  /** The engine while it runs; its last progress once it is done (the engine is let go). */
  private engine: PreCopyEngine | undefined;
  private last: MigrationProgress = NO_PROGRESS;
  private running = false;

  constructor(
    private readonly appliance: Appliance,
    private readonly region: Region,
    private readonly plan: MigrationPlan,
    private readonly onEnd: (status: MigrationStatus) => void,
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
    const progress = this.engine?.progress() ?? this.last;
    const over = this.state === 'done' || this.state === 'failed';
    return {
      id: this.id,
      region: this.region.name,
      target: { appliance: this.plan.target, region: this.plan.targetName },
      state: this.state,
      round: progress.round,
      pagesCopied: progress.pagesSent,
      bytesSent: progress.bytesSent,
      dirtyRemaining: over ? 0 : progress.pagesRemaining,
      dirtyPages: progress.dirtyPages,
      dirtyRatePagesPerSec: progress.dirtyRatePagesPerSec,
      dirtyRateBytesPerSec: progress.dirtyRateBytesPerSec,
      bandwidthBytesPerSec: progress.bandwidthBytesPerSec,
      expectedDowntimeMs: finite(this.expectedDowntimeMs ?? progress.expectedDowntimeMs),
      rttMs: this.rttMs,
      rounds: this.rounds.map((r) => ({ ...r })),
      stopReason: this.stopReason,
      blackout: this.blackout ? { ...this.blackout } : null,
      throttle: { level: progress.throttleLevel, ...this.throttle },
      movedTo: this.movedTo,
      error: this.error ? { ...this.error } : null,
      targetCleanedUp: this.targetCleanedUp,
      maxRounds: this.plan.maxRounds,
      maxDowntimeMs: this.plan.maxDowntimeMs,
      autoConverge: false,
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
    let moving: Promise<unknown> = Promise.resolve();
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
      this.rttMs = round3(
        await this.unlessCancelled(roundTrip(client, Math.min(region.size, space.pageSize))),
      );

      const movedTo: MovedTo = { appliance: plan.target, region: plan.targetName, nbd };
      const handover: Handover = {
        destination: `${plan.target} (region ${plan.targetName})`,
        handover: async () => {
          await this.unlessCancelled(client.flush());
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
        },
        // The point of no return, in the engine's step that moves the gate: B holds every byte
        // A acknowledged, and A accepts no more.
        commit: () => {
          committed = true;
          this.movedTo = movedTo;
          moving = this.appliance.registry.markMoved(region, movedTo);
          const ended = this.appliance.nbdServer.disconnectExport(
            region,
            `region ${region.name} moved to ${plan.target}`,
          );
          this.log('migration committed', { connectionsEnded: ended });
        },
      };
      const engine = new PreCopyEngine(space, new NbdPageSink(client, space.pageSize, region.size), {
        maxDowntimeMs: plan.maxDowntimeMs,
        maxRounds: plan.maxRounds,
        autoConverge: false,
        rttMs: this.rttMs,
        signal: this.abort.signal,
        onProgress: (progress) => this.onProgress(progress),
      });
      this.engine = engine;
      this.state = 'copying';
      const report = await engine.run(handover);
      this.rounds = report.rounds.map((r) => ({ ...r }));
      this.stopReason = report.stopReason;
      this.blackout = { pages: report.blackoutPages, ms: report.downtimeMs };
      this.expectedDowntimeMs = report.expectedDowntimeMs;
      this.throttle = report.throttle;
      this.finish('done');
      this.log('migration done', {
        blackout: this.blackout,
        expectedDowntimeMs: report.expectedDowntimeMs,
        stopReason: report.stopReason,
        bandwidthBytesPerSec: report.bandwidthBytesPerSec,
      });
      await moving.catch((error: unknown) =>
        this.appliance.logger?.error({ err: error, region: region.name }, 'freeing a moved region failed'),
      );
      await client.disconnect().catch(() => client.destroy());
    } catch (error) {
      if (committed) {
        // The engine commits before it returns; nothing after the commit can undo the move.
        if (this.state !== 'done') this.finish('done');
        this.appliance.logger?.error({ err: error, region: region.name }, 'after migrating');
        return;
      }
      // The engine has reopened the gate and taken it off: A serves R again.
      this.client?.destroy();
      this.error = describe(this.abort.signal.aborted ? this.abort.signal.reason : error);
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

  /**
   * The engine reports at every round's start and end and at the blackout; the rounds are
   * rebuilt from these calls while it runs, so the status lists each round as it completes
   * (the engine's report replaces them at the end).
   */
  private onProgress(progress: MigrationProgress): void {
    const now = performance.now();
    if (this.roundOpen > 0 && (progress.round !== this.roundOpen || progress.phase !== 'copying')) {
      if (progress.phase === 'copying' || progress.phase === 'blackout') {
        const round: MigrationRound = {
          round: this.roundOpen,
          pages: progress.pagesSent - this.roundStart.pages,
          bytes: progress.bytesSent - this.roundStart.bytes,
          ms: round3(now - this.roundStart.at),
          dirtyAfter: progress.dirtyPages,
        };
        this.rounds.push(round);
        this.log('migration round', { ...round });
      }
      this.roundOpen = 0;
    }
    if (progress.phase === 'copying' && this.roundOpen === 0 && progress.round > this.rounds.length) {
      this.roundOpen = progress.round;
      this.roundStart = { pages: progress.pagesSent, bytes: progress.bytesSent, at: now };
    }
    if (progress.phase === 'blackout' && this.state === 'copying') {
      this.state = 'blackout';
      this.log('migration blackout', {
        pages: progress.pagesRemaining,
        rounds: progress.round,
        expectedDowntimeMs: progress.expectedDowntimeMs,
      });
    }
  }

  private finish(state: 'done' | 'failed'): void {
    if (this.engine) {
      this.last = this.engine.progress();
      this.throttle = this.engine.gate.throttle.snapshot();
    }
    // The engine holds the region's space and the sink its buffers: let them go.
    this.engine = undefined;
    this.roundOpen = 0;
    this.state = state;
    this.finishedAt = new Date();
    this.onEnd(this.status());
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

/** The fastest of RTT_PROBES reads of `length` bytes from the target's region, ms. */
async function roundTrip(client: NbdClient, length: number): Promise<number> {
  if (length === 0) return 0;
  let fastest = Number.POSITIVE_INFINITY;
  for (let probe = 0; probe < RTT_PROBES; probe++) {
    const started = performance.now();
    await client.read(0, length);
    fastest = Math.min(fastest, performance.now() - started);
  }
  return fastest;
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

function describe(error: unknown): { code: string; message: string } {
  if (error instanceof MemfabricError) return { code: error.code, message: error.message };
  return { code: ErrorCodes.INTERNAL, message: error instanceof Error ? error.message : String(error) };
}

function finite(value: number): number | null {
  return Number.isFinite(value) ? value : null;
}

function round3(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
