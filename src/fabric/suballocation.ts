/**
 * Sub-allocation, client side (seed 001: "a subset of the region is selected at the first
 * client device in coordination with a second client device"). Many clients, in as many
 * processes or machines as you like, carve chunks out of one region that was allocated on an
 * appliance beforehand. The appliance's chunk allocator (src/appliance/chunks.ts) is the
 * single point of coordination: a claim is one admin API call that the appliance answers
 * atomically, so two clients never hold the same chunk.
 *
 *   const sub = new SubAllocator({ appliance: 'http://127.0.0.1:10880', region: 'pool', owner: 'worker-7' });
 *   const chunk = await sub.claim({ size: '4MiB' });      // { offset, length } in the region
 *   const view = await chunk.open();                       // NBD, bounded to the chunk
 *   await view.write(0, bytes);                            // offsets are relative to the chunk
 *   await chunk.release();                                 // waits for the view's I/O, then frees
 *   await sub.close();
 *
 *   // or one chunk on its own:
 *   const one = await claimChunk({ appliance: url, region: 'pool', owner: 'job-1', size: 65536 });
 *
 * A view checks every read and write against the chunk: anything reaching outside it fails
 * with MF_OUT_OF_RANGE before a byte is sent. `release()` first closes the chunk's views to new
 * I/O (MF_DESTROYED), waits for the reads and writes already issued through them to settle,
 * and only then asks the appliance to free the chunk: nothing written through a view lands
 * after the chunk may belong to someone else. The appliance trims a chunk on release and on
 * claim, so a fresh chunk reads as zeros and never shows a previous owner's data.
 *
 * What the bound does not cover: NBD serves the whole region, and a client that bypasses the
 * view (or a buggy one) can still write anywhere in it. Chunks are held until released; a
 * client that dies leaves its chunks claimed, and a process that comes back with the same
 * owner name can find them with `list()` and release or reuse them (an operator can also
 * force-release any chunk through the admin API).
 */
import { adminRequest, type AdminTarget } from '../appliance/admin-client.js';
import type { Endpoint } from '../appliance/appliance.js';
import type { ChunkClaimView, ChunkListingView } from '../appliance/chunk-routes.js';
import { ErrorCodes, MemfabricError, invalidArgument, outOfRange } from '../errors.js';
import { NbdClient, type NbdClientTls } from '../nbd/index.js';

/** Pages of `list()` at most (each up to 4096 allocations: more than one owner may hold). */
const LIST_PAGES_MAX = 64;

export interface SubAllocatorOptions {
  /** The appliance's admin API, e.g. http://127.0.0.1:10880. */
  appliance: string;
  /** The pre-allocated region to carve chunks from. */
  region: string;
  /** Who holds the chunks: 1-128 letters, digits, '.', '_', ':', '@', '-'. */
  owner: string;
  /**
   * Chunk size for the region's first claim (a multiple of the appliance's page size; the
   * appliance's default is 1 MiB). Later claims must agree with the region's, or omit it.
   */
  chunkSize?: number | string;
  /** Where the appliance serves NBD. Default: what it says in GET /v1/stats. */
  nbd?: Partial<Endpoint>;
  /** Timeout of each admin API call. Default 30 s. */
  timeoutMs?: number;
  /** NBD TLS credentials (needed against an appliance started with `--tls require`). */
  tls?: NbdClientTls;
  /** Token sent to the appliance: the admin token, or a token of the region's tenant. */
  token?: string;
  /** CA certificates (PEM) trusted for an https appliance URL. */
  ca?: string | Buffer;
}

/** How much to claim: `count` chunks, or enough chunks to hold `size` bytes; default one chunk. */
export interface ClaimRequest {
  size?: number | string;
  count?: number;
}

export interface ClaimChunkOptions extends SubAllocatorOptions, ClaimRequest {}

/** A run of chunks this client holds. */
export interface Chunk {
  readonly region: string;
  readonly owner: string;
  /** Byte offset of the chunk in the region. */
  readonly offset: number;
  /** Bytes: a whole number of the region's chunks. */
  readonly length: number;
  readonly chunkSize: number;
  /** True once release() has begun. */
  readonly released: boolean;
  /** An NBD-backed view of exactly this chunk; offsets are relative to the chunk. */
  open(): Promise<ChunkView>;
  /** Closes the views, waits for their I/O, frees the chunk on the appliance. Idempotent. */
  release(): Promise<void>;
}

/** Claims one chunk with its own NBD connection for its views; see SubAllocator for many. */
export async function claimChunk(options: ClaimChunkOptions): Promise<Chunk> {
  const allocator = new SubAllocator(options);
  singleUse.add(allocator);
  return allocator.claim({
    ...(options.size !== undefined ? { size: options.size } : {}),
    ...(options.count !== undefined ? { count: options.count } : {}),
  });
}

/** SubAllocators made by claimChunk: their connection closes when their one chunk is released. */
const singleUse = new WeakSet<SubAllocator>();

