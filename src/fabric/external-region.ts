/**
 * A fabric region on appliances: plain (one shard), mirrored (n copies) or Reed–Solomon coded
 * (k data + m parity shards), each shard a region on a different appliance, read and written
 * by this client directly over NBD (the seed's client-side memory access).
 *
 * Coded layout. Logical page p lives on data shard p mod k at column floor(p / k): stripe s is
 * the k pages k·s .. k·s+k-1, and the m parity shards hold that stripe's parity at column s.
 * A sequential range therefore spreads over all k data shards, each holding a contiguous run of
 * columns, so a large read or write is one NBD request per shard.
 *
 * Writes (coded). Stripes are processed in batches (64 stripes: 1 MiB of 4+2 data) under a
 * stripe-range lock, and every writable shard gets one NBD write per batch: data shards only the
 * columns the write touched, parity shards every column of the batch. Stripes the write covers
 * entirely are coded from the new bytes; the stripes at its ends are read first
 * (read-modify-write; reconstructed when a data shard is lost). A batch of whole stripes is
 * coded straight from the caller's buffer into the parity runs that are sent (SendRuns); any
 * other batch is gathered into a StripeBatch, coded there, and its parity copied out, the
 * coding buffers given back before the shard writes are sent. Coding runs on the event loop:
 * see writeStripes for why.
 *
 * What a successful write guarantees. It resolves once every shard that was writable when it
 * started has acknowledged it or been marked lost, and at least `k` (coded) or 1 (mirrored,
 * plain) shards acknowledged it. The bytes then survive the loss of any further appliances as
 * long as k shards (coded) or one copy (mirrored) of what acknowledged remain. Fewer than that:
 * the write rejects with MF_DATA_LOST, and the region's contents in that range are undefined.
 *
 * Reads. Healthy: straight from the data shards (or one copy), no lock. A data shard lost: the
 * affected stripes are read from k live shards under the stripe lock and reconstructed.
 *
 * Failure detection. A shard whose NBD request fails — connection closed, appliance killed, or
 * no answer within the request timeout (a hung appliance) — is marked lost at once and never
 * used again; the region reports itself degraded until rebuild() replaces the shard.
 *
 * Migration. When a shard's connection closes or a request is refused with ESHUTDOWN (not on a
 * timeout), the region first asks that appliance where the shard's region is now
 * (resolveRegion, waiting out a migration blackout). If it moved, the shard reconnects to its
 * new home and the failed operation is retried there: the writes a migration refused were never
 * acknowledged, so retrying them at the destination loses nothing. Otherwise the shard is lost.
 */
import { nextGeneration, type RegionDescriptor, type ShardPlacement } from '../catalog/descriptor.js';
import { setTimeout as delay } from 'node:timers/promises';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { ESHUTDOWN } from '../nbd/index.js';
import type { NbdClientTls } from '../nbd/index.js';
import { ReedSolomonCodec, SendRuns, StripeBatch, popcount } from './codec.js';
import type { ApplianceDirectory } from './directory.js';
import { migrationState, resolveRegion } from './follow.js';
import { checkRegionRange } from './memory-region.js';
import { place } from './placement.js';
import { Pool } from './pool.js';
import { RangeLock } from './range-lock.js';
import { Shard, type ShardStatus } from './shard.js';

/**
 * Stripes (coded) or pages (mirrored) handled per batch: one coding call (StripeBatch codes a
 * batch larger than ronomon's cache allows in groups) and one NBD request per shard. 64 stripes
 * of 4+2 with 4 KiB pages are 1 MiB of data: a 1 MiB write is one batch.
 */
export const BATCH_STRIPES = 64;
/** How long a shard whose appliance is migrating it may wait for the blackout to end. */
export const MIGRATION_WAIT_MS = 30_000;
/** Coding buffers kept per region (bounds memory and concurrent codings, loads and rebuilds). */
const BATCH_POOL_MAX = 4;
/**
 * Send runs kept per region: bounds the coded writes in flight on the shards (each holds one
 * until every shard answered). A write's runs are m/k of its data (0.5 MiB for a 1 MiB 4+2
 * write), held as long as the caller's own buffer is.
 */
const SEND_POOL_MAX = 16;
/** Batches a rebuild refills at once (each holds a coding buffer while it runs). */
const REFILL_DEPTH = BATCH_POOL_MAX;

export interface RebuildOptions {
  /** Appliances for the replacements, in shard order (default: placement). */
  appliances?: string[];
  /** Refill at most this many bytes per second per shard (default: as fast as it goes). */
  bytesPerSecond?: number;
  /** Called after every refilled batch. */
  onProgress?: (progress: RebuildProgress) => void;
}

export interface RebuildProgress {
  /** The shard being refilled. */
  shard: number;
  bytesDone: number;
  bytesTotal: number;
}

export type Redundancy = 'none' | { copies: number } | { data: number; parity: number };

export interface RegionHealth {
  degraded: boolean;
  /** Shards lost and not yet rebuilt. */
  lost: number;
  /** How many more shards may be lost before data is lost. */
  tolerance: number;
  shards: ShardStatus[];
}

export interface ExternalRegionStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Reads that had to reconstruct lost data from parity. */
  degradedReads: number;
  /** Data bytes run through the coder by writes. */
  codedBytes: number;
}

export interface ScrubResult {
  stripesChecked: number;
  mismatches: number;
  repaired: number;
}

export interface ExternalRegionOptions {
  name: string;
  size: number;
  pageSize: number;
  redundancy: Redundancy;
  tenant: string;
  shards: Shard[];
  directory: ApplianceDirectory;
  requestTimeoutMs: number;
  /** NBD TLS credentials for every shard connection, replacements included. */
  tls?: NbdClientTls | undefined;
  /** The region's descriptor as the catalog holds it (see src/catalog/descriptor.ts). */
  descriptor: RegionDescriptor;
  /**
   * Records the next generation of the descriptor (the catalog, and a copy on each shard).
   * Called whenever the shard list changes: a shard lost, replaced or moved.
   */
  publish: (next: RegionDescriptor) => Promise<void>;
  /** Forgets the region in the catalog (its name) once close() has deleted its shards. */
  forget: (descriptor: RegionDescriptor) => Promise<void>;
}

