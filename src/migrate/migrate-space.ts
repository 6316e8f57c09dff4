/**
 * Live migration of an AddressSpace (or a Heap, whose whole state is its space) to another
 * process over TCP: the source's side. The program keeps reading and writing the space while
 * the pre-copy engine (engine.ts) copies it; after a short blackout the destination owns it
 * and the source's space refuses writes for good (reads still answer, as of the handover).
 *
 *   const migration = migrateSpace(space, { host, port });
 *   migration.progress();           // rounds, pages, bytes, dirty rate, bandwidth, expected downtime
 *   await migration.writable();     // async writers: serve auto-converge's delay, wait out the blackout
 *   const report = await migration.done;
 *
 * Failure before the handover (the destination dies or refuses, the network fails, cancel()):
 * `done` rejects with a typed error, the gate comes off, and the space goes on as before with
 * all its data. The protocol is in protocol.ts.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace } from '../memory/address-space.js';
import type { Heap } from '../heap/heap.js';
import { MessageConnection } from './connection.js';
import {
  PreCopyEngine,
  cancelledError,
  checkPreCopyOptions,
  idleProgress,
  type MigrationProgress,
  type MigrationReport,
  type PreCopyOptions,
} from './engine.js';
import {
  MSG_APPLIED,
  MSG_COMMIT,
  MSG_HANDOVER,
  MSG_HELLO,
  MSG_WELCOME,
  PROTOCOL_NAME,
  PROTOCOL_VERSION,
  connectionLost,
  type Hello,
  type MigrationKind,
  type MigrationMode,
} from './protocol.js';
import { Replies } from './replies.js';
import { runPostCopySource, type PostCopySourceReport } from './postcopy-source.js';
import { TcpPageSink } from './tcp-sink.js';
import { decodeJson, encodeJsonFrame } from './wire.js';

/** SYNCs sent before round 1 to measure the round trip. */
const RTT_PINGS = 3;

export interface MigrateSpaceOptions extends Omit<PreCopyOptions, 'onProgress'> {
  /** Called with the migration's status at each round and at most every 100 ms (also the 'progress' event). */
  onProgress?: (status: SpaceMigrationStatus) => void;
  /** The destination's MigrationListener. */
  host: string;
  port: number;
  /** 'precopy' (default) or 'postcopy' (opt-in: switch over at once, fault the rest from here). */
  mode?: MigrationMode;
  /** Give up connecting after this long, ms (default 10 000). */
  connectTimeoutMs?: number;
}

export interface SpaceMigrationReport extends MigrationReport {
  id: string;
  mode: MigrationMode;
  kind: MigrationKind;
  /** host:port of the destination. */
  destination: string;
  /** Post-copy only: pages moved by fault and by push, the switchover, the time to move them all. */
  postCopy?: PostCopySourceReport;
}

export interface SpaceMigrationStatus extends MigrationProgress {
  id: string;
}

/**
 * A migration under way (see the file header). Also an EventEmitter: 'progress' carries the
 * same SpaceMigrationStatus as `onProgress` (at each round and at most every 100 ms).
 */
export class Migration extends EventEmitter<{ progress: [SpaceMigrationStatus] }> {
  readonly id = randomUUID();
  /** Resolves with the report once the destination owns the space; rejects if it never will. */
  readonly done: Promise<SpaceMigrationReport>;
  private engine: PreCopyEngine | undefined;
  private readonly abort = new AbortController();
  private connection: MessageConnection | undefined;
  private finished = false;
  /** Post-copy: the space was handed over (cancel() changes nothing any more). */
  private switchedOver = false;
  private lastPostCopyStatus: SpaceMigrationStatus | undefined;
  private readonly options: MigrateSpaceOptions;

  /** @internal Use migrateSpace or migrateHeap. */
  constructor(space: AddressSpace, options: MigrateSpaceOptions, kind: MigrationKind) {
    super();
    checkOptions(space, options);
    if (kind === 'heap' && options.mode === 'postcopy') {
      throw invalidArgument(
        'a heap migrates by pre-copy only (its image must be whole at the destination before it opens); leave mode unset',
      );
    }
    this.options = options;
    const signal = options.signal;
    if (signal?.aborted) this.abort.abort(signal.reason);
    else signal?.addEventListener('abort', () => this.abort.abort(signal.reason), { once: true });
    this.done = this.run(space, options, kind).finally(() => {
      this.finished = true;
    });
    // The caller may only look at progress; an unobserved failure must not crash the process.
    this.done.catch(() => undefined);
  }