/**
 * One owner's client of a region's chunk allocator. Views of all its chunks share one NBD
 * connection, opened on the first `open()` and closed by `close()`.
 */
export class SubAllocator {
  readonly appliance: string;
  readonly region: string;
  readonly owner: string;
  private readonly chunkSize: number | string | undefined;
  private readonly nbdEndpoint: Partial<Endpoint> | undefined;
  private readonly timeoutMs: number | undefined;
  private readonly target: AdminTarget;
  private nbd: Promise<NbdClient> | undefined;
  private readonly tls: NbdClientTls | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: SubAllocatorOptions) {
    for (const key of ['appliance', 'region', 'owner'] as const) {
      if (typeof options[key] !== 'string' || options[key].length === 0) {
        throw invalidArgument(`SubAllocator: ${key} must be a non-empty string`);
      }
    }
    this.appliance = options.appliance;
    this.region = options.region;
    this.owner = options.owner;
    this.chunkSize = options.chunkSize;
    this.nbdEndpoint = options.nbd;
    this.timeoutMs = options.timeoutMs;
    this.tls = options.tls;
    this.target = {
      url: options.appliance,
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.ca !== undefined ? { ca: options.ca } : {}),
    };
  }

  /**
   * Claims chunks: an atomic call on the appliance. Fails with MF_CHUNKS_EXHAUSTED when no run
   * of free chunks is long enough, MF_CONFLICT when `chunkSize` disagrees with the region's.
   */
  async claim(request: ClaimRequest = {}): Promise<Chunk> {
    this.assertOpen();
    const claimed = await this.api<ChunkClaimView>('POST', this.chunksPath(), {
      owner: this.owner,
      ...(request.size !== undefined ? { size: request.size } : {}),
      ...(request.count !== undefined ? { count: request.count } : {}),
      ...(this.chunkSize !== undefined ? { chunkSize: this.chunkSize } : {}),
    });
    return new ClaimedChunk(this, claimed);
  }

  /**
   * The chunks this owner holds in the region, as the appliance knows them (a process that
   * restarts under the same owner name finds its chunks here).
   */
  async list(): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    let after = 0;
    for (let page = 0; page < LIST_PAGES_MAX; page++) {
      const query = `?owner=${encodeURIComponent(this.owner)}&after=${after}`;
      const listing = await this.api<ChunkListingView>('GET', this.chunksPath() + query);
      for (const allocation of listing.allocations) {
        chunks.push(
          new ClaimedChunk(this, { ...allocation, region: this.region, chunkSize: listing.chunkSize! }),
        );
      }
      if (listing.next === null) return chunks;
      after = listing.next;
    }
    return chunks;
  }

  /** Disconnects the shared NBD connection. Chunks stay claimed until released. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const nbd = this.nbd;
      if (nbd) await (await nbd.catch(() => undefined))?.disconnect();
    })();
    return this.closing;
  }

  // ---- for ClaimedChunk ---------------------------------------------------------------------

  /** @internal */
  api<T>(method: string, path: string, body?: unknown): Promise<T> {
    return adminRequest<T>(this.target, method, path, body, this.timeoutMs);
  }

  /** @internal */
  chunksPath(): string {
    return `/v1/regions/${encodeURIComponent(this.region)}/chunks`;
  }

  /** @internal The shared NBD connection to the region, opened on first use. */
  connection(): Promise<NbdClient> {
    this.assertOpen();
    if (!this.nbd) {
      const connecting = this.connect();
      // A failed connect is not cached: the next open() tries again.
      connecting.catch(() => {
        if (this.nbd === connecting) this.nbd = undefined;
      });
      this.nbd = connecting;
    }
    return this.nbd;
  }

  private async connect(): Promise<NbdClient> {
    let host = this.nbdEndpoint?.host;
    let port = this.nbdEndpoint?.port;
    if (host === undefined || port === undefined) {
      const stats = await this.api<{ endpoints: { nbd: Endpoint } }>('GET', '/v1/stats');
      const advertised = stats.endpoints.nbd;
      // An appliance listening on every interface is reached where its admin API was.
      const wildcard = advertised.host === '0.0.0.0' || advertised.host === '::';
      host ??= wildcard ? new URL(this.appliance).hostname.replace(/^\[|\]$/g, '') : advertised.host;
      port ??= advertised.port;
    }
    return NbdClient.connect({ host, port, exportName: this.region, ...(this.tls ? { tls: this.tls } : {}) });
  }

  private assertOpen(): void {
    if (this.closing) {
      throw new MemfabricError(ErrorCodes.DESTROYED, `the SubAllocator of ${this.owner} is closed`);
    }
  }
}

/**
 * @internal What every kind of chunk shares: its views and the release order (close the views
 * to new I/O, wait for what they issued, then free). Subclasses say where the NBD connection
 * comes from and how a chunk is freed: the appliance's allocator here, etcd keys in fleet mode
 * (src/catalog/leased-chunks.ts).
 */
