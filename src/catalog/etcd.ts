/**
 * The fleet's connection to etcd: one place that connects (a list of member URLs, a deadline on
 * every call), that knows the key layout, and that turns etcd and gRPC failures into
 * MF_CATALOG_UNAVAILABLE with the endpoints named and a remedy.
 *
 * Key layout (everything under one prefix, so a fleet can share an etcd cluster with other
 * users and a later format can live beside this one under /memfabric/v2/):
 *
 *   /memfabric/v1/regions/<tenant>/<name>             a region's descriptor (JSON, see
 *                                                     descriptor.ts); changed only by
 *                                                     transactions comparing its mod revision
 *   /memfabric/v1/appliances/<id>                     a live appliance (JSON: id, url, nbd,
 *                                                     capacityBytes, freeBytes, startedAt),
 *                                                     under the appliance's lease: the key
 *                                                     vanishes when the appliance stops
 *                                                     renewing it
 *   /memfabric/v1/chunks/<tenant>/<region>/<index>    a claimed chunk of a pre-allocated region
 *                                                     (JSON: owner, claim id, run start and
 *                                                     length), under the claiming client's
 *                                                     lease; <index> is zero-padded so keys
 *                                                     sort in chunk order
 *   /memfabric/v1/chunkpools/<tenant>/<region>        the chunk size of a region carved into
 *                                                     chunks (JSON: chunkSize, size), written
 *                                                     once by its first claimer, no lease
 *   /memfabric/v1/controller/election/                the fleet controller's election (etcd's
 *                                                     election API; controller.ts)
 *   /memfabric/v1/controller/status                   the leader's progress report (JSON)
 *   /memfabric/v1/controller/rebuild/<tenant>/<name>  a rebuild asked of a region's owner
 *                                                     (rebuild-requests.ts)
 *
 * <tenant>, <name>, <region> and <id> are percent-encoded (encodeURIComponent), so a '/' in a
 * name cannot reach into another key's space.
 *
 * Failures. A call that fails for a transient reason (a member down, no leader during an
 * election, a leader change, a deadline) is tried again, on another member when there is one,
 * with a short backoff, until `retryMs` has passed; then it fails with MF_CATALOG_UNAVAILABLE.
 * A write that failed that way may still have been applied (etcd can commit a proposal whose
 * answer was lost, even after MF_CATALOG_UNAVAILABLE was reported, once a majority is back), so
 * callers that retry a write check what is stored before they report a conflict (see
 * etcd-catalog.ts), and repeating the same write after MF_CATALOG_UNAVAILABLE is safe.
 */
import { createRequire } from 'node:module';
import type * as Etcd3Package from 'etcd3';
import type { Etcd3, IKeyValue, IOptions, WatchBuilder, Watcher } from 'etcd3';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

/**
 * etcd3 and the gRPC stack under it cost about 0.3 s of CPU to load, a third of what starting
 * the `memfabric` command costs, and only a fleet (etcd) deployment uses them. So they are loaded
 * on first use: etcd3 is a CommonJS package, and `require` keeps this synchronous for the
 * constructors below.
 */
let etcd3: typeof Etcd3Package | undefined;
function etcd3Module(): typeof Etcd3Package {
  etcd3 ??= createRequire(import.meta.url)('etcd3') as typeof Etcd3Package;
  return etcd3;
}

export const ETCD_PREFIX = '/memfabric/v1/';
/** Deadline of one etcd call (connecting included: gRPC has no separate dial timeout). */
export const ETCD_CALL_MS_DEFAULT = 3000;
/** How long transient failures are retried before MF_CATALOG_UNAVAILABLE (beyond one call). */
export const ETCD_RETRY_MS_DEFAULT = 15_000;
/** Backoff between retries: doubles from the first to the last. */
const RETRY_BACKOFF_MS_FIRST = 50;
const RETRY_BACKOFF_MS_MAX = 500;
/** Longest wait before a dropped member (or watch stream) is dialled again. */
const RECONNECT_MS_MAX = 1000;
/** Chunk indexes are padded to this many digits so that keys sort in index order. */
export const CHUNK_INDEX_DIGITS = 12;

const segment = (value: string): string => encodeURIComponent(value);

/** The keys of the layout above. Prefixes end in '/', so a range read never matches a longer name. */
export const EtcdKeys = {
  regions: `${ETCD_PREFIX}regions/`,
  regionsOf: (tenant: string): string => `${ETCD_PREFIX}regions/${segment(tenant)}/`,
  region: (tenant: string, name: string): string =>
    `${ETCD_PREFIX}regions/${segment(tenant)}/${segment(name)}`,
  appliances: `${ETCD_PREFIX}appliances/`,
  appliance: (id: string): string => `${ETCD_PREFIX}appliances/${segment(id)}`,
  chunkPool: (tenant: string, region: string): string =>
    `${ETCD_PREFIX}chunkpools/${segment(tenant)}/${segment(region)}`,
  chunksOf: (tenant: string, region: string): string =>
    `${ETCD_PREFIX}chunks/${segment(tenant)}/${segment(region)}/`,
  chunk: (tenant: string, region: string, index: number): string =>
    `${ETCD_PREFIX}chunks/${segment(tenant)}/${segment(region)}/${String(index).padStart(CHUNK_INDEX_DIGITS, '0')}`,
  controller: `${ETCD_PREFIX}controller/`,
} as const;