export class ExternalRegion {
  readonly kind = 'external' as const;
  readonly name: string;
  readonly size: number;
  readonly pageSize: number;
  readonly redundancy: Redundancy;
  readonly tenant: string;
  readonly mode: 'none' | 'mirror' | 'coded';
  /** Data shards per stripe (1 unless coded). */
  readonly k: number;
  /** Bytes each shard holds. */
  readonly shardBytes: number;
  private readonly shards: Shard[];
  private readonly directory: ApplianceDirectory;
  private readonly requestTimeoutMs: number;
  private readonly tls: NbdClientTls | undefined;
  private readonly codec: ReedSolomonCodec | undefined;
  private readonly stripes: number;
  /** Stripes (or mirrored pages) per batch. */
  private readonly batchStripes: number;
  private readonly lock = new RangeLock();
  /** Coding batches: held while loading, coding and copying out, never while writing. */
  private readonly batches: Pool<StripeBatch>;
  /** Parity runs of coded writes in flight (see SendRuns). */
  private readonly sends: Pool<SendRuns>;
  private readCursor = 0;
  private readonly counters: ExternalRegionStats = {
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    degradedReads: 0,
    codedBytes: 0,
  };
  private closed = false;
  /** Shards being looked up after their connection closed (see "Migration" above). */
  private readonly following = new Map<number, Promise<Shard | undefined>>();
  private current: RegionDescriptor;
  private readonly publish: (next: RegionDescriptor) => Promise<void>;
  private readonly forget: (descriptor: RegionDescriptor) => Promise<void>;
  /** The publication in progress; the next one waits for it (generations are sequential). */
  private publishing: Promise<void> = Promise.resolve();

  constructor(options: ExternalRegionOptions) {
    this.name = options.name;
    this.size = options.size;
    this.pageSize = options.pageSize;
    this.redundancy = options.redundancy;
    this.tenant = options.tenant;
    this.shards = options.shards;
    for (const shard of this.shards) shard.onClose = (closed, error) => void this.follow(closed, error);
    this.directory = options.directory;
    this.requestTimeoutMs = options.requestTimeoutMs;
    this.tls = options.tls;
    this.current = options.descriptor;
    this.publish = options.publish;
    this.forget = options.forget;
    const geometry = shardGeometry(options.redundancy, options.size, options.pageSize);
    this.mode = geometry.mode;
    this.k = geometry.k;
    this.shardBytes = geometry.shardBytes;
    this.stripes = geometry.stripes;
    this.codec =
      this.mode === 'coded' ? new ReedSolomonCodec(geometry.k, geometry.shards - geometry.k) : undefined;
    this.batchStripes = BATCH_STRIPES;
    if (this.codec && this.codec.maxStripesPerCall(this.pageSize) < 1) {
      throw invalidArgument(
        `${this.pageSize}-byte pages are too large to code ${this.k} data shards; use smaller pages`,
      );
    }
    const codec = this.codec;
    const parity = geometry.shards - geometry.k;
    this.batches = new Pool(BATCH_POOL_MAX, () => new StripeBatch(codec!, this.pageSize, this.batchStripes));
    this.sends = new Pool(SEND_POOL_MAX, () => new SendRuns(parity, this.pageSize, this.batchStripes));
  }

