/**
 * Reed–Solomon k+m coding over stripes of pages, with @ronomon/reed-solomon (a native addon
 * whose encode codes in libuv's thread pool). Chosen after measuring on this machine: 4+2 with
 * 4 KiB shards one call at a time codes 0.56 GB/s of data (each call costs ~25 µs of
 * thread-pool dispatch), with 64 KiB shards 6.2 GB/s, and with 256 KiB shards and four calls in
 * flight 16 GB/s — 10–20× the WASM ports. So the fabric codes many stripes per call.
 *
 * Writes do not use that encode. On a loaded machine a write waited milliseconds for a pool
 * thread to be scheduled, for ~0.1 ms of coding. ronomon's coding is a fixed program of packet
 * copies and XORs (its bitmatrix, kept in each context), so encodeSync and encodeStripes run
 * that program on the calling thread with ronomon's synchronous XOR: the same parity, byte for
 * byte. encodeStripes codes whole stripes where the caller's bytes already lie, into runs ready
 * to send. Reconstruction (degraded reads, rebuild) and scrub still use the thread pool.
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
import { randomFillSync } from 'node:crypto';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

// A native addon (its package "main" is binding.node), which ESM cannot import: require it.
const ReedSolomon = createRequire(import.meta.url)('@ronomon/reed-solomon') as typeof ReedSolomonModule;

/** ronomon keeps (1 + k·w) packets within this many bytes of cache (see the overview). */
export const CODER_CACHE_BYTES = 1024 * 1024;

/**
 * The synchronous coders read ronomon's context layout, which its API does not promise: each
 * geometry is checked once per process against ronomon's own encode (checkSyncCoder) before a
 * coded write uses them. Keyed by "k+m".
 */
const syncCoderChecks = new Map<string, Promise<void>>();
/** Stripes one StripeBatch may hold (bounds its buffers: (k + m) · this many pages). */
export const STRIPES_PER_BATCH_MAX = 1024;

