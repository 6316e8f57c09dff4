/**
 * Reed–Solomon k+m coding over stripes of pages, with @ronomon/reed-solomon (a native addon
 * that codes in libuv's thread pool, off the event loop). Chosen after measuring on this
 * machine: 4+2 with 4 KiB shards one call at a time codes 0.56 GB/s of data (each call costs
 * ~25 µs of thread-pool dispatch), with 64 KiB shards 6.2 GB/s, and with 256 KiB shards and
 * four calls in flight 16 GB/s — 10–20× the WASM ports. So the fabric codes many stripes per
 * call.
 *
 * Batching. ronomon codes bit-sliced: it splits every shard into w equal packets (w = 2, 4 or
 * 8, its Galois field exponent, chosen from k+m) and combines the data shards' packets into
 * each parity packet position by position. So a stripe of k pages coded alone and the same
 * stripe inside a batch give the same parity only if each page is laid out as its w packets in
 * w rows of the batch shard, packet b at row b. (Rows move as one copy each, so fewer, larger
 * packets — w is 4 for most geometries — keep the gather and scatter cheap.) StripeBatch does
 * that interleave: shard i of a batch of n stripes is w rows of n × (pageSize / w) bytes, row b
 * holding packet b of every stripe. What lands on the
 * appliances is always the plain page, and its parity is the parity of the stripe alone,
 * whatever batch it was coded in (a test checks this against single-stripe coding).
 *
 * One more rule, from ronomon's source: it halves its internal packet size while
 * (1 + k·w) × packet > CODER_CACHE_BYTES (1 MiB), and that changes the parity. So a batch may hold
 * at most maxStripesPerCall(pageSize) stripes, the most that keep packets whole, and a geometry
 * where even one stripe would be split is refused.
 */
import { createRequire } from 'node:module';
import type * as ReedSolomonModule from '@ronomon/reed-solomon';
import { invalidArgument } from '../errors.js';

// A native addon (its package "main" is binding.node), which ESM cannot import: require it.
const ReedSolomon = createRequire(import.meta.url)('@ronomon/reed-solomon') as typeof ReedSolomonModule;

/** ronomon keeps (1 + k·w) packets within this many bytes of cache (see the overview). */
export const CODER_CACHE_BYTES = 1024 * 1024;

export class ReedSolomonCodec {
  readonly k: number;
  readonly m: number;
  /** ronomon's Galois field exponent: it splits each shard into w packets. */
  readonly w: number;
  private readonly context: ReedSolomonModule.Context;
  private readonly dataMask: number;
  private readonly parityMask: number;

  constructor(k: number, m: number) {
    if (
      !Number.isInteger(k) ||
      !Number.isInteger(m) ||
      k < 1 ||
      m < 1 ||
      k > ReedSolomon.MAX_K ||
      m > ReedSolomon.MAX_M
    ) {
      throw invalidArgument(
        `Reed–Solomon needs 1 <= data <= ${ReedSolomon.MAX_K} and 1 <= parity <= ${ReedSolomon.MAX_M}; got ${k}+${m}`,
      );
    }
    this.k = k;
    this.m = m;
    this.context = ReedSolomon.create(k, m);
    // The Galois field exponent ronomon picked for k+m (2, 4 or 8), kept in the context's first byte.
    this.w = (this.context as unknown as Uint8Array)[0]!;
    this.dataMask = (1 << k) - 1;
    this.parityMask = ((1 << (k + m)) - 1) & ~this.dataMask;
  }

  /**
   * The most stripes of `pageSize` pages one coding call may hold and still code each stripe
   * exactly as it would be coded alone (0: even one stripe is too large for this k).
   */
  maxStripesPerCall(pageSize: number): number {
    return Math.floor(CODER_CACHE_BYTES / ((1 + this.w * this.k) * (pageSize / this.w)));
  }

  /** Computes every parity shard from the data shards. */
  encode(data: Buffer, parity: Buffer, shardBytes: number): Promise<void> {
    return this.run(this.dataMask, this.parityMask, data, parity, shardBytes);
  }

  /**
   * Recomputes the shards in `missing` (a bit mask over shard indexes 0..k+m-1) from the
   * shards in `present` (at least k of them). Other shards are left as they are.
   */
  reconstruct(
    data: Buffer,
    parity: Buffer,
    shardBytes: number,
    present: number,
    missing: number,
  ): Promise<void> {
    if (popcount(present) < this.k) {
      return Promise.reject(
        invalidArgument(`${popcount(present)} shards present; reconstruction needs ${this.k}`),
      );
    }
    if (missing === 0) return Promise.resolve();
    return this.run(present & ~missing, missing, data, parity, shardBytes);
  }

  private run(
    sources: number,
    targets: number,
    data: Buffer,
    parity: Buffer,
    shardBytes: number,
  ): Promise<void> {
    if (shardBytes % 8 !== 0 || data.length < this.k * shardBytes || parity.length < this.m * shardBytes) {
      return Promise.reject(
        invalidArgument(`shard size ${shardBytes} must be a multiple of 8 and fit the buffers`),
      );
    }
    return new Promise((resolve, reject) => {
      ReedSolomon.encode(
        this.context,
        sources,
        targets,
        data,
        0,
        this.k * shardBytes,
        parity,
        0,
        this.m * shardBytes,
        (error) => (error ? reject(error) : resolve()),
      );
    });
  }
}

