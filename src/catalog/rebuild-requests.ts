/**
 * The owner's side of the fleet controller's rebuilds. Two writers on one region corrupt its
 * parity (only the client that has it open holds its stripe locks), so the controller never
 * rebuilds a region a client has open: it puts a rebuild request under
 * /memfabric/v1/controller/rebuild/<tenant>/<name>, and the fleet-mode Fabric that has the
 * region open rebuilds it itself, here.
 *
 * A Fabric in fleet mode keeps one RebuildRequests for the regions it allocated or opened. It
 * watches the request prefix; on a request for one of them (same region id) it:
 *   1. flushes the region when the request names an appliance whose shard the region still
 *      counts live (a dead appliance's shard is noticed lost by its next I/O: the flush is that
 *      I/O, and its loss is recorded in the descriptor before the flush returns);
 *   2. calls region.rebuild() with the request's rate, writing its progress into the request
 *      (at most every PROGRESS_MS);
 *   3. deletes the request when done, or records `failed` with the reason in it.
 * A shard that answered the flush is not lost (its appliance only lost its etcd lease): it is
 * kept, and the request is marked failed saying so; the controller retries later.
 *
 * Regions are held by WeakRef: a region closed or dropped by the application is never kept
 * alive by this, and a request for a closed one is ignored (its rebuild fails MF_DESTROYED).
 */
import type { IKeyValue, Watcher } from 'etcd3';
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { ExternalRegion } from '../fabric/external-region.js';
import { EtcdConnection, EtcdKeys, type EtcdOptions } from './etcd.js';

/** The prefix of rebuild requests (one key per region). */
export const REBUILD_REQUESTS_PREFIX = `${EtcdKeys.controller}rebuild/`;
/** The request key of one region. */
export function rebuildRequestKey(tenant: string, name: string): string {
  return `${REBUILD_REQUESTS_PREFIX}${encodeURIComponent(tenant)}/${encodeURIComponent(name)}`;
}

/** Progress is written into the request at most this often. */
const PROGRESS_MS = 500;
/** Longest wait for etcd to confirm the watch's cancel on close. */
const CANCEL_MS_MAX = 1000;
/** Wait before the watch is tried again after etcd failed to start it. */
const RETRY_MS = 1000;

/** What the controller asks of a region's owner (JSON value of the request key). */
export interface RebuildRequest {
  tenant: string;
  name: string;
  /** The region's id: a request for an older region under the same name is ignored. */
  regionId: string;
  /** The generation the controller saw. */
  generation: number;
  /** Admin URLs of the appliances whose shards are lost or not live in etcd. */
  lostAppliances: string[];
  /** Refill rate per shard (bytes per second), or absent for unlimited. */
  bytesPerSecond?: number;
  requestedAt: number;
  /** The controller that asked. */
  by: string;
  /** Written by the owner while it rebuilds. */
  progress?: { bytesDone: number; bytesTotal: number; at: number };
  /** Written by the owner when the rebuild failed (the request is then left for the controller). */
  failed?: { reason: string; code?: string; at: number };
}

/** A request's value, or undefined when it is not one. */
export function parseRebuildRequest(value: Buffer | string): RebuildRequest | undefined {
  try {
    const r = JSON.parse(value.toString()) as Partial<RebuildRequest>;
    if (
      typeof r.tenant === 'string' &&
      typeof r.name === 'string' &&
      typeof r.regionId === 'string' &&
      Number.isSafeInteger(r.generation) &&
      Array.isArray(r.lostAppliances) &&
      r.lostAppliances.every((url) => typeof url === 'string')
    ) {
      return r as RebuildRequest;
    }
  } catch {
    // not JSON
  }
  return undefined;
}

export interface RebuildRequestsOptions {
  etcd: EtcdOptions;
  /** Where failures are reported (default: nowhere). */
  warn?: (message: string) => void;
}

export class RebuildRequests {
  private readonly connection: EtcdConnection;
  private readonly warn: (message: string) => void;
  private readonly regions = new Map<string, WeakRef<ExternalRegion>>();
  /** Requests being handled, by key: one rebuild per region at a time. */
  private readonly handling = new Map<string, Promise<void>>();
  private watcher: Watcher | undefined;
  private starting: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(options: RebuildRequestsOptions) {
    this.connection = new EtcdConnection(options.etcd);
    this.warn = options.warn ?? (() => undefined);
  }

  /** Answers requests for `region` from now on (and one already waiting for it). */
  track(region: ExternalRegion): void {
    if (this.closed) return;
    const key = rebuildRequestKey(region.tenant, region.name);
    this.regions.set(key, new WeakRef(region));
    this.watch();
    void this.connection
      .run(`read the rebuild request of ${region.tenant}/${region.name}`, () =>
        this.connection.client.kv.range({ key: Buffer.from(key) }),
      )
      .then((answer) => {
        const kv = answer.kvs[0];
        if (kv) this.onRequest(kv);
      })
      .catch((error: unknown) => this.warn(`rebuild requests: ${(error as Error).message}`));
  }