export class ReedSolomonCodec {
  readonly k: number;
  readonly m: number;
  /** ronomon's Galois field exponent: it splits each shard into w packets. */
  readonly w: number;
  private readonly context: ReedSolomonModule.Context;
  private readonly dataMask: number;
  private readonly parityMask: number;
  /**
   * The synchronous coders' program, from ronomon's encoding bitmatrix: for parity shard i and
   * packet row a, the data packets (b · w + c: packet c of data shard b) XORed into it:
   * rows[i · w + a]. (A row with none would leave ronomon's target as it was and ours zero; the
   * test that compares the coders over every geometry would see it.)
   */
  private readonly rows: Int32Array[];
  /** Per parity shard: whether each row a lists exactly packet a of every data shard. */
  private readonly pagewise: boolean[];

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
    // After w, k and m, the context holds m · w rows of k · w bits, one byte each.
    const bits = (this.context as unknown as Uint8Array).subarray(3);
    const w = this.w;
    this.rows = [];
    for (let row = 0; row < m * w; row++) {
      const sources: number[] = [];
      for (let j = 0; j < k * w; j++) if (bits[row * k * w + j]) sources.push(j);
      this.rows.push(Int32Array.from(sources));
    }
    this.pagewise = [];
    for (let j = 0; j < m; j++) {
      let plain = true;
      for (let a = 0; a < w; a++) {
        const sources = this.rows[j * w + a]!;
        plain &&= sources.length === k && sources.every((source, b) => source === b * w + a);
      }
      this.pagewise.push(plain);
    }
  }

  /**
   * The most stripes of `pageSize` pages one coding call may hold and still code each stripe
   * exactly as it would be coded alone (0: even one stripe is too large for this k).
   */
  maxStripesPerCall(pageSize: number): number {
    return Math.floor(CODER_CACHE_BYTES / ((1 + this.w * this.k) * (pageSize / this.w)));
  }

  /**
   * Resolves once encodeSync and encodeStripes are seen to code exactly as ronomon's encode for
   * this geometry (once per process; a few pages of random data). The synchronous coders replay
   * the program ronomon keeps in its context, a layout its API does not promise; package.json
   * pins the version it was read from. If another version codes differently, this rejects with
   * MF_INTERNAL and coded writes fail, rather than store parity that would rebuild wrong bytes.
   */
  checkSyncCoder(): Promise<void> {
    const key = `${this.k}+${this.m}`;
    let check = syncCoderChecks.get(key);
    if (check === undefined) {
      check = this.compareCoders();
      syncCoderChecks.set(key, check);
    }
    return check;
  }

  private async compareCoders(): Promise<void> {
    const { k, m } = this;
    // Two blocks of w packets per shard, so the program's every row and block step runs.
    const shardBytes = 2 * this.w * 64;
    const data = randomFillSync(Buffer.alloc(k * shardBytes));
    const expected = Buffer.alloc(m * shardBytes);
    await this.encode(data, expected, shardBytes);
    const batch = Buffer.alloc(m * shardBytes);
    this.encodeSync(data, batch, shardBytes);
    // One stripe of shardBytes-long pages is laid out as a batch of one: the same parity.
    const stripes = Buffer.alloc(m * shardBytes);
    this.encodeStripes(data, 0, 1, shardBytes, stripes, shardBytes);
    if (!batch.equals(expected) || !stripes.equals(expected)) {
      throw new MemfabricError(
        ErrorCodes.INTERNAL,
        `the installed @ronomon/reed-solomon codes ${k}+${m} differently from the version memfabric ` +
          `reads (6.0.0), so coded writes are refused rather than stored with wrong parity; ` +
          `install @ronomon/reed-solomon@6.0.0`,
      );
    }
  }

  /** Computes every parity shard from the data shards. */
  encode(data: Buffer, parity: Buffer, shardBytes: number): Promise<void> {
    return this.run(this.dataMask, this.parityMask, data, parity, shardBytes);
  }

  /**
   * encode() on this thread, now: the same parity, byte for byte (a test checks every geometry
   * against encode), without the thread-pool round trip. ronomon's coding is a fixed sequence of
   * copies and XORs of whole packets (its `dot`, over the bitmatrix rows kept in `rows`), so
   * this zeroes the parity and XORs that sequence in with ronomon's own synchronous XOR, one
   * native call per packet row: for a 64-stripe 4+2 batch, 70 calls over 32 KiB rows.
   */
  encodeSync(data: Buffer, parity: Buffer, shardBytes: number): void {
    const { k, m, w } = this;
    if (
      shardBytes % 8 !== 0 ||
      shardBytes % w !== 0 ||
      data.length < k * shardBytes ||
      parity.length < m * shardBytes
    ) {
      throw invalidArgument(`shard size ${shardBytes} must be a multiple of 8 and fit the buffers`);
    }
    parity.fill(0, 0, m * shardBytes);
    this.xorParity(data, 0, shardBytes, parity, 0, shardBytes);
  }

  /**
   * Codes `stripes` whole stripes of `pageSize` pages where a region's bytes hold them: stripe s
   * is the k pages at src[srcOffset + s·k·pageSize ..], one after another. Parity shard k+j of
   * stripe s goes to parity[j·runBytes + s·pageSize ..]: each parity shard's pages as one run,
   * ready to send. Synchronous, and the parity of each stripe coded alone (a test checks it), so
   * a write of whole stripes needs no coding batch: no gather into the coder's layout, no copy
   * of parity out of it. One native XOR per page (a parity whose rows XOR the same packet of
   * every data page: ronomon's first) or per packet (the others): for 4+2 with 4 KiB pages,
   * 24 calls per stripe, ~1,500 per MiB, no allocation. Unaligned bytes code correctly but
   * slowly (ronomon XORs them byte by byte unless src and parity agree mod 8): the write path
   * codes such bytes in a batch instead.
   */
  encodeStripes(
    src: Uint8Array,
    srcOffset: number,
    stripes: number,
    pageSize: number,
    parity: Uint8Array,
    runBytes: number,
  ): void {
    const { k, m, w } = this;
    if (
      !(pageSize > 0 && pageSize % 8 === 0 && pageSize % w === 0) ||
      !(srcOffset >= 0 && srcOffset + stripes * k * pageSize <= src.length) ||
      !(runBytes >= stripes * pageSize && (m - 1) * runBytes + stripes * pageSize <= parity.length)
    ) {
      throw invalidArgument(`${stripes} stripes of ${pageSize}-byte pages do not fit the buffers`);
    }
    for (let j = 0; j < m; j++) parity.fill(0, j * runBytes, j * runBytes + stripes * pageSize);
    const stripeBytes = k * pageSize;
    for (let s = 0; s < stripes; s++) {
      this.xorParity(src, srcOffset + s * stripeBytes, pageSize, parity, s * pageSize, runBytes);
    }
  }

  /**
   * XORs the parity of one coding unit into zeroed targets: data shard b at src[at + b·shardBytes],
   * parity shard j at parity[into + j·stride], each shardBytes long. ronomon's `dot`: per block
   * of w packets, target packet a of parity j is the XOR of the data packets row (j, a) lists.
   */
  private xorParity(
    src: Uint8Array,
    at: number,
    shardBytes: number,
    parity: Uint8Array,
    into: number,
    stride: number,
  ): void {
    const { k, m, w } = this;
    const xor = ReedSolomon.XOR;
    if (k === 1) {
      // ronomon's replication case: every parity shard is the one data shard.
      for (let j = 0; j < m; j++) xor(src, at, parity, into + j * stride, shardBytes);
      return;
    }
    const packet = dotPacketBytes(w, k, shardBytes);
    for (let j = 0; j < m; j++) {
      const target = into + j * stride;
      if (this.pagewise[j]) {
        // Every row a XORs packet a of each data shard: the parity is the data shards' XOR.
        for (let b = 0; b < k; b++) xor(src, at + b * shardBytes, parity, target, shardBytes);
        continue;
      }
      for (let block = 0; block < shardBytes; block += w * packet) {
        for (let a = 0; a < w; a++) {
          const sources = this.rows[j * w + a]!;
          const to = target + block + a * packet;
          for (let n = 0; n < sources.length; n++) {
            const source = sources[n]!;
            const b = Math.floor(source / w);
            xor(src, at + b * shardBytes + block + (source - b * w) * packet, parity, to, packet);
          }
        }
      }
    }
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

/**
 * The packet ronomon codes a shard of `shardBytes` in (its dot_chunk_size): shardBytes / w,
 * halved while (1 + k·w) packets exceed CODER_CACHE_BYTES (and it stays even and above 64).
 */
function dotPacketBytes(w: number, k: number, shardBytes: number): number {
  let packet = shardBytes / w;
  while (packet > 64 && packet % 2 === 0 && (1 + k * w) * packet > CODER_CACHE_BYTES) packet /= 2;
  return packet;
}

export function popcount(mask: number): number {
  let count = 0;
  for (let bits = mask; bits !== 0; bits &= bits - 1) count++;
  return count;
}

/**
 * Up to `capacity` stripes of k data and m parity pages, laid out for one coding call.
 * Stripe numbers are 0..count-1 within the batch. Buffers are reused across batches.
 *
 * Groups. One call codes at most maxStripesPerCall (M) stripes interleaved as one group (see
 * the overview). A larger batch is split into 2^h groups of G <= M stripes each, padded to
 * G · 2^h stripes (a padding stripe's pages are never read back: stripes code independently).
 * Group u of every shard is w rows of G packets, and ronomon, halving its packet from
 * G · 2^h · packet while (1 + k·w) × packet > CODER_CACHE_BYTES, stops at exactly G packets —
 * since G <= M and 2G > M — so it codes each group, and so each stripe, as if alone. That lets
 * one call (and one NBD write per shard) cover a 1 MiB write of 4+2 (64 stripes) where M is 60.
 */
export class StripeBatch {
  readonly codec: ReedSolomonCodec;
  readonly pageSize: number;
  readonly capacity: number;
  /** Stripes in the current batch (set by reset). */
  count = 0;
  private readonly data: Buffer;
  private readonly parity: Buffer;
  /** One page of scratch, handed out by scratchPage. */
  private readonly scratch: Buffer;
  /** Packets per page (ronomon's w). */
  private readonly rows: number;
  private readonly packet: number;
  /** Stripes one group may hold (maxStripesPerCall). */
  private readonly groupMax: number;
  /** Current batch: stripes per group, and stripes coded (count rounded up to whole groups). */
  private groupStripes = 0;
  private coded = 0;
  /** Current batch: bytes from one packet row of a group to the next (groupStripes packets). */
  private rowBytes = 0;

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
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > STRIPES_PER_BATCH_MAX) {
      throw invalidArgument(`a batch holds 1 to ${STRIPES_PER_BATCH_MAX} stripes (got ${capacity})`);
    }
    this.codec = codec;
    this.pageSize = pageSize;
    this.capacity = capacity;
    this.groupMax = most;
    this.rows = codec.w;
    this.packet = pageSize / codec.w;
    let padded = 0;
    for (let count = 1; count <= capacity; count++) padded = Math.max(padded, this.paddedCount(count));
    this.data = Buffer.alloc(codec.k * padded * pageSize);
    this.parity = Buffer.alloc(codec.m * padded * pageSize);
    this.scratch = Buffer.alloc(pageSize);
  }

  /** Starts a batch of `count` stripes (contents are left as they were: overwrite every page). */
  reset(count: number): void {
    if (!Number.isInteger(count) || count < 1 || count > this.capacity)
      throw invalidArgument(`a batch holds 1 to ${this.capacity} stripes`);
    this.count = count;
    this.coded = this.paddedCount(count);
    this.groupStripes = this.coded / this.groupsOf(count);
    this.rowBytes = this.groupStripes * this.packet;
  }

  /** Copies one page (shard 0..k+m-1 of stripe `stripe`) into the batch. */
  putPage(stripe: number, shard: number, src: Uint8Array, srcOffset = 0): void {
    const buffer = shard < this.codec.k ? this.data : this.parity;
    const at = this.locate(stripe, shard);
    const rowBytes = this.rowBytes;
    const packet = this.packet;
    for (let b = 0; b < this.rows; b++) {
      const from = srcOffset + b * packet;
      buffer.set(src.subarray(from, from + packet), at + b * rowBytes);
    }
  }

  /** Copies bytes [pageOffset, pageOffset + length) of one page of the batch from `src`. */
  putRange(
    stripe: number,
    shard: number,
    pageOffset: number,
    src: Uint8Array,
    srcOffset: number,
    length: number,
  ): void {
    const buffer = shard < this.codec.k ? this.data : this.parity;
    const at = this.locate(stripe, shard);
    const rowBytes = this.rowBytes;
    const packet = this.packet;
    const end = pageOffset + length;
    // Each packet the range touches takes one copy: the rows are bounded by the page.
    for (let b = Math.floor(pageOffset / packet); b < this.rows && b * packet < end; b++) {
      const lo = Math.max(pageOffset, b * packet);
      const hi = Math.min(end, (b + 1) * packet);
      buffer.set(
        src.subarray(srcOffset + lo - pageOffset, srcOffset + hi - pageOffset),
        at + b * rowBytes + lo - b * packet,
      );
    }
  }

  /** Copies one page out of the batch. */
  getPage(stripe: number, shard: number, dst: Uint8Array, dstOffset = 0): void {
    this.getRange(stripe, shard, 0, dst, dstOffset, this.pageSize);
  }

  /** Copies bytes [pageOffset, pageOffset + length) of one page of the batch into `dst`. */
  getRange(
    stripe: number,
    shard: number,
    pageOffset: number,
    dst: Uint8Array,
    dstOffset: number,
    length: number,
  ): void {
    const buffer = shard < this.codec.k ? this.data : this.parity;
    const at = this.locate(stripe, shard);
    const rowBytes = this.rowBytes;
    const packet = this.packet;
    const end = pageOffset + length;
    for (let b = Math.floor(pageOffset / packet); b < this.rows && b * packet < end; b++) {
      const lo = Math.max(pageOffset, b * packet);
      const hi = Math.min(end, (b + 1) * packet);
      const from = at + b * rowBytes + lo - b * packet;
      buffer.copy(dst, dstOffset + lo - pageOffset, from, from + hi - lo);
    }
  }

  /**
   * The batch's data buffer as plain scratch (at least k · capacity pages), for a holder that
   * does not code with it: a degraded read rebuilding by XOR reads its runs here. The batch's
   * data pages are undefined after it is written.
   */
  spareBytes(): Buffer {
    return this.data;
  }

  /** A page-sized buffer the batch reuses, contents undefined: valid until the next call. */
  scratchPage(): Buffer {
    return this.scratch;
  }

  /** Computes the parity pages of every stripe in the batch. */
  encode(): Promise<void> {
    return this.codec.encode(this.data, this.parity, this.coded * this.pageSize);
  }

  /** encode() on this thread (see ReedSolomonCodec.encodeSync). */
  encodeSync(): void {
    this.codec.encodeSync(this.data, this.parity, this.coded * this.pageSize);
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
    const shardBytes = this.coded * this.pageSize;
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
    return this.codec.reconstruct(this.data, this.parity, this.coded * this.pageSize, present, missing);
  }

  /** Groups a batch of `count` stripes is coded in: the fewest (a power of two) of at most groupMax. */
  private groupsOf(count: number): number {
    let groups = 1;
    while (Math.ceil(count / groups) > this.groupMax) groups *= 2;
    return groups;
  }

  private paddedCount(count: number): number {
    const groups = this.groupsOf(count);
    return Math.ceil(count / groups) * groups;
  }

  /**
   * Where packet 0 of (stripe, shard) is in its buffer (data below k, parity from k); packet b
   * is b · rowBytes further. A page outside the batch is refused rather than written over a
   * neighbour: a wrong stripe or shard number must fail loudly, not corrupt another page.
   */
  private locate(stripe: number, shard: number): number {
    const k = this.codec.k;
    if (!(stripe >= 0 && stripe < this.count && shard >= 0 && shard < k + this.codec.m)) {
      throw invalidArgument(`page (stripe ${stripe}, shard ${shard}) is outside the batch of ${this.count}`);
    }
    const group = Math.floor(stripe / this.groupStripes);
    const column =
      group * this.groupStripes * this.pageSize + (stripe - group * this.groupStripes) * this.packet;
    return (shard < k ? shard : shard - k) * this.coded * this.pageSize + column;
  }
}