  /** Where the migration stands: rounds, pages, bytes, dirty rate, bandwidth, expected downtime. */
  progress(): SpaceMigrationStatus {
    if (this.lastPostCopyStatus) return { ...this.lastPostCopyStatus };
    if (this.engine) return { id: this.id, ...this.engine.progress() };
    return { id: this.id, ...idleProgress(this.finished ? 'failed' : 'connecting') };
  }

  /**
   * Stops the migration if it has not handed over yet: `done` rejects (MF_MIGRATING, "cancelled")
   * and the space goes on with all its data. After the handover it changes nothing.
   */
  cancel(reason = 'the migration was cancelled'): void {
    if (this.finished || this.engine?.committed || this.switchedOver) return;
    this.abort.abort(
      new MemfabricError(ErrorCodes.MIGRATING, `${reason}; the source keeps its data and its writes go on`),
    );
    // Wake a wait on the destination at once.
    this.connection?.abort(
      new MemfabricError(ErrorCodes.MIGRATING, `the source cancelled the migration: ${reason}`),
    );
  }

  /**
   * For async writers: resolves when writing may go on (after auto-converge's delay, or after a
   * blackout that failed), rejects with MF_MIGRATING once the space has moved.
   */
  async writable(): Promise<void> {
    if (this.engine) return this.engine.gate.writable();
  }

  private async run(
    space: AddressSpace,
    options: MigrateSpaceOptions,
    kind: MigrationKind,
  ): Promise<SpaceMigrationReport> {
    const mode = options.mode ?? 'precopy';
    const destination = `${options.host}:${options.port}`;
    const signal = this.abort.signal;
    const connection = await MessageConnection.connect({
      host: options.host,
      port: options.port,
      signal,
      ...(options.connectTimeoutMs !== undefined ? { timeoutMs: options.connectTimeoutMs } : {}),
    }).catch((error: unknown) => {
      if (signal.aborted) throw cancelledError(signal);
      throw error;
    });
    this.connection = connection;
    try {
      if (signal.aborted) throw cancelledError(signal);
      const replies = new Replies(connection, (cause) =>
        connectionLost(
          cause,
          `the migration to ${destination} failed before the handover; the space stays here with all its data`,
        ),
      );
      const hello: Hello = {
        protocol: PROTOCOL_NAME,
        version: PROTOCOL_VERSION,
        mode,
        kind,
        size: space.size,
        pageSize: space.pageSize,
        epoch: space.epoch,
        id: this.id,
      };
      const welcomed = replies.expect(MSG_WELCOME);
      connection.post(encodeJsonFrame(MSG_HELLO, hello));
      const welcome = decodeJson<{ id?: unknown }>(await welcomed);
      if (welcome.id !== this.id) throw replies.violation('WELCOME names another migration');
      // Post-copy: its protocol reads the connection from here on (it sets its own handler; the
      // source speaks first, so nothing arrives for `replies` in between).
      if (mode === 'postcopy') return await this.runPostCopy(space, connection, destination, kind);
      const sink = new TcpPageSink(connection, replies, space.pageSize);
      // Empty SYNCs measure the round trip the handover will cost (the sink keeps the shortest).
      for (let ping = 0; ping < RTT_PINGS; ping++) await sink.sync();
      if (signal.aborted) throw cancelledError(signal);
      const engine = new PreCopyEngine(space, sink, {
        ...options,
        signal,
        onProgress: (progress) => {
          const status = { id: this.id, ...progress };
          options.onProgress?.(status);
          this.emit('progress', status);
        },
      });
      this.engine = engine;
      const report = await engine.run({
        destination,
        handover: async (finalEpoch) => {
          const applied = replies.expect(MSG_APPLIED);
          connection.post(encodeJsonFrame(MSG_HANDOVER, { finalEpoch }));
          const answer = decodeJson<{ epoch?: unknown }>(await applied);
          if (typeof answer.epoch !== 'number' || answer.epoch < finalEpoch) {
            throw replies.violation(`APPLIED reports epoch ${String(answer.epoch)}, below ${finalEpoch}`);
          }
        },
        commit: () => connection.post(encodeJsonFrame(MSG_COMMIT, {})),
      });
      // The destination owns the space; end the connection once COMMIT is flushed.
      await connection.close().catch(() => undefined);
      return { ...report, id: this.id, mode, kind, destination };
    } catch (error) {
      const failure =
        error instanceof MemfabricError
          ? error
          : new MemfabricError(ErrorCodes.INTERNAL, `migration failed: ${(error as Error).message}`, {
              cause: error,
            });
      connection.abort(failure);
      throw failure;
    }
  }