export function popcount(mask: number): number {
  let count = 0;
  for (let bits = mask; bits !== 0; bits &= bits - 1) count++;
  return count;
}

/**
 * Up to `capacity` stripes of k data and m parity pages, laid out for one coding call.
 * Stripe numbers are 0..count-1 within the batch. Buffers are reused across batches.
 */
export class StripeBatch {
  readonly codec: ReedSolomonCodec;
  readonly pageSize: number;
  readonly capacity: number;
  /** Stripes in the current batch (set by reset). */
  count = 0;
  private readonly data: Buffer;
  private readonly parity: Buffer;
  /** Packets per page (ronomon's w). */
  private readonly rows: number;
  private readonly packet: number;

  /** `capacity` is lowered to what one coding call may hold (maxStripesPerCall). */
  constructor(codec: ReedSolomonCodec, pageSize: number, capacity: number) {
    if (pageSize % (codec.w * 8) !== 0) {
      throw invalidArgument(`page size ${pageSize} must be a multiple of 64`);
    }
    const most = codec.maxStripesPerCall(pageSize);
    if (most < 1) {
      throw invalidArgument(
        `${pageSize}-byte pages are too large to code ${codec.k} data shards at a time; use smaller pages`,
      );
    }
    this.codec = codec;
    this.pageSize = pageSize;
    this.capacity = Math.min(capacity, most);
    this.rows = codec.w;
    this.packet = pageSize / codec.w;
    this.data = Buffer.alloc(codec.k * this.capacity * pageSize);
    this.parity = Buffer.alloc(codec.m * this.capacity * pageSize);
  }

  /** Starts a batch of `count` stripes (contents are left as they were: overwrite every page). */
  reset(count: number): void {
    if (count < 1 || count > this.capacity)
      throw invalidArgument(`a batch holds 1 to ${this.capacity} stripes`);
    this.count = count;
  }

  /** Copies one page (shard 0..k+m-1 of stripe `stripe`) into the batch. */
  putPage(stripe: number, shard: number, src: Uint8Array, srcOffset = 0): void {
    const [buffer, base] = this.locate(shard);
    const rowBytes = this.count * this.packet;
    for (let b = 0; b < this.rows; b++) {
      const from = srcOffset + b * this.packet;
      buffer.set(src.subarray(from, from + this.packet), base + b * rowBytes + stripe * this.packet);
    }
  }

  /** Copies one page out of the batch. */
  getPage(stripe: number, shard: number, dst: Uint8Array, dstOffset = 0): void {
    const [buffer, base] = this.locate(shard);
    const rowBytes = this.count * this.packet;
    for (let b = 0; b < this.rows; b++) {
      const from = base + b * rowBytes + stripe * this.packet;
      buffer.copy(dst, dstOffset + b * this.packet, from, from + this.packet);
    }
  }

  /** Fills a page of the batch with zeros. */
  zeroPage(stripe: number, shard: number): void {
    const [buffer, base] = this.locate(shard);
    const rowBytes = this.count * this.packet;
    for (let b = 0; b < this.rows; b++) {
      const from = base + b * rowBytes + stripe * this.packet;
      buffer.fill(0, from, from + this.packet);
    }
  }

  /** Computes the parity pages of every stripe in the batch. */
  encode(): Promise<void> {
    return this.codec.encode(this.data, this.parity, this.count * this.pageSize);
  }

  /**
   * Rebuilds one lost data shard of every stripe on the event loop, without the coder: ronomon's
   * first parity shard (index k) is the XOR of the data shards (its first bitmatrix row is
   * "m0-optimized"; a test checks this), so the lost shard is the XOR of parity k and the other
   * data shards. A degraded 4 KiB read saves the thread-pool round trip (~160 µs measured on a
   * busy event loop). Returns false, doing nothing, when `present` is not exactly those shards.
   */
  rebuildByXor(present: number, missing: number): boolean {
    const k = this.codec.k;
    if (missing >= 1 << k || (missing & (missing - 1)) !== 0) return false;
    if (present !== ((((1 << k) - 1) & ~missing) | (1 << k))) return false;
    const shardBytes = this.count * this.pageSize;
    const words = shardBytes / 4;
    const data = new Int32Array(this.data.buffer, this.data.byteOffset, (k * shardBytes) / 4);
    const parity = new Int32Array(this.parity.buffer, this.parity.byteOffset, words);
    const lost = Math.log2(missing);
    const target = lost * words;
    data.set(parity.subarray(0, words), target);
    for (let i = 0; i < k; i++) {
      if (i === lost) continue;
      const from = i * words;
      for (let w = 0; w < words; w++) data[target + w]! ^= data[from + w]!;
    }
    return true;
  }

  /** Recomputes the shards in `missing` of every stripe from those in `present`. */
  reconstruct(present: number, missing: number): Promise<void> {
    return this.codec.reconstruct(this.data, this.parity, this.count * this.pageSize, present, missing);
  }

  private locate(shard: number): [Buffer, number] {
    const shardBytes = this.count * this.pageSize;
    return shard < this.codec.k
      ? [this.data, shard * shardBytes]
      : [this.parity, (shard - this.codec.k) * shardBytes];
  }
}