/**
 * What a coded write sends that is not the caller's own bytes: each parity shard's pages as one
 * run, and the write's first and last data pages where they were merged with loaded bytes. A
 * write of whole stripes codes its parity straight into the runs (codeWhole); any other write
 * codes in a StripeBatch and copies the parity out (parityRun), so that the coding buffers go
 * back to their pool as soon as these copies are made. A SendRuns stays with its writes until
 * every shard has answered.
 * Layout: parity shard k+j's run at pages j · capacity .., then the two single pages.
 */
export class SendRuns {
  readonly m: number;
  readonly pageSize: number;
  readonly capacity: number;
  private readonly buffer: Buffer;

  constructor(m: number, pageSize: number, capacity: number) {
    this.m = m;
    this.pageSize = pageSize;
    this.capacity = capacity;
    this.buffer = Buffer.alloc((m * capacity + 2) * pageSize);
  }

  /**
   * Codes `stripes` whole stripes from `src` at `srcOffset` (laid out as in the region) into the
   * parity runs (ReedSolomonCodec.encodeStripes); run(j, stripes) then holds parity shard k+j.
   */
  codeWhole(codec: ReedSolomonCodec, src: Uint8Array, srcOffset: number, stripes: number): void {
    if (!(codec.m === this.m && stripes >= 1 && stripes <= this.capacity)) {
      throw invalidArgument(`${stripes} stripes of ${codec.k}+${codec.m} do not fit these runs`);
    }
    const runBytes = this.capacity * this.pageSize;
    codec.encodeStripes(src, srcOffset, stripes, this.pageSize, this.buffer, runBytes);
  }