  /**
   * Post-copy (opt-in): hands the space over at once and serves its pages from here until all
   * have moved (postcopy-source.ts). `done` resolves when the last page has moved; the space is
   * gated from the switchover on, and cancel() no longer changes anything after it.
   */
  private async runPostCopy(
    space: AddressSpace,
    connection: MessageConnection,
    destination: string,
    kind: MigrationKind,
  ): Promise<SpaceMigrationReport> {
    const started = performance.now();
    const report = await runPostCopySource(space, connection, {
      migrationId: this.id,
      onSwitchover: () => {
        this.switchedOver = true;
      },
      onProgress: (moving) => {
        const status: SpaceMigrationStatus = {
          id: this.id,
          ...idleProgress('copying', performance.now() - started),
          round: 1,
          pagesSent: moving.served + moving.pushed,
          bytesSent: moving.bytesSent,
          pagesRemaining: moving.remaining,
        };
        this.lastPostCopyStatus = status;
        this.options.onProgress?.(status);
        this.emit('progress', status);
      },
    });
    await connection.close().catch(() => undefined);
    const totalMs = performance.now() - started;
    return {
      id: this.id,
      mode: 'postcopy',
      kind,
      destination,
      rounds: [],
      stopReason: 'post-copy',
      pagesSent: report.served + report.pushed,
      pagesSkipped: report.notNeeded,
      bytesSent: report.bytesSent,
      blackoutPages: 0,
      dirtyRatePagesPerSec: 0,
      dirtyRateBytesPerSec: 0,
      bandwidthBytesPerSec: totalMs > 0 ? (report.bytesSent * 1000) / totalMs : 0,
      expectedDowntimeMs: 0,
      downtimeMs: report.switchoverMs,
      totalMs,
      finalEpoch: space.epoch,
      throttle: { levelMax: 0, pagesDelayed: 0, delayMs: 0, parkedMs: 0, awaitedMs: 0 },
      postCopy: report,
    };
  }
}

/**
 * Starts migrating `space` to the MigrationListener at `host:port` (see the file header).
 * Throws at once (changing nothing) for bad options or a space already migrating.
 */
export function migrateSpace(space: AddressSpace, options: MigrateSpaceOptions): Migration {
  return new Migration(space, options, 'space');
}

/**
 * Migrates a persistent Heap: its allocator, roots and every value live in `heap.space`, so
 * the destination's `incoming.heap({ path })` reopens it whole. The source heap refuses writes
 * once the migration is done; close it (its last checkpoint changes nothing) when you like.
 */
export function migrateHeap(heap: Heap, options: MigrateSpaceOptions): Migration {
  return new Migration(heap.space, options, 'heap');
}

function checkOptions(space: AddressSpace, options: MigrateSpaceOptions): void {
  if (typeof options !== 'object' || options === null) throw invalidArgument('migrate options are required');
  if (typeof options.host !== 'string' || options.host === '') {
    throw invalidArgument('host must name the destination (the MigrationListener), e.g. "10.0.0.2"');
  }
  if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) {
    throw invalidArgument(`port ${String(options.port)} must be the listener's TCP port, 1 to 65535`);
  }
  if (options.mode !== undefined && options.mode !== 'precopy' && options.mode !== 'postcopy') {
    throw invalidArgument(`mode ${String(options.mode)} must be "precopy" or "postcopy"`);
  }
  checkPreCopyOptions({ ...options, onProgress: undefined });
  if (space.isDestroyed) {
    throw new MemfabricError(
      ErrorCodes.DESTROYED,
      'this address space was destroyed; there is nothing to migrate',
    );
  }
  if (space.writeGate !== undefined) {
    throw new MemfabricError(
      ErrorCodes.MIGRATING,
      'this address space is already being migrated or replicated (or has moved); wait for that to finish first',
    );
  }
}