/** The chunk index at the end of a chunk key (NaN when the key is not one). */
export function chunkIndexOf(key: string): number {
  const tail = key.slice(key.lastIndexOf('/') + 1);
  return /^\d+$/.test(tail) ? Number(tail) : Number.NaN;
}

export interface EtcdOptions {
  /** Client URLs of the etcd members, e.g. ['http://10.0.0.1:2379', 'http://10.0.0.2:2379']. */
  endpoints: string[];
  /** Deadline of each call, connecting included. Default 3 s. */
  callTimeoutMs?: number;
  /** How long transient failures (leader change, a member down) are retried. Default 15 s. */
  retryMs?: number;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type Policy = NonNullable<FaultHandling['global']>;
type Backoff = NonNullable<FaultHandling['watchBackoff']>;

/**
 * Runs each call once, on the host the pool picked. The etcd3 defaults (a circuit breaker that
 * shuns a host for 5 s after 3 failures, 3 quick retries) would hide a restarted member and give
 * up during an election; the retry loop below does it with a deadline instead.
 */
const passThrough = {
  onSuccess: () => ({ dispose: () => undefined }),
  onFailure: () => ({ dispose: () => undefined }),
  execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal) =>
    Promise.resolve().then(() => fn({ signal: signal ?? new AbortController().signal })),
} as unknown as Policy;

/** Watch streams reconnect after 100 ms, doubling to at most RECONNECT_MS_MAX. */
class CappedBackoff {
  constructor(readonly duration: number) {}
  next(): CappedBackoff {
    return new CappedBackoff(Math.min(this.duration * 2, RECONNECT_MS_MAX));
  }
}

/** Keys one range read returns at most (a page of `rangeAll`). */
const RANGE_PAGE_KEYS = 256;
/** Pages `rangeAll` reads at most: a bound on what one listing may hold. */
const RANGE_PAGES_MAX = 4096;

/** The end of the range of keys that start with `prefix` (its last byte plus one). */
export function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1]! += 1;
  return end;
}

/** A transient failure worth another try: a member down, no leader yet, a deadline. */
export function isTransient(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  if (etcd3Module().isRecoverableError(error)) return true;
  // Errors the pool did not classify (the message is all gRPC gives): etcd's leader troubles.
  return /no leader|leader changed|request timed out|unavailable|ECONNREFUSED|No connection established/i.test(
    error.message,
  );
}

/** Checks and copies the endpoint list: http(s) URLs, at least one. */
export function checkEndpoints(endpoints: unknown, what = 'etcd'): string[] {
  if (!Array.isArray(endpoints) || endpoints.length === 0) {
    throw invalidArgument(`${what} needs at least one etcd client URL, like http://127.0.0.1:2379`);
  }
  return endpoints.map((endpoint) => {
    let url: URL | undefined;
    try {
      url = new URL(String(endpoint));
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.port === '') {
      throw invalidArgument(
        `${JSON.stringify(endpoint)} is not an etcd client URL; give http://HOST:PORT (etcd's --advertise-client-urls)`,
      );
    }
    return String(endpoint).replace(/\/+$/, '');
  });
}

/** MF_CATALOG_UNAVAILABLE naming the endpoints, what was being done, and what to do. */
export function catalogUnavailable(
  endpoints: readonly string[],
  what: string,
  cause: unknown,
  kind: CallKind = 'read',
): MemfabricError {
  const why = cause instanceof Error ? cause.message : String(cause);
  return new MemfabricError(
    ErrorCodes.CATALOG_UNAVAILABLE,
    `etcd (${endpoints.join(', ')}) could not ${what}: ${why}. Check that a majority of the etcd members ` +
      'run and are reachable from this machine (etcdctl endpoint health), then retry' +
      (kind === 'write'
        ? ' the same call (the change may still be applied once etcd has a majority again; the same call ' +
          'then succeeds)'
        : '') +
      '; the data path of regions already open is not affected',
    { cause },
  );
}

/**
 * 'write': a failed call may still be applied later (etcd can commit a proposal whose answer
 * was lost, once a majority is back), and the error says so.
 */