  /** Parity shard k+j of the last codeWhole's `stripes` stripes: valid until this SendRuns is reused. */
  run(j: number, stripes: number): Buffer {
    if (!(j >= 0 && j < this.m && stripes >= 1 && stripes <= this.capacity)) {
      throw invalidArgument(`parity run ${j} of ${stripes} stripes is outside these runs`);
    }
    const at = j * this.capacity * this.pageSize;
    return this.buffer.subarray(at, at + stripes * this.pageSize);
  }

  /**
   * Parity shard `shard` (k..k+m-1) of the batch's stripes 0..count-1 copied out as one run of
   * pages: valid until this SendRuns is reused.
   */
  parityRun(batch: StripeBatch, shard: number): Buffer {
    const j = shard - batch.codec.k;
    if (!(j >= 0 && j < this.m && batch.count <= this.capacity && batch.pageSize === this.pageSize)) {
      throw invalidArgument(`parity shard ${shard} of a batch of ${batch.count} does not fit these runs`);
    }
    const run = this.buffer.subarray(j * this.capacity * this.pageSize);
    for (let s = 0; s < batch.count; s++) batch.getPage(s, shard, run, s * this.pageSize);
    return run.subarray(0, batch.count * this.pageSize);
  }

  /** One page of the batch copied out (`slot` 0 or 1: a write's first and last page). */
  pageCopy(slot: 0 | 1, batch: StripeBatch, stripe: number, shard: number): Buffer {
    const at = (this.m * this.capacity + slot) * this.pageSize;
    const page = this.buffer.subarray(at, at + this.pageSize);
    batch.getPage(stripe, shard, page);
    return page;
  }
}