export abstract class ViewedChunk implements Chunk {
  readonly region: string;
  readonly owner: string;
  readonly offset: number;
  readonly length: number;
  readonly chunkSize: number;
  private readonly views = new Set<ChunkView>();
  private releasing: Promise<void> | undefined;

  constructor(claimed: ChunkClaimView) {
    this.region = claimed.region;
    this.owner = claimed.owner;
    this.offset = claimed.offset;
    this.length = claimed.length;
    this.chunkSize = claimed.chunkSize;
  }

  /** The NBD connection views use (to the whole region). */
  protected abstract connection(): Promise<NbdClient>;
  /** Frees the chunk once its views are settled. */
  protected abstract free(): Promise<void>;

  get released(): boolean {
    return this.releasing !== undefined;
  }

  async open(): Promise<ChunkView> {
    if (this.released) throw releasedError(this);
    const client = await this.connection();
    if (this.released) throw releasedError(this);
    const view = new ChunkView(client, this);
    this.views.add(view);
    return view;
  }

  release(): Promise<void> {
    if (!this.releasing) {
      const views = [...this.views];
      for (const view of views) view.close();
      this.releasing = (async () => {
        await Promise.all(views.map((view) => view.settled()));
        await this.free();
      })();
      // A failed free (appliance or etcd unreachable) may be retried by calling release()
      // again; the views stay closed either way.
      this.releasing.catch(() => {
        this.releasing = undefined;
        this.views.clear();
      });
    }
    return this.releasing;
  }
}

class ClaimedChunk extends ViewedChunk {
  private readonly allocator: SubAllocator;

  constructor(allocator: SubAllocator, claimed: ChunkClaimView) {
    super(claimed);
    this.allocator = allocator;
  }

  protected connection(): Promise<NbdClient> {
    return this.allocator.connection();
  }

  protected async free(): Promise<void> {
    const query = `?owner=${encodeURIComponent(this.owner)}`;
    await this.allocator.api<void>('DELETE', `${this.allocator.chunksPath()}/${this.offset}${query}`);
    if (singleUse.has(this.allocator)) await this.allocator.close();
  }
}

/**
 * Reads and writes one chunk over NBD. Offsets are relative to the chunk's start; every call
 * is checked against the chunk's length first and fails with MF_OUT_OF_RANGE outside it.
 */
export class ChunkView {
  readonly chunk: Chunk;
  private readonly client: NbdClient;
  private closed = false;
  private inFlight = 0;
  private idle: (() => void) | undefined;

  /** @internal Made by Chunk.open(). */
  constructor(client: NbdClient, chunk: Chunk) {
    this.client = client;
    this.chunk = chunk;
  }

  get length(): number {
    return this.chunk.length;
  }

  read(offset: number, length: number): Promise<Buffer> {
    const bad = this.check('read', offset, length);
    return bad ? Promise.reject(bad) : this.track(this.client.read(this.chunk.offset + offset, length));
  }

  readInto(offset: number, dst: Uint8Array): Promise<void> {
    const bad = this.check('readInto', offset, dst.length);
    return bad ? Promise.reject(bad) : this.track(this.client.readInto(this.chunk.offset + offset, dst));
  }

  write(offset: number, data: Uint8Array, options?: { fua?: boolean }): Promise<void> {
    const bad = this.check('write', offset, data.length);
    return bad
      ? Promise.reject(bad)
      : this.track(this.client.write(this.chunk.offset + offset, data, options));
  }

  /** Makes the region's completed writes durable (on a file-backed region: saved to disk). */
  flush(): Promise<void> {
    const bad = this.check('flush', 0, 0);
    return bad ? Promise.reject(bad) : this.track(this.client.flush());
  }

  /** Refuses further calls; calls already issued complete. The connection stays open. */
  close(): void {
    this.closed = true;
  }

  /** @internal Resolves once no call issued through this view is in flight. */
  settled(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.idle;
      this.idle = () => {
        previous?.();
        resolve();
      };
    });
  }

  private check(what: string, offset: number, length: number): MemfabricError | undefined {
    if (this.closed || this.chunk.released) return releasedError(this.chunk);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length < 0) {
      return invalidArgument(`${what}: offset and length must be whole numbers (got ${offset}, ${length})`);
    }
    if (offset < 0 || offset + length > this.chunk.length) {
      return outOfRange(
        `${what} of ${length} bytes at ${offset} reaches outside the ${this.chunk.length}-byte chunk ` +
          `at ${this.chunk.offset} of region ${this.chunk.region}`,
      );
    }
    return undefined;
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.inFlight++;
    const done = () => {
      if (--this.inFlight === 0 && this.idle) {
        const idle = this.idle;
        this.idle = undefined;
        idle();
      }
    };
    promise.then(done, done);
    return promise;
  }
}

function releasedError(chunk: Chunk): MemfabricError {
  return new MemfabricError(
    ErrorCodes.DESTROYED,
    `the chunk at ${chunk.offset} of region ${chunk.region} was released (or its view closed); claim a new one`,
  );
}