export type CallKind = 'read' | 'write';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A client of the fleet's etcd cluster with the retry and error rules above. */
export class EtcdConnection {
  readonly client: Etcd3;
  readonly endpoints: readonly string[];
  readonly callTimeoutMs: number;
  readonly retryMs: number;
  private closed = false;

  constructor(options: EtcdOptions) {
    this.endpoints = checkEndpoints(options.endpoints);
    this.callTimeoutMs = options.callTimeoutMs ?? ETCD_CALL_MS_DEFAULT;
    this.retryMs = options.retryMs ?? ETCD_RETRY_MS_DEFAULT;
    if (!(this.callTimeoutMs > 0) || !(this.retryMs >= 0)) {
      throw invalidArgument('etcd callTimeoutMs must be above 0 and retryMs 0 or more');
    }
    const callTimeoutMs = this.callTimeoutMs;
    this.client = new (etcd3Module().Etcd3)({
      hosts: [...this.endpoints],
      // Streams (watches, lease keep-alives) live as long as they are wanted; calls get a deadline.
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: {
        host: () => passThrough,
        global: passThrough,
        watchBackoff: new CappedBackoff(100) as unknown as Backoff,
      },
      grpcOptions: {
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': RECONNECT_MS_MAX,
      },
    });
  }

  /**
   * Runs `op`, trying it again on transient failures until `retryMs` has passed; then, and on
   * any other etcd failure, MF_CATALOG_UNAVAILABLE saying it could not `what`. A MemfabricError
   * thrown by `op` itself passes unchanged.
   */
  async run<T>(what: string, op: (attempt: number) => Promise<T>, kind: CallKind = 'read'): Promise<T> {
    const deadline = Date.now() + this.retryMs;
    let backoff = RETRY_BACKOFF_MS_FIRST;
    for (let attempt = 0; ; attempt++) {
      if (this.closed) {
        throw new MemfabricError(ErrorCodes.DESTROYED, `the etcd connection is closed; could not ${what}`);
      }
      try {
        return await op(attempt);
      } catch (error) {
        if (error instanceof MemfabricError) throw error;
        if (!isTransient(error) || Date.now() + backoff > deadline) {
          throw catalogUnavailable(this.endpoints, what, error, kind);
        }
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, RETRY_BACKOFF_MS_MAX);
    }
  }

  /**
   * Every key under `prefix`, in key order, read page by page at one revision (a consistent
   * snapshot however many pages it takes). Retried as `run` does.
   */
  rangeAll(what: string, prefix: string): Promise<{ kvs: IKeyValue[]; revision: string }> {
    return this.run(what, async () => {
      const kvs: IKeyValue[] = [];
      const end = prefixEnd(prefix);
      let start = Buffer.from(prefix);
      let revision: string | undefined;
      for (let page = 0; page < RANGE_PAGES_MAX; page++) {
        const answer = await this.client.kv.range({
          key: start,
          range_end: end,
          limit: RANGE_PAGE_KEYS,
          ...(revision !== undefined ? { revision } : {}),
        });
        revision ??= answer.header.revision;
        kvs.push(...answer.kvs);
        if (!answer.more || answer.kvs.length === 0) return { kvs, revision };
        // The next page starts just after the last key read.
        start = Buffer.concat([answer.kvs[answer.kvs.length - 1]!.key, Buffer.from([0])]);
      }
      throw new MemfabricError(
        ErrorCodes.INTERNAL,
        `more than ${RANGE_PAGES_MAX * RANGE_PAGE_KEYS} keys under ${prefix}; could not ${what}`,
      );
    });
  }

  /**
   * Starts the watch `build` describes and waits for etcd to confirm it, each attempt within one
   * call's deadline, retried as `run` does. etcd3's own `create()` waits for ever while no member
   * answers (its stream reconnects without end): whatever awaited it hung, and so did a close()
   * waiting for that (Fabric.close() with every etcd member dead). An attempt not confirmed in
   * time is cancelled, so nothing keeps reconnecting for it.
   */
  watch(what: string, build: (client: Etcd3) => WatchBuilder): Promise<Watcher> {
    return this.run(what, () => {
      const watcher = build(this.client).watcher();
      return new Promise<Watcher>((resolve, reject) => {
        const settle = (error: Error | undefined): void => {
          clearTimeout(timer);
          watcher.off('connected', onConnected);
          watcher.off('error', onError);
          if (error === undefined) {
            resolve(watcher);
            return;
          }
          void watcher.cancel().catch(() => undefined);
          reject(error);
        };
        const onConnected = (): void => settle(undefined);
        const onError = (error: Error): void => settle(error);
        const timer = setTimeout(
          () =>
            settle(
              new Error(`request timed out: no etcd member confirmed the watch in ${this.callTimeoutMs} ms`),
            ),
          this.callTimeoutMs,
        );
        watcher.once('connected', onConnected);
        watcher.once('error', onError);
      });
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
  }
}