  /** Stops answering requests for `region`. */
  untrack(region: ExternalRegion): void {
    const key = rebuildRequestKey(region.tenant, region.name);
    if (this.regions.get(key)?.deref() === region) this.regions.delete(key);
  }

  /** Stops watching; rebuilds in progress finish (their regions are the application's). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.regions.clear();
    await this.starting?.catch(() => undefined);
    // etcd answers a cancel; one that does not (its member just died) is not waited for longer.
    const watcher = this.watcher;
    this.watcher = undefined;
    if (watcher) {
      await Promise.race([
        watcher.cancel().catch(() => undefined),
        new Promise<void>((resolve) => setTimeout(resolve, CANCEL_MS_MAX).unref()),
      ]);
    }
    await Promise.allSettled(this.handling.values());
    this.connection.close();
  }

  /** Starts the watch once (again after a failure, every RETRY_MS while etcd is away). */
  private watch(): void {
    if (this.watcher || this.starting || this.closed) return;
    this.starting = this.connection
      .watch('watch rebuild requests', (client) => client.watch().prefix(REBUILD_REQUESTS_PREFIX))
      .then(async (watcher) => {
        if (this.closed) {
          await watcher.cancel().catch(() => undefined);
          return;
        }
        this.watcher = watcher;
        watcher.on('put', (kv) => this.onRequest(kv));
      })
      .catch((error: unknown) => {
        this.warn(`rebuild requests: ${(error as Error).message}; trying again`);
        this.retryTimer = setTimeout(() => this.watch(), RETRY_MS);
        this.retryTimer.unref();
      })
      .finally(() => {
        this.starting = undefined;
      });
  }

  private onRequest(kv: IKeyValue): void {
    const key = kv.key.toString();
    const region = this.regions.get(key)?.deref();
    if (!region) return;
    const request = parseRebuildRequest(kv.value);
    // Ours to answer: a fresh request for this very region (not one we failed, not progress we wrote).
    if (!request || request.regionId !== region.id || request.failed || request.progress) return;
    if (this.handling.has(key)) return;
    const run = this.answer(region, key, kv.create_revision, request).finally(() =>
      this.handling.delete(key),
    );
    this.handling.set(key, run);
  }

  private async answer(
    region: ExternalRegion,
    key: string,
    createRevision: string,
    request: RebuildRequest,
  ): Promise<void> {
    const what = `${request.tenant}/${request.name}`;
    try {
      const named = new Set(request.lostAppliances);
      const stillLive = (): boolean =>
        region.health().shards.some((shard) => shard.state === 'live' && named.has(shard.appliance));
      // Its appliance is gone from etcd but this region has not touched the shard since: the
      // flush is the I/O that notices (and records) the loss.
      if (stillLive()) await region.flush().catch(() => undefined);
      if (stillLive() && region.health().lost === 0) {
        throw new MemfabricError(
          ErrorCodes.CONFLICT,
          `every shard of ${what} still answers its owner (an appliance that lost its etcd lease but serves); nothing rebuilt`,
        );
      }
      let lastAt = 0;
      await region.rebuild({
        ...(request.bytesPerSecond ? { bytesPerSecond: request.bytesPerSecond } : {}),
        onProgress: ({ bytesDone, bytesTotal }) => {
          const now = Date.now();
          if (now - lastAt < PROGRESS_MS) return;
          lastAt = now;
          void this.rewrite(key, createRevision, {
            ...request,
            progress: { bytesDone, bytesTotal, at: now },
          });
        },
      });
      await this.connection.run(
        `delete the rebuild request of ${what}`,
        () =>
          this.connection.client.kv.txn({
            compare: [
              { key: Buffer.from(key), target: 'Create', result: 'Equal', create_revision: createRevision },
            ],
            success: [{ request_delete_range: { key: Buffer.from(key) } }],
            failure: [],
          }),
        'write',
      );
    } catch (error) {
      if (error instanceof MemfabricError && error.code === ErrorCodes.DESTROYED) {
        this.regions.delete(key); // closed by the application meanwhile
        return;
      }
      const reason = (error as Error).message;
      this.warn(`rebuild of ${what} asked by the controller failed: ${reason}`);
      await this.rewrite(key, createRevision, {
        ...request,
        failed: {
          reason,
          ...(error instanceof MemfabricError ? { code: error.code } : {}),
          at: Date.now(),
        },
      });
    }
  }

  /** Writes `value` into the request if it is still the same request (same create revision). */
  private async rewrite(key: string, createRevision: string, value: RebuildRequest): Promise<void> {
    const k = Buffer.from(key);
    await this.connection
      .run(
        'update a rebuild request',
        () =>
          this.connection.client.kv.txn({
            compare: [{ key: k, target: 'Create', result: 'Equal', create_revision: createRevision }],
            success: [{ request_put: { key: k, value: Buffer.from(JSON.stringify(value)) } }],
            failure: [],
          }),
        'write',
      )
      .catch((error: unknown) => this.warn(`rebuild requests: ${(error as Error).message}`));
  }
}