  // ---------------------------------------------------------------------------------------
  // Data path

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    this.checkRange(offset, dst.length);
    if (dst.length === 0) return;
    this.counters.reads++;
    this.counters.bytesRead += dst.length;
    if (this.mode !== 'coded') return this.readCopy(offset, dst);
    if (this.dataShardsLive()) {
      try {
        await this.readHealthy(offset, dst);
        return;
      } catch (error) {
        if (!this.isShardFailure(error)) throw error;
        // A shard failed under us: it is marked lost; read the degraded way.
      }
    }
    this.counters.degradedReads++;
    await this.readDegraded(offset, dst);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    this.counters.writes++;
    this.counters.bytesWritten += data.length;
    if (this.mode !== 'coded') return this.writeCopies(offset, data);
    const pageSize = this.pageSize;
    const firstStripe = Math.floor(Math.floor(offset / pageSize) / this.k);
    const lastStripe = Math.floor(Math.floor((offset + data.length - 1) / pageSize) / this.k);
    const batches: Array<Promise<void>> = [];
    for (let a = firstStripe; a <= lastStripe; a += this.batchStripes) {
      const b = Math.min(lastStripe, a + this.batchStripes - 1);
      checkBatch(a, b, firstStripe, lastStripe);
      batches.push(this.writeStripes(a, b, offset, data));
    }
    await Promise.all(batches);
  }

  /** Discards a range: later reads return zeros; appliances free what they can. */
  async trim(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    if (length === 0) return;
    if (this.mode !== 'coded') {
      await this.onWritableShards((shard) => shard.nbd.trim(offset, length));
      return;
    }
    // Whole stripes: trim every shard (all-zero data has all-zero parity, so the stripe stays
    // consistent). Partial stripes at either end: write zeros through the coded path.
    const stripeBytes = this.k * this.pageSize;
    const first = Math.ceil(offset / stripeBytes);
    const end = Math.floor((offset + length) / stripeBytes);
    if (first >= end) {
      await this.write(offset, Buffer.alloc(length));
      return;
    }
    if (offset < first * stripeBytes) await this.write(offset, Buffer.alloc(first * stripeBytes - offset));
    if (end * stripeBytes < offset + length) {
      await this.write(end * stripeBytes, Buffer.alloc(offset + length - end * stripeBytes));
    }
    const release = await this.lock.acquire(first, end - 1);
    try {
      const columns = Math.min(end, this.stripes) - first;
      await this.onWritableShards((shard) => shard.nbd.trim(first * this.pageSize, columns * this.pageSize));
    } finally {
      release();
    }
  }

  async flush(): Promise<void> {
    this.assertOpen();
    await this.onWritableShards((shard) => shard.nbd.flush());
  }

  /** Counters since the region was allocated. */
  stats(): ExternalRegionStats {
    return { ...this.counters };
  }

  health(): RegionHealth {
    const lost = this.shards.filter((shard) => shard.state !== 'live').length;
    const spare = this.mode === 'coded' ? this.shards.length - this.k : this.shards.length - 1;
    return {
      degraded: lost > 0,
      lost,
      tolerance: Math.max(0, spare - lost),
      shards: this.shards.map((shard) => shard.status()),
    };
  }

  /** The region's descriptor at its current generation (what `fabric.open` finds). */
  get descriptor(): RegionDescriptor {
    return this.current;
  }

  /** Random id of the region (two regions made under one name at different times differ). */
  get id(): string {
    return this.current.id;
  }

  /**
   * Disconnects from the shards and keeps the region: its bytes stay on the appliances, and
   * `fabric.open(name)` (in this process or another) reopens it. Waits for I/O in flight.
   */
  async detach(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.publishing.catch(() => undefined);
    await Promise.all(this.shards.map((shard) => shard.close()));
  }

  /**
   * Disconnects and deletes the region's shards on their appliances, all in parallel (a shard
   * already gone counts as deleted; one that migrated is deleted where it went). If some could
   * not be deleted, rejects with a MemfabricError carrying the first failure's code and naming
   * every shard left behind; the region is closed either way (a second close does nothing), and
   * its name is released in the catalog.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.shards.map((shard) => shard.close()));
    // A shard that migrated and was not followed yet (the region closed first) answers its old
    // name with a forwarding record: deleting only that would leave the region where it went,
    // so the region is deleted there first, then the record.
    const deleteShard = async (shard: Shard): Promise<void> => {
      const where = await resolveRegion(this.directory.target(shard.appliance), shard.region, {
        timeoutMs: this.requestTimeoutMs,
        targetFor: (url) => this.directory.target(url),
      });
      if (where.appliance !== shard.appliance || where.region !== shard.region) {
        await this.directory.deleteRegion(where.appliance, where.region);
      }
      await this.directory.deleteRegion(shard.appliance, shard.region);
    };
    const results = await Promise.allSettled(this.shards.map(deleteShard));
    // The name is released whatever was left behind: the caller is told what remains.
    await this.forget(this.current);
    const left: string[] = [];
    let first: unknown;
    results.forEach((result, i) => {
      if (result.status === 'fulfilled') return;
      const reason: unknown = result.reason;
      if (reason instanceof MemfabricError && reason.code === ErrorCodes.NOT_FOUND) return;
      first ??= reason;
      const shard = this.shards[i]!;
      const why = reason instanceof Error ? reason.message : String(reason);
      left.push(`shard ${shard.index} (region ${shard.region} on ${shard.appliance}: ${why})`);
    });
    if (first === undefined) return;
    throw new MemfabricError(
      first instanceof MemfabricError ? first.code : ErrorCodes.INTERNAL,
      `region ${this.name} is closed, but ${left.length} of its ${this.shards.length} shards could not be ` +
        `deleted and still hold memory: ${left.join('; ')}. Remove each with ` +
        '`memfabric region rm REGION --appliance URL` once its appliance is reachable and idle',
      { cause: first },
    );
  }

  // ---------------------------------------------------------------------------------------
  // Rebuild and scrub

  /**
   * Replaces every lost shard with a new one on another appliance and refills it from the
   * survivors, while the region stays in use: writes reach the new shard from the moment it
   * exists; reads use it once it is full. `appliances` picks the replacements (else placement).
   */
  async rebuild(options: RebuildOptions = {}): Promise<{ rebuilt: number }> {
    this.assertOpen();
    let rebuilt = 0;
    const wanted = options.appliances ? [...options.appliances] : [];
    for (let index = 0; index < this.shards.length; index++) {
      if (this.shards[index]!.state !== 'lost') continue;
      const replacement = await this.replaceShard(index, wanted.shift());
      // Recorded as rebuilding first: if this client dies halfway, whoever opens the region
      // next sees a shard that is not full and rebuilds it again instead of reading it.
      await this.republish();
      await this.refill(replacement, options);
      replacement.state = 'live';
      await this.republish();
      rebuilt++;
    }
    return { rebuilt };
  }

  /** Re-reads every stripe, checks parity (or copies) and rewrites what disagrees. */
  async scrub(): Promise<ScrubResult> {
    this.assertOpen();
    if (this.shards.some((shard) => shard.state !== 'live')) {
      throw new MemfabricError(
        ErrorCodes.BUSY,
        `region ${this.name} is degraded; rebuild() it before scrubbing`,
      );
    }
    const result: ScrubResult = { stripesChecked: 0, mismatches: 0, repaired: 0 };
    if (this.mode === 'none') return result;
    const columns = this.mode === 'coded' ? this.stripes : Math.ceil(this.shardBytes / this.pageSize);
    for (let a = 0; a < columns; a += this.batchStripes) {
      const b = Math.min(columns - 1, a + this.batchStripes - 1);
      checkBatch(a, b, 0, columns - 1);
      if (this.mode === 'coded')
        await this.withStripes(a, b, (batch) => this.scrubBatch(batch, a, b, result));
      else await this.scrubCopies(a, b, result);
    }
    return result;
  }

  // ---------------------------------------------------------------------------------------
  // Coded internals

  /**
   * Writes stripes a..b of a write: under their stripe lock, codes them (codeStripes) and sends
   * each writable shard its write; the parity runs stay held (in a SendRuns) until every shard
   * answered. Where the time goes (1 MiB 4+2 writes, profiled on a 2-core machine shared with
   * six appliance processes): the client is mostly idle; of its own time most is the kernel
   * copying payloads into loopback sockets (writev), then the coding (~0.2 ms per MiB: ~1,500
   * native XORs of pages and packets), then the data pages' chunks through the socket. Data
   * pages are not copied to be sent: each data shard's write is the caller's pages themselves,
   * passed as chunks to writeGather (copying them into one run per shard measured no better).
   * The coding is synchronous: with ronomon's encode in the thread pool, a coded write on a
   * loaded machine waited milliseconds for a pool thread to be scheduled (for ~0.1 ms of
   * coding) while holding one of BATCH_POOL_MAX coding batches, which capped the writes in
   * flight; on the event loop (ReedSolomonCodec.encodeStripes, encodeSync) the wait is gone and
   * the client's CPU per byte fell by ~40%.
   */
  private async writeStripes(a: number, b: number, offset: number, data: Uint8Array): Promise<void> {
    // Once per geometry and process: the synchronous coders must agree with ronomon's encode.
    await this.codec?.checkSyncCoder();
    const release = await this.lock.acquire(a, b);
    try {
      const runs = await this.sends.take();
      try {
        const writes = await this.codeStripes(runs, a, b, offset, data);
        await this.settle(writes);
        this.assertEnough('write');
      } finally {
        this.sends.give(runs);
      }
    } finally {
      release();
    }
  }

  /**
   * Codes stripes a..b of a write and returns one write per writable shard: data shards the
   * columns the write touched, parity shards every column of a..b, from `runs`. Stripes the
   * write covers whole are coded straight from the caller's bytes into the runs; otherwise
   * (the write starts or ends inside a stripe, or its bytes are not 8-byte aligned for the XOR)
   * in a coding batch, held only while it runs (codeBatch).
   */
  private async codeStripes(
    runs: SendRuns,
    a: number,
    b: number,
    offset: number,
    data: Uint8Array,
  ): Promise<ShardOperation[]> {
    const stripeBytes = this.k * this.pageSize;
    const srcOffset = a * stripeBytes - offset;
    if (
      srcOffset >= 0 &&
      offset + data.length >= (b + 1) * stripeBytes &&
      (data.byteOffset + srcOffset) % 8 === 0
    ) {
      runs.codeWhole(this.codec!, data, srcOffset, b - a + 1);
      this.counters.codedBytes += (b - a + 1) * stripeBytes;
      return this.shardWrites(runs, undefined, a, b, offset, data);
    }
    const batch = await this.batches.take();
    try {
      return await this.codeBatch(batch, runs, a, b, offset, data);
    } finally {
      this.batches.give(batch);
    }
  }

  /**
   * Codes stripes a..b of a write in `batch`: reads first the stripes it covers in part, puts the
   * new bytes over them, codes on the event loop (encodeSync), and copies the parity out into
   * `runs` before the batch goes back to its pool.
   */
  private async codeBatch(
    batch: StripeBatch,
    runs: SendRuns,
    a: number,
    b: number,
    offset: number,
    data: Uint8Array,
  ): Promise<ShardOperation[]> {
    const k = this.k;
    const pageSize = this.pageSize;
    const end = offset + data.length;
    const stripeBytes = k * pageSize;
    const partialFirst = offset > a * stripeBytes;
    const partialLast = end < (b + 1) * stripeBytes;
    batch.reset(b - a + 1);
    // Read-modify-write: load the current contents of the stripes the write covers in part.
    if (partialFirst || partialLast) {
      await this.loadStripes(batch, a, partialFirst ? a : b, partialLast ? b : a);
    }
    // Gather for the coder. A page the write misses, or covers in part, lies in a stripe at one
    // end of the write that the write covers in part (a page before `offset` is in the write's
    // first stripe, which then starts before offset; one after `end` in its last), so
    // loadStripes loaded it: it keeps those bytes, and the new ones go over them.
    const firstPage = Math.floor(offset / pageSize);
    const lastPage = Math.floor((end - 1) / pageSize);
    // Every step puts a page of the batch, and the batch refuses a page outside it: a loop that
    // ran the wrong way would fail at once instead of spinning.
    const pageEnd = Math.min(lastPage, (b + 1) * k - 1);
    for (let page = Math.max(firstPage, a * k); page <= pageEnd; page++) {
      const s = Math.floor(page / k);
      const i = page - s * k;
      const pageStart = page * pageSize;
      const from = Math.max(pageStart, offset);
      const to = Math.min(pageStart + pageSize, end);
      if (to - from === pageSize) batch.putPage(s - a, i, data, pageStart - offset);
      else batch.putRange(s - a, i, from - pageStart, data, from - offset, to - from);
    }
    // On this thread: a thread-pool round trip costs more than the coding (see writeStripes).
    batch.encodeSync();
    this.counters.codedBytes += batch.count * k * pageSize;
    return this.shardWrites(runs, batch, a, b, offset, data);
  }

  /**
   * One write per writable shard for stripes a..b of a write whose parity is coded: data shards
   * the columns the write touched (whole pages from the caller's buffer, the two that may be
   * merged with loaded bytes copied from `batch`), parity shards every column of a..b (from the
   * runs codeWhole filled, or copied out of `batch`).
   */
  private shardWrites(
    runs: SendRuns,
    batch: StripeBatch | undefined,
    a: number,
    b: number,
    offset: number,
    data: Uint8Array,
  ): ShardOperation[] {
    const k = this.k;
    const pageSize = this.pageSize;
    const end = offset + data.length;
    const firstPage = Math.floor(offset / pageSize);
    const lastPage = Math.floor((end - 1) / pageSize);
    const writes: ShardOperation[] = [];
    for (const shard of this.shards) {
      if (!shard.writable) continue;
      if (shard.index >= k) {
        const run = batch ? runs.parityRun(batch, shard.index) : runs.run(shard.index - k, b - a + 1);
        writes.push([shard, (target) => target.nbd.write(a * pageSize, run)]);
        continue;
      }
      const c0 = Math.max(a, Math.ceil((firstPage - shard.index) / k));
      const c1 = Math.min(b, Math.floor((lastPage - shard.index) / k));
      if (c0 > c1) continue;
      const chunks: Uint8Array[] = [];
      for (let c = c0; c <= c1; c++) {
        const pageStart = (c * k + shard.index) * pageSize;
        if (pageStart >= offset && pageStart + pageSize <= end) {
          chunks.push(data.subarray(pageStart - offset, pageStart - offset + pageSize));
        } else if (batch) {
          chunks.push(runs.pageCopy(pageStart < offset ? 0 : 1, batch, c - a, shard.index));
        } else {
          throw internalFault(`page ${pageStart / pageSize} of whole stripes ${a}..${b} is not whole`);
        }
      }
      writes.push([shard, (target) => target.nbd.writeGather(c0 * pageSize, chunks)]);
    }
    return writes;
  }

  /**
   * Fills data pages of stripes first..last (within the batch a..) from the shards, rebuilding
   * lost data shards from parity. Parity pages of the batch are left undefined.
   */
  private async loadStripes(batch: StripeBatch, a: number, first: number, last: number): Promise<void> {
    const k = this.k;
    const ranges: Array<[number, number]> =
      first === last || last === first + 1
        ? [[first, last]]
        : [
            [first, first],
            [last, last],
          ];
    for (const [c0, c1] of ranges) await this.loadColumns(batch, a, c0, c1, (1 << k) - 1);
  }

  /**
   * Reads columns c0..c1 into the batch (whose first column is a) for every shard in `wanted`
   * (a mask), reconstructing wanted shards that are lost. Reconstruction codes every stripe of
   * the batch it runs on, so when c0..c1 is only part of the batch it runs on a batch of its
   * own and the result is copied over: other stripes of `batch` may hold loaded pages whose
   * parity was never read, and must not be recomputed from it.
   */
  private async loadColumns(
    batch: StripeBatch,
    a: number,
    c0: number,
    c1: number,
    wanted: number,
  ): Promise<void> {
    const pageSize = this.pageSize;
    const whole = c0 === a && c1 - c0 + 1 === batch.count;
    for (let attempt = 0; attempt <= this.shards.length; attempt++) {
      // Prefer the wanted shards; add other live shards until k are present.
      const readable = this.shards.filter((shard) => shard.readable);
      const sources = readable.filter((shard) => wanted & (1 << shard.index));
      for (const shard of readable)
        if (sources.length < this.k && !sources.includes(shard)) sources.push(shard);
      const present = sources.reduce((mask, shard) => mask | (1 << shard.index), 0);
      const missingWanted = wanted & ~present;
      if (missingWanted !== 0 && sources.length < this.k) throw this.dataLost(`reading stripes ${c0}..${c1}`);
      const target =
        whole || missingWanted === 0 ? batch : new StripeBatch(this.codec!, pageSize, c1 - c0 + 1);
      const base = target === batch ? a : c0;
      if (target !== batch) target.reset(c1 - c0 + 1);
      const reads = sources.map((shard): ShardOperation => [
        shard,
        async (s) => {
          const run = await s.nbd.read(c0 * pageSize, (c1 - c0 + 1) * pageSize);
          for (let c = c0; c <= c1; c++) target.putPage(c - base, shard.index, run, (c - c0) * pageSize);
        },
      ]);
      if ((await this.settle(reads)) > 0) continue; // sources changed: choose again
      if (missingWanted === 0) return;
      if (!target.rebuildByXor(present, missingWanted)) await target.reconstruct(present, missingWanted);
      if (target !== batch) {
        const page = Buffer.alloc(pageSize);
        for (let i = 0; i < this.shards.length; i++) {
          if (!(wanted & (1 << this.shards[i]!.index))) continue;
          for (let c = c0; c <= c1; c++) {
            target.getPage(c - c0, i, page);
            batch.putPage(c - a, i, page);
          }
        }
      }
      return;
    }
    throw this.dataLost(`reading stripes ${c0}..${c1}`);
  }

  private async readHealthy(offset: number, dst: Uint8Array): Promise<void> {
    const k = this.k;
    const pageSize = this.pageSize;
    const end = offset + dst.length;
    const firstPage = Math.floor(offset / pageSize);
    const lastPage = Math.floor((end - 1) / pageSize);
    await Promise.all(
      this.shards.slice(0, k).map(async (shard) => {
        const c0 = Math.ceil((firstPage - shard.index) / k);
        const c1 = Math.floor((lastPage - shard.index) / k);
        if (c0 > c1) return;
        let run: Buffer;
        try {
          run = await shard.nbd.read(c0 * pageSize, (c1 - c0 + 1) * pageSize);
        } catch (error) {
          if (!isLocalFault(error)) await this.follow(shard, error);
          throw error;
        }
        for (let c = c0; c <= c1; c++) {
          const pageStart = (c * k + shard.index) * pageSize;
          const from = Math.max(pageStart, offset);
          const to = Math.min(pageStart + pageSize, end);
          checkInRange(from, to);
          run.copy(
            dst,
            from - offset,
            (c - c0) * pageSize + (from - pageStart),
            (c - c0) * pageSize + (to - pageStart),
          );
        }
      }),
    );
  }

  /**
   * A read while data shards are lost, one batch of stripes at a time under its stripe lock (a
   * write in flight must not be seen half applied). Only what the range needs is read: live data
   * shards their own pages of the range, and, for the columns where lost shards hold pages of the
   * range, k sources from which only those pages are rebuilt — by XOR straight from the runs when
   * one data shard is lost and parity k is read, else by the coder on those columns alone.
   */
  private async readDegraded(offset: number, dst: Uint8Array): Promise<void> {
    const k = this.k;
    const pageSize = this.pageSize;
    const end = offset + dst.length;
    const firstPage = Math.floor(offset / pageSize);
    const lastPage = Math.floor((end - 1) / pageSize);
    const firstStripe = Math.floor(firstPage / k);
    const lastStripe = Math.floor(lastPage / k);
    for (let a = firstStripe; a <= lastStripe; a += this.batchStripes) {
      const b = Math.min(lastStripe, a + this.batchStripes - 1);
      checkBatch(a, b, firstStripe, lastStripe);
      await this.withStripes(a, b, (batch) => this.readDegradedBatch(batch, a, b, offset, dst));
    }
  }

  private async readDegradedBatch(
    batch: StripeBatch,
    a: number,
    b: number,
    offset: number,
    dst: Uint8Array,
  ): Promise<void> {
    const k = this.k;
    const pageSize = this.pageSize;
    const end = offset + dst.length;
    const firstPage = Math.floor(offset / pageSize);
    const lastPage = Math.floor((end - 1) / pageSize);
    /** Columns of data shard i within a..b holding pages of the range (c0 > c1: none). */
    const columnsOf = (i: number): [number, number] => [
      Math.max(a, Math.ceil((firstPage - i) / k)),
      Math.min(b, Math.floor((lastPage - i) / k)),
    ];
    /** Copies the part of page (column c, data shard i) in the range from `src` at srcAt into dst. */
    const copyOut = (c: number, i: number, src: Uint8Array, srcAt: number): void => {
      const pageStart = (c * k + i) * pageSize;
      const from = Math.max(pageStart, offset);
      const to = Math.min(pageStart + pageSize, end);
      checkInRange(from, to);
      dst.set(src.subarray(srcAt + from - pageStart, srcAt + to - pageStart), from - offset);
    };
    for (let attempt = 0; attempt <= this.shards.length; attempt++) {
      // Lost data shards with pages in the range, and the columns r0..r1 they span.
      let lost = 0;
      let r0 = b + 1;
      let r1 = a - 1;
      for (let i = 0; i < k; i++) {
        if (this.shards[i]!.readable) continue;
        const [c0, c1] = columnsOf(i);
        if (c0 > c1) continue;
        lost |= 1 << i;
        r0 = Math.min(r0, c0);
        r1 = Math.max(r1, c1);
      }
      // Sources: live data shards (their pages of the range, plus r0..r1 when rebuilding), then
      // parity shards until k are present for the rebuild.
      const sources: Array<[Shard, number, number]> = [];
      let present = 0;
      for (const shard of this.shards) {
        if (!shard.readable) continue;
        const i = shard.index;
        let [c0, c1] = i < k ? columnsOf(i) : [b + 1, a - 1];
        if (lost !== 0 && (i < k || popcount(present) < k)) {
          c0 = Math.min(c0, r0);
          c1 = Math.max(c1, r1);
          present |= 1 << i;
        }
        if (c0 <= c1) sources.push([shard, c0, c1]);
      }
      if (lost !== 0 && popcount(present) < k) throw this.dataLost(`reading stripes ${r0}..${r1}`);
      // One data shard lost, and the sources are every other data shard and parity k: each lost
      // page is the XOR of the same page of the sources (ronomon's first parity is the data's
      // XOR; codec.test.ts checks it). Another data shard lost with no pages in the range would
      // leave parity k+1 among the sources, which must not be XORed.
      const byXor =
        lost !== 0 && (lost & (lost - 1)) === 0 && present === ((((1 << k) - 1) & ~lost) | (1 << k));
      // Without the coder (nothing lost in the range, or by XOR) the batch's coding buffer is
      // idle: the runs are read into it rather than into new buffers, one per shard and read.
      // (At most k sources of at most b-a+1 columns each: within the k · capacity pages it holds.)
      const spare = lost === 0 || byXor ? batch.spareBytes() : undefined;
      const runs: Buffer[] = new Array<Buffer>(sources.length);
      let spareUsed = 0;
      const reads = sources.map(([shard, c0, c1], n): ShardOperation => {
        const bytes = (c1 - c0 + 1) * pageSize;
        const into =
          spare && spareUsed + bytes <= spare.length
            ? spare.subarray(spareUsed, spareUsed + bytes)
            : undefined;
        if (into) spareUsed += bytes;
        return [
          shard,
          async (target) => {
            if (into) {
              await target.nbd.readInto(c0 * pageSize, into);
              runs[n] = into;
            } else runs[n] = await target.nbd.read(c0 * pageSize, bytes);
          },
        ];
      });
      if ((await this.settle(reads)) > 0) continue; // sources changed: choose again
      /** Where column c of source n's run starts. */
      const at = (n: number, c: number): number => (c - sources[n]![1]) * pageSize;
      sources.forEach(([shard], n) => {
        if (shard.index >= k) return;
        const [d0, d1] = columnsOf(shard.index);
        for (let c = d0; c <= d1; c++) copyOut(c, shard.index, runs[n]!, at(n, c));
      });
      if (lost === 0) return;
      if (byXor) {
        const i = Math.log2(lost);
        const page = batch.scratchPage();
        const [l0, l1] = columnsOf(i);
        // The sources are exactly those shards (every live data shard is one, and parity is
        // added only up to k): the first is copied, the others XORed in.
        for (let c = l0; c <= l1; c++) {
          runs[0]!.copy(page, 0, at(0, c), at(0, c) + pageSize);
          for (let n = 1; n < sources.length; n++) xorInto(page, runs[n]!, at(n, c));
          copyOut(c, i, page, 0);
        }
        return;
      }
      batch.reset(r1 - r0 + 1);
      sources.forEach(([shard], n) => {
        if (!(present & (1 << shard.index))) return;
        for (let c = r0; c <= r1; c++) batch.putPage(c - r0, shard.index, runs[n]!, at(n, c));
      });
      await batch.reconstruct(present, lost);
      for (let i = 0; i < k; i++) {
        if (!(lost & (1 << this.shards[i]!.index))) continue;
        const [l0, l1] = columnsOf(i);
        for (let c = l0; c <= l1; c++) {
          const pageStart = (c * k + i) * pageSize;
          const from = Math.max(pageStart, offset);
          const to = Math.min(pageStart + pageSize, end);
          checkInRange(from, to);
          batch.getRange(c - r0, i, from - pageStart, dst, from - offset, to - from);
        }
      }
      return;
    }
    throw this.dataLost(`reading stripes ${a}..${b}`);
  }

  private async scrubBatch(batch: StripeBatch, a: number, b: number, result: ScrubResult): Promise<void> {
    const n = b - a + 1;
    const pageSize = this.pageSize;
    batch.reset(n);
    const all = (1 << this.shards.length) - 1;
    await this.loadColumns(batch, a, a, b, all);
    const stored: Buffer[] = [];
    for (let j = this.k; j < this.shards.length; j++) {
      const run = Buffer.alloc(n * pageSize);
      for (let s = 0; s < n; s++) batch.getPage(s, j, run, s * pageSize);
      stored.push(run);
    }
    await batch.encode();
    const page = Buffer.alloc(pageSize);
    const repairs: ShardOperation[] = [];
    for (let s = 0; s < n; s++) {
      result.stripesChecked++;
      let bad = false;
      for (let j = this.k; j < this.shards.length; j++) {
        batch.getPage(s, j, page);
        if (page.compare(stored[j - this.k]!, s * pageSize, (s + 1) * pageSize) !== 0) {
          bad = true;
          const shard = this.shards[j]!;
          const fixed = Buffer.from(page);
          repairs.push([shard, (target) => target.nbd.write((a + s) * pageSize, fixed)]);
        }
      }
      if (bad) result.mismatches++;
    }
    const failed = await this.settle(repairs);
    result.repaired += repairs.length - failed;
    this.assertEnough('scrub');
  }

  // ---------------------------------------------------------------------------------------
  // Plain and mirrored internals

  private async readCopy(offset: number, dst: Uint8Array): Promise<void> {
    for (let attempt = 0; attempt < this.shards.length; attempt++) {
      const readable = this.shards.filter((shard) => shard.readable);
      if (readable.length === 0) break;
      const shard = readable[this.readCursor++ % readable.length]!;
      try {
        await shard.nbd.readInto(offset, dst);
        return;
      } catch (error) {
        if (!this.isShardFailure(error)) throw error;
        await this.follow(shard, error);
      }
    }
    throw this.dataLost(`reading ${dst.length} bytes at ${offset}`);
  }

  private async writeCopies(offset: number, data: Uint8Array): Promise<void> {
    // Lock the pages written so two overlapping writes reach every copy in the same order.
    const first = Math.floor(offset / this.pageSize);
    const last = Math.floor((offset + data.length - 1) / this.pageSize);
    const release = await this.lock.acquire(first, last);
    try {
      await this.onWritableShards((shard) => shard.nbd.write(offset, data));
    } finally {
      release();
    }
  }

  private async scrubCopies(a: number, b: number, result: ScrubResult): Promise<void> {
    const release = await this.lock.acquire(a, b);
    try {
      const offset = a * this.pageSize;
      const length = Math.min(this.shardBytes, (b + 1) * this.pageSize) - offset;
      const copies = await Promise.all(this.shards.map((shard) => shard.nbd.read(offset, length)));
      for (let c = 0; c <= b - a; c++) {
        const from = c * this.pageSize;
        const to = Math.min(length, from + this.pageSize);
        result.stripesChecked++;
        // The majority version wins (copy 0 on a tie).
        const votes = copies.map((x) => copies.filter((y) => x.compare(y, from, to, from, to) === 0).length);
        const winner = votes.indexOf(Math.max(...votes));
        const bad = copies.filter((x) => copies[winner]!.compare(x, from, to, from, to) !== 0);
        if (bad.length === 0) continue;
        result.mismatches++;
        const good = copies[winner]!.subarray(from, to);
        const repairs = this.shards
          .filter((_, i) => copies[winner]!.compare(copies[i]!, from, to, from, to) !== 0)
          .map((shard): ShardOperation => [shard, (target) => target.nbd.write(offset + from, good)]);
        result.repaired += repairs.length - (await this.settle(repairs));
      }
    } finally {
      release();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rebuild internals

  private async replaceShard(index: number, appliance: string | undefined): Promise<Shard> {
    if (appliance) this.directory.add(appliance);
    const states = await this.directory.refresh();
    const inUse = new Set(this.shards.map((shard) => shard.appliance));
    let target = appliance ? states.find((state) => state.url === appliance) : undefined;
    if (appliance && (!target || !target.reachable)) {
      throw new MemfabricError(
        ErrorCodes.PLACEMENT_FAILED,
        `replacement appliance ${appliance} is not reachable`,
      );
    }
    target ??= place(states, { shards: 1, shardBytes: this.shardBytes, exclude: inUse })[0]!;
    const old = this.shards[index]!;
    // Named after the generation that adds it: unique across the clients that ever open the region.
    const region = `${this.name}-${index}-g${this.current.generation + 1}`;
    await this.directory.createRegion(target.url, {
      name: region,
      size: this.shardBytes,
      tenant: this.tenant,
    });
    const replacement = await Shard.open({
      index,
      appliance: target.url,
      region,
      nbd: target.nbd,
      requestTimeoutMs: this.requestTimeoutMs,
      tls: this.tls,
      state: 'rebuilding',
    });
    replacement.onClose = (closed, error) => void this.follow(closed, error);
    this.shards[index] = replacement;
    // The lost shard's region is garbage now; delete it if its appliance still answers.
    void this.directory.deleteRegion(old.appliance, old.region).catch(() => undefined);
    return replacement;
  }

  /**
   * Fills a replacement shard from the survivors: REFILL_DEPTH batches in flight (each under its
   * own stripe lock, so writes to other stripes go on), each worker reusing one run buffer;
   * paced to `bytesPerSecond` when given (a rebuild should not starve the region's own I/O).
   */
  private async refill(shard: Shard, options: RebuildOptions): Promise<void> {
    const pageSize = this.pageSize;
    const columns = Math.ceil(this.shardBytes / pageSize);
    const total = columns * pageSize;
    const started = performance.now();
    let next = 0;
    let done = 0;
    const worker = async (): Promise<void> => {
      const run = Buffer.alloc(this.batchStripes * pageSize);
      for (let a = next; a < columns; a = next) {
        next += this.batchStripes;
        const b = Math.min(columns - 1, a + this.batchStripes - 1);
        checkBatch(a, b, 0, columns - 1);
        const bytes = (b - a + 1) * pageSize;
        if (this.mode === 'coded') {
          await this.withStripes(a, b, async (batch) => {
            batch.reset(b - a + 1);
            await this.loadColumns(batch, a, a, b, 1 << shard.index);
            for (let c = a; c <= b; c++) batch.getPage(c - a, shard.index, run, (c - a) * pageSize);
            await shard.nbd.write(a * pageSize, run.subarray(0, bytes));
          });
        } else {
          const release = await this.lock.acquire(a, b);
          try {
            const offset = a * pageSize;
            const length = Math.min(this.shardBytes, (b + 1) * pageSize) - offset;
            await this.readCopy(offset, run.subarray(0, length));
            await shard.nbd.write(offset, run.subarray(0, length));
          } finally {
            release();
          }
        }
        done += bytes;
        options.onProgress?.({ shard: shard.index, bytesDone: done, bytesTotal: total });
        if (options.bytesPerSecond) {
          const ahead = started + (done / options.bytesPerSecond) * 1000 - performance.now();
          if (ahead > 0) await delay(ahead);
        }
      }
    };
    await Promise.all(Array.from({ length: REFILL_DEPTH }, worker));
    await shard.nbd.flush();
  }

  // ---------------------------------------------------------------------------------------
  // Shared machinery

  /** Runs `body` holding the stripe lock on a..b and a coding batch. */
  private async withStripes(
    a: number,
    b: number,
    body: (batch: StripeBatch) => Promise<void>,
  ): Promise<void> {
    const release = await this.lock.acquire(a, b);
    const batch = await this.batches.take();
    try {
      await body(batch);
    } finally {
      this.batches.give(batch);
      release();
    }
  }

  /**
   * Runs one operation per shard. An operation that fails is retried once where its shard moved
   * (if it did); otherwise that shard is lost. Returns the operations that failed for good.
   */
  private async settle(operations: ShardOperation[]): Promise<number> {
    const results = await Promise.allSettled(
      operations.map(async ([shard, run]) => {
        try {
          await run(shard);
        } catch (error) {
          if (isLocalFault(error)) throw error;
          const moved = await this.follow(shard, error);
          if (!moved) throw error;
          try {
            await run(moved);
          } catch (again) {
            moved.lose(`failed again after it moved: ${(again as Error).message}`);
            throw again;
          }
        }
      }),
    );
    // A shard lost (or moved) by these operations is recorded before they count as done: a
    // write acknowledged without a shard must never be followed, after a reopen, by a read of
    // that shard (its appliance may come back with the old bytes).
    if (this.descriptorBehind()) await this.republish();
    // A fault of this code (a wrong offset, a page outside a batch) is thrown, never counted as
    // a shard failure: it must not lose healthy shards or send a read round again.
    let failed = 0;
    for (const result of results) {
      if (result.status === 'fulfilled') continue;
      if (isLocalFault(result.reason)) throw result.reason;
      failed++;
    }
    return failed;
  }

  /** The shard list as it is now, in descriptor form. */
  private placements(): ShardPlacement[] {
    return this.shards.map((shard) => ({
      index: shard.index,
      appliance: shard.appliance,
      region: shard.region,
      nbd: { host: shard.endpoint.host, port: shard.endpoint.port },
      state: shard.state,
    }));
  }

  /** Whether a shard was lost, replaced, moved or filled since the descriptor was published. */
  private descriptorBehind(): boolean {
    const recorded = this.current.shards;
    return this.shards.some((shard, i) => {
      const placed = recorded[i]!;
      return (
        placed.state !== shard.state || placed.appliance !== shard.appliance || placed.region !== shard.region
      );
    });
  }

  /**
   * Publishes the next generation if the shard list changed, one publication at a time; a
   * failure rejects (the caller's write with it) and the next call tries again.
   */
  private republish(): Promise<void> {
    const run = this.publishing
      .catch(() => undefined)
      .then(async () => {
        if (!this.descriptorBehind()) return;
        const next = nextGeneration(this.current, { shards: this.placements() });
        await this.publish(next);
        this.current = next;
      });
    this.publishing = run;
    return run;
  }

  /**
   * After `shard` failed with `error`: where is its region now? Resolves to the shard that
   * replaces it when its appliance says the region moved (a migration), else marks it lost and
   * resolves to undefined. One lookup per shard at a time; timeouts are never looked up (a hung
   * appliance cannot answer, and the shard is lost at once).
   */
  /**
   * Where a shard's region is served now, asked of the appliance that served it: where it moved
   * (resolveRegion waits out a blackout); or the same place when a migration of it failed, or
   * when the appliance refused with ESHUTDOWN without migrating it. Undefined otherwise: with
   * no sign of a migration, the shard is lost.
   */
  private async findHome(
    shard: Shard,
    shutdown: boolean,
  ): Promise<{ appliance: string; region: string; nbd: { host: string; port: number } } | undefined> {
    const where = await resolveRegion(this.directory.target(shard.appliance), shard.region, {
      waitMs: MIGRATION_WAIT_MS,
      timeoutMs: this.requestTimeoutMs,
      targetFor: (url) => this.directory.target(url),
    });
    if (where.appliance !== shard.appliance || where.region !== shard.region) return where;
    const state = await migrationState(
      this.directory.target(shard.appliance),
      shard.region,
      this.requestTimeoutMs,
    );
    return state === 'failed' || (state === 'none' && shutdown) ? where : undefined;
  }

  private follow(shard: Shard, error: unknown): Promise<Shard | undefined> {
    const current = this.shards[shard.index]!;
    if (current !== shard) return Promise.resolve(current.state === 'lost' ? undefined : current);
    if (shard.state === 'lost') return Promise.resolve(undefined);
    const pending = this.following.get(shard.index);
    if (pending) return pending;
    const reason = error instanceof Error ? error.message : 'connection closed';
    const lookup = (async (): Promise<Shard | undefined> => {
      if (this.closed || !mayHaveMoved(error)) {
        shard.lose(reason);
        return undefined;
      }
      try {
        const where = await this.findHome(shard, isShutdown(error));
        if (!where) {
          shard.lose(reason);
          return undefined;
        }
        const moved = await Shard.open({
          index: shard.index,
          appliance: where.appliance,
          region: where.region,
          nbd: where.nbd,
          requestTimeoutMs: this.requestTimeoutMs,
          tls: this.tls,
          state: shard.state,
        });
        moved.onClose = (closed, closeError) => void this.follow(closed, closeError);
        this.directory.add(where.appliance);
        this.shards[shard.index] = moved;
        shard.lose(`moved to ${where.region} on ${where.appliance}`);
        void this.republish().catch(() => undefined); // a later write awaits it again, and reports
        return moved;
      } catch (lookupError) {
        shard.lose(`${reason}; and finding where it moved failed: ${(lookupError as Error).message}`);
        return undefined;
      }
    })().finally(() => this.following.delete(shard.index));
    this.following.set(shard.index, lookup);
    return lookup;
  }

  private async onWritableShards(operation: (shard: Shard) => Promise<void>): Promise<void> {
    this.assertOpen();
    await this.settle(this.shards.filter((shard) => shard.writable).map((shard) => [shard, operation]));
    this.assertEnough('write');
  }

  private dataShardsLive(): boolean {
    for (let i = 0; i < this.k; i++) if (!this.shards[i]!.readable) return false;
    return true;
  }

  /** Throws DATA_LOST when fewer shards remain than the data needs. */
  private assertEnough(what: string): void {
    const live = this.shards.filter((shard) => shard.state === 'live').length;
    if (live < (this.mode === 'coded' ? this.k : 1)) throw this.dataLost(what);
  }

  private dataLost(what: string): MemfabricError {
    const lost = this.shards.filter((shard) => shard.state === 'lost').length;
    return new MemfabricError(
      ErrorCodes.DATA_LOST,
      `region ${this.name}: ${what} failed: ${lost} of ${this.shards.length} shards are lost, more than its ` +
        `redundancy (${describeRedundancy(this.redundancy)}) covers`,
    );
  }

  private isShardFailure(error: unknown): boolean {
    return !isLocalFault(error) && !(error instanceof MemfabricError && error.code === ErrorCodes.DATA_LOST);
  }

  private checkRange(offset: number, length: number): void {
    this.assertOpen();
    checkRegionRange(offset, length, this.size, this.name);
  }

  private assertOpen(): void {
    if (this.closed) throw new MemfabricError(ErrorCodes.DESTROYED, `region ${this.name} was closed`);
  }
}

/**
 * An error of this process rather than of a shard: not a MemfabricError (a RangeError, a
 * TypeError), or an argument or invariant this code got wrong. Shard I/O fails with
 * MemfabricErrors of other codes (closed, timed out, refused).
 */
function isLocalFault(error: unknown): boolean {
  return (
    !(error instanceof MemfabricError) ||
    error.code === ErrorCodes.INVALID_ARGUMENT ||
    error.code === ErrorCodes.INTERNAL
  );
}

function internalFault(what: string): MemfabricError {
  return new MemfabricError(
    ErrorCodes.INTERNAL,
    `fabric region: ${what} (a bug in memfabric; please report it)`,
  );
}

/**
 * A batch loop's step a..b lies inside first..last and is not empty. A loop whose step went
 * wrong (backwards, or not at all) fails here on its first bad step instead of spinning.
 */
function checkBatch(a: number, b: number, first: number, last: number): void {
  if (!(a >= first && a <= b && b <= last)) throw internalFault(`batch ${a}..${b} outside ${first}..${last}`);
}

/** A page copied to or from the caller's range meets that range ([from, to) is not empty). */
function checkInRange(from: number, to: number): void {
  if (!(from < to)) throw internalFault(`a page copy of [${from}, ${to}) misses the range asked for`);
}

/** Xors target.length bytes of `src` from `srcAt` into `target` (4 bytes at a time where aligned). */
function xorInto(target: Buffer, src: Uint8Array, srcAt: number): void {
  const length = target.length;
  const from = src.byteOffset + srcAt;
  if (target.byteOffset % 4 === 0 && from % 4 === 0 && length % 4 === 0) {
    const t = new Int32Array(target.buffer, target.byteOffset, length / 4);
    const s = new Int32Array(src.buffer, from, length / 4);
    for (let w = 0; w < t.length; w++) t[w]! ^= s[w]!;
    return;
  }
  for (let i = 0; i < length; i++) target[i]! ^= src[srcAt + i]!;
}

/** An operation on one shard: run on that shard, or retried on the shard it moved to. */
type ShardOperation = [Shard, (shard: Shard) => Promise<void>];

/** The appliance refused with ESHUTDOWN: it is migrating (or stopping) the region. */
function isShutdown(error: unknown): boolean {
  return (
    error instanceof MemfabricError &&
    error.code === ErrorCodes.NBD_REQUEST_FAILED &&
    (error as MemfabricError & { errno?: number }).errno === ESHUTDOWN
  );
}

/** Errors after which a shard's region may have moved rather than died: a closed connection, ESHUTDOWN. */
function mayHaveMoved(error: unknown): boolean {
  if (!(error instanceof MemfabricError)) return true;
  return error.code === ErrorCodes.CONNECTION_CLOSED || isShutdown(error);
}

export interface ShardGeometry {
  mode: 'none' | 'mirror' | 'coded';
  /** Shards in all. */
  shards: number;
  k: number;
  shardBytes: number;
  stripes: number;
}

/** How a region of `size` bytes with `redundancy` is split into shards. */
export function shardGeometry(redundancy: Redundancy, size: number, pageSize: number): ShardGeometry {
  if (redundancy === 'none') return { mode: 'none', shards: 1, k: 1, shardBytes: size, stripes: 0 };
  if ('copies' in redundancy) {
    if (!Number.isInteger(redundancy.copies) || redundancy.copies < 1 || redundancy.copies > 16) {
      throw invalidArgument(`copies ${redundancy.copies} must be a whole number from 1 to 16`);
    }
    return { mode: 'mirror', shards: redundancy.copies, k: 1, shardBytes: size, stripes: 0 };
  }
  const { data: k, parity: m } = redundancy;
  if (!Number.isInteger(k) || !Number.isInteger(m) || k < 1 || m < 1 || k + m > 30) {
    throw invalidArgument(
      `Reed–Solomon ${k}+${m}: data and parity must be whole numbers >= 1, at most 30 shards`,
    );
  }
  const pages = Math.ceil(size / pageSize);
  const stripes = Math.ceil(pages / k);
  return { mode: 'coded', shards: k + m, k, shardBytes: stripes * pageSize, stripes };
}

export function describeRedundancy(redundancy: Redundancy): string {
  if (redundancy === 'none') return 'none';
  if ('copies' in redundancy) return `${redundancy.copies} copies`;
  return `Reed–Solomon ${redundancy.data}+${redundancy.parity}`;
}
