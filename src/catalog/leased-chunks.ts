/**
 * Sub-allocation in fleet mode: chunks of a region pre-allocated on an appliance, recorded in
 * etcd under the claiming client's lease, so a client that dies holding chunks has them freed
 * when its lease expires, and a live client's chunks are never given to another. The same API
 * as SubAllocator (src/fabric/suballocation.ts), whose chunk views (bounds checks, release
 * after the views' I/O settles) and NBD connection code are reused as they are.
 *
 *   const sub = new LeasedSubAllocator({ etcd: ['http://10.0.0.1:2379'], appliance: url,
 *                                        region: 'pool', owner: 'worker-7', chunkSize: '1MiB' });
 *   const chunk = await sub.claim({ size: '4MiB' });   // a run of chunks, read as zeros
 *   const view = await chunk.open();                    // NBD, bounded to the chunk
 *   await chunk.release();  await sub.close();          // close revokes the lease: all freed
 *
 * Records in etcd (layout in etcd.ts):
 *   /memfabric/v1/chunkpools/<tenant>/<region>          {chunkSize, size}: written once by the
 *                                                       first claimer (no lease); later clients
 *                                                       must agree (else MF_CONFLICT)
 *   /memfabric/v1/chunks/<tenant>/<region>/<index>      {owner, claim, start, count} for every
 *                                                       chunk of a claimed run, under the
 *                                                       claimer's lease
 *
 * Claim: read the region's chunk keys (one range read at one revision), pick the lowest run of
 * free indexes long enough (first fit), and in one transaction create every key of the run if
 * none exists (create revision 0), under this client's lease. A lost race (someone took one of
 * them) reads again, at most CLAIM_ROUNDS_MAX times. The run is then trimmed over NBD so it
 * reads as zeros and never shows a previous owner's bytes (as the appliance's own allocator
 * does). One transaction holds at most RUN_CHUNKS_MAX keys (etcd's default --max-txn-ops).
 *
 * Invariants: a chunk key exists <=> its chunk is held; it exists only under a live lease (or
 * a lease etcd has not yet expired), so a chunk is free exactly when its holder released it or
 * its holder's lease expired — never before. Fencing on the client side: a chunk's views refuse
 * I/O (MF_DESTROYED) once the lease may have expired on the server, that is TTL after the
 * last keep-alive the server answered was sent, before another client could claim the chunk.
 */
import { randomBytes } from 'node:crypto';
import type { IKeyValue, Lease } from 'etcd3';
import type { Endpoint } from '../appliance/appliance.js';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { NbdClientTls } from '../nbd/index.js';
import type { NbdClient } from '../nbd/index.js';
import { parseSize } from '../size.js';
import { SubAllocator, ViewedChunk, type Chunk, type ClaimRequest } from '../fabric/suballocation.js';
import { EtcdConnection, EtcdKeys, chunkIndexOf, type EtcdOptions } from './etcd.js';

/** Keys one claim may create: etcd's default --max-txn-ops. */
export const RUN_CHUNKS_MAX = 128;
/** Claim rounds (read, transaction) before giving up when others keep winning the race. */
const CLAIM_ROUNDS_MAX = 16;
export const CHUNK_LEASE_TTL_SECONDS_DEFAULT = 5;
/** Fraction of the TTL kept as a margin before the client stops its own I/O. */
const FENCE_MARGIN = 0.1;

export interface LeasedSubAllocatorOptions {
  /** The fleet's etcd client URLs. */
  etcd: string[];
  /** Retry and deadline settings of the etcd connection. */
  etcdOptions?: Omit<EtcdOptions, 'endpoints'>;
  /** The admin API of the appliance that holds the region. */
  appliance: string;
  /** The pre-allocated region to carve chunks from. */
  region: string;
  /** The region's tenant (names in etcd are per tenant). Default 'default'. */
  tenant?: string;
  /** Who holds the chunks (shown in listings). */
  owner: string;
  /** Chunk size: a multiple of 4096; every client of the region must use the same. Default 1 MiB. */
  chunkSize?: number | string;
  /** This client's lease TTL (seconds): how long chunks outlive a client that died. Default 5. */
  ttlSeconds?: number;
  nbd?: Partial<Endpoint>;
  tls?: NbdClientTls;
  token?: string;
  ca?: string | Buffer;
  timeoutMs?: number;
}

/** The value of every chunk key of one claimed run. */
interface RunRecord {
  owner: string;
  claim: string;
  start: number;
  count: number;
}

export class LeasedSubAllocator {
  readonly region: string;
  readonly tenant: string;
  readonly owner: string;
  readonly ttlSeconds: number;
  readonly connection: EtcdConnection;
  /** The NBD plumbing of the plain SubAllocator (stats lookup, one shared connection). */
  private readonly plumbing: SubAllocator;
  private readonly chunkBytes: number;
  private lease: Lease | undefined;
  private leaseId: string | undefined;
  private granting: Promise<string> | undefined;
  /** The region's size once its chunk size was agreed with etcd (not kept on failure). */
  private sizing: Promise<number> | undefined;
  /** Send times of keep-alives not answered yet, oldest first. */
  private readonly unanswered: number[] = [];
  /** Until when the server surely holds the lease (ms since the epoch); 0 before the grant. */
  private validUntil = 0;
  private leaseLost = false;
  private closing: Promise<void> | undefined;
  private readonly held = new Set<LeasedChunk>();

  constructor(options: LeasedSubAllocatorOptions) {
    this.plumbing = new SubAllocator({
      appliance: options.appliance,
      region: options.region,
      owner: options.owner,
      ...(options.nbd ? { nbd: options.nbd } : {}),
      ...(options.tls ? { tls: options.tls } : {}),
      ...(options.token !== undefined ? { token: options.token } : {}),
      ...(options.ca !== undefined ? { ca: options.ca } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    });
    this.region = options.region;
    this.tenant = options.tenant ?? 'default';
    this.owner = options.owner;
    this.chunkBytes = parseSize(options.chunkSize ?? 1024 * 1024, 'chunkSize');
    if (this.chunkBytes < 4096 || this.chunkBytes % 4096 !== 0) {
      throw invalidArgument(`chunkSize ${this.chunkBytes} must be a positive multiple of 4096`);
    }
    const ttl = options.ttlSeconds ?? CHUNK_LEASE_TTL_SECONDS_DEFAULT;
    if (!Number.isInteger(ttl) || ttl < 1) {
      throw invalidArgument(`ttlSeconds must be a whole number of seconds, 1 or more (got ${ttl})`);
    }
    this.ttlSeconds = ttl;
    this.connection = new EtcdConnection({ ...options.etcdOptions, endpoints: options.etcd });
  }

  /** This client's lease id in etcd (granted on the first claim). */
  get leaseIdentifier(): string | undefined {
    return this.leaseId;
  }

  /**
   * Claims a run of chunks (`count`, or enough for `size`; default one), trimmed to zeros.
   * MF_CHUNKS_EXHAUSTED when no free run is long enough, MF_CONFLICT when the region's chunk
   * size in etcd differs, MF_CATALOG_UNAVAILABLE when etcd does not answer.
   */
  async claim(request: ClaimRequest = {}): Promise<Chunk> {
    this.assertOpen();
    const count = this.countOf(request);
    if (!this.sizing) {
      const sizing = this.regionSize();
      sizing.catch(() => {
        if (this.sizing === sizing) this.sizing = undefined;
      });
      this.sizing = sizing;
    }
    const regionBytes = await this.sizing;
    const total = Math.floor(regionBytes / this.chunkBytes);
    const lease = await this.grant();
    const prefix = EtcdKeys.chunksOf(this.tenant, this.region);
    for (let round = 0; round < CLAIM_ROUNDS_MAX; round++) {
      const { kvs } = await this.connection.rangeAll(`read the chunks of ${this.describe()}`, prefix);
      const start = firstFit(kvs, total, count);
      if (start === undefined) {
        throw new MemfabricError(
          ErrorCodes.CHUNKS_EXHAUSTED,
          `no run of ${count} free chunks in ${this.describe()} (${total} chunks of ${this.chunkBytes} bytes, ` +
            `${kvs.length} held); release chunks, wait for a dead client's lease to expire, or claim fewer`,
        );
      }
      const record: RunRecord = { owner: this.owner, claim: randomBytes(8).toString('hex'), start, count };
      const value = Buffer.from(JSON.stringify(record));
      const keys = Array.from({ length: count }, (_, i) =>
        Buffer.from(EtcdKeys.chunk(this.tenant, this.region, start + i)),
      );
      const answer = await this.connection.run(
        `claim chunks of ${this.describe()}`,
        () =>
          this.connection.client.kv.txn({
            compare: keys.map((key) => ({
              key,
              target: 'Create' as const,
              result: 'Equal' as const,
              create_revision: 0,
            })),
            success: keys.map((key) => ({ request_put: { key, value, lease } })),
            failure: [{ request_range: { key: keys[0]! } }],
          }),
        'write',
      );
      const landed =
        answer.succeeded || answer.responses[0]?.response_range.kvs[0]?.value.equals(value) === true; // our retried write
      if (!landed) continue; // another client took one of these chunks first: read again
      const chunk = new LeasedChunk(this, record, value, this.chunkBytes);
      try {
        const nbd = await this.plumbing.connection();
        await nbd.trim(chunk.offset, chunk.length);
      } catch (error) {
        await this.deleteRun(value, keys).catch(() => undefined);
        throw error;
      }
      this.held.add(chunk);
      return chunk;
    }
    throw new MemfabricError(
      ErrorCodes.CHUNKS_EXHAUSTED,
      `other clients kept taking the free chunks of ${this.describe()} (${CLAIM_ROUNDS_MAX} tries); try again`,
    );
  }

  /**
   * The chunks `owner` holds in the region, as recorded in etcd. Chunks held under another
   * lease (an earlier process of the same owner, whose lease has not expired yet) can be
   * released but not opened: they go when that lease expires.
   */
  async list(): Promise<Chunk[]> {
    this.assertOpen();
    const { kvs } = await this.connection.rangeAll(
      `read the chunks of ${this.describe()}`,
      EtcdKeys.chunksOf(this.tenant, this.region),
    );
    const chunks = new Map<string, LeasedChunk>();
    for (const kv of kvs) {
      const record = parseRun(kv);
      if (!record || record.owner !== this.owner || chunks.has(record.claim)) continue;
      const mine = [...this.held].find((chunk) => chunk.claim === record.claim);
      chunks.set(record.claim, mine ?? new LeasedChunk(this, record, kv.value, this.chunkBytes));
    }
    return [...chunks.values()].sort((a, b) => a.offset - b.offset);
  }

  /**
   * Waits for the views of held chunks to settle, revokes the lease (every chunk this client
   * holds is free at once) and disconnects. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      // Releasing here only closes the views and waits for their I/O: the revoke below frees
      // every key of this lease at once (and etcd expires them if it cannot be reached).
      await Promise.allSettled([...this.held].map((chunk) => chunk.release()));
      const lease = this.lease;
      this.lease = undefined;
      if (lease) {
        await lease.revoke({ deadline: Date.now() + this.connection.callTimeoutMs }).catch(() => undefined);
      }
      await this.plumbing.close();
      this.connection.close();
    })();
    return this.closing;
  }

  // ---- for LeasedChunk ----------------------------------------------------------------------

  /** @internal */
  nbd(): Promise<NbdClient> {
    return this.plumbing.connection();
  }

  /** @internal True once close() has begun. */
  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** @internal True while the server surely still holds this client's lease. */
  leaseValid(): boolean {
    return !this.leaseLost && Date.now() < this.validUntil;
  }

  /** @internal Deletes the keys of a run, each only if it still holds `value`. */
  async deleteRun(value: Buffer, keys: Buffer[]): Promise<void> {
    await this.connection.run(
      `release chunks of ${this.describe()}`,
      () =>
        this.connection.client.kv.txn({
          compare: keys.map((key) => ({ key, target: 'Value' as const, result: 'Equal' as const, value })),
          success: keys.map((key) => ({ request_delete_range: { key } })),
          failure: [],
        }),
      'write',
    );
  }

  /** @internal */
  forget(chunk: LeasedChunk): void {
    this.held.delete(chunk);
  }

  /** @internal */
  describe(): string {
    return `region ${this.tenant}/${this.region}`;
  }

  // ---- internals ----------------------------------------------------------------------------

  private countOf(request: ClaimRequest): number {
    if (request.count !== undefined && request.size !== undefined) {
      throw invalidArgument('claim: give count or size, not both');
    }
    const count =
      request.count ??
      (request.size !== undefined ? Math.ceil(parseSize(request.size, 'size') / this.chunkBytes) : 1);
    if (!Number.isSafeInteger(count) || count < 1)
      throw invalidArgument(`claim: count ${count} must be 1 or more`);
    if (count > RUN_CHUNKS_MAX) {
      throw invalidArgument(
        `claim: ${count} chunks in one run; at most ${RUN_CHUNKS_MAX} fit in one etcd transaction — use a larger chunkSize`,
      );
    }
    return count;
  }

  /** The region's size (from NBD), after checking the chunk size recorded in etcd agrees. */
  private async regionSize(): Promise<number> {
    const size = (await this.plumbing.connection()).size;
    if (size < this.chunkBytes) {
      throw invalidArgument(`chunkSize ${this.chunkBytes} is larger than ${this.describe()} (${size} bytes)`);
    }
    const key = Buffer.from(EtcdKeys.chunkPool(this.tenant, this.region));
    const value = Buffer.from(JSON.stringify({ chunkSize: this.chunkBytes, size }));
    const answer = await this.connection.run(
      `record the chunk size of ${this.describe()}`,
      () =>
        this.connection.client.kv.txn({
          compare: [{ key, target: 'Create', result: 'Equal', create_revision: 0 }],
          success: [{ request_put: { key, value } }],
          failure: [{ request_range: { key } }],
        }),
      'write',
    );
    if (!answer.succeeded) {
      const stored = answer.responses[0]?.response_range.kvs[0]?.value.toString() ?? '{}';
      const { chunkSize } = JSON.parse(stored) as { chunkSize?: number };
      if (chunkSize !== this.chunkBytes) {
        throw new MemfabricError(
          ErrorCodes.CONFLICT,
          `${this.describe()} is carved into chunks of ${chunkSize} bytes, not ${this.chunkBytes}; use chunkSize ${chunkSize}`,
        );
      }
    }
    return size;
  }

  /** This client's lease, granted once and kept alive; its loss fences every held chunk. */
  private grant(): Promise<string> {
    this.granting ??= (async () => {
      const lease = this.connection.client.lease(this.ttlSeconds, {});
      lease.on('keepaliveFired', () => this.unanswered.push(Date.now()));
      lease.on('keepaliveSucceeded', () => {
        const sentAt = this.unanswered.shift();
        if (sentAt !== undefined) this.extend(sentAt);
      });
      lease.on('keepaliveFailed', () => {
        this.unanswered.length = 0;
      });
      lease.on('lost', () => {
        this.leaseLost = true;
      });
      this.lease = lease;
      const sentAt = Date.now();
      try {
        this.leaseId = await this.connection.run('grant the chunk lease', () => lease.grant());
      } catch (error) {
        this.granting = undefined;
        this.lease = undefined;
        lease.release();
        throw error;
      }
      this.extend(sentAt);
      return this.leaseId;
    })();
    return this.granting;
  }

  private extend(sentAt: number): void {
    this.validUntil = Math.max(this.validUntil, sentAt + this.ttlSeconds * 1000 * (1 - FENCE_MARGIN));
  }

  private assertOpen(): void {
    if (this.closing) {
      throw new MemfabricError(ErrorCodes.DESTROYED, `the LeasedSubAllocator of ${this.owner} is closed`);
    }
    if (this.leaseLost) {
      throw new MemfabricError(
        ErrorCodes.DESTROYED,
        `the etcd lease of ${this.owner} expired (etcd unreachable for longer than ${this.ttlSeconds} s), so its ` +
          'chunks may belong to others now; make a new LeasedSubAllocator',
      );
    }
  }
}

class LeasedChunk extends ViewedChunk {
  readonly claim: string;
  private readonly allocator: LeasedSubAllocator;
  private readonly value: Buffer;
  private readonly keys: Buffer[];

  constructor(allocator: LeasedSubAllocator, record: RunRecord, value: Buffer, chunkBytes: number) {
    super({
      region: allocator.region,
      owner: record.owner,
      offset: record.start * chunkBytes,
      length: record.count * chunkBytes,
      chunkSize: chunkBytes,
    });
    this.allocator = allocator;
    this.claim = record.claim;
    this.value = value;
    this.keys = Array.from({ length: record.count }, (_, i) =>
      Buffer.from(EtcdKeys.chunk(allocator.tenant, allocator.region, record.start + i)),
    );
  }

  /** Released, or fenced: the lease may have expired, so the chunk may be someone else's. */
  override get released(): boolean {
    return super.released || !this.allocator.leaseValid();
  }

  protected connection(): Promise<NbdClient> {
    return this.allocator.nbd();
  }

  protected async free(): Promise<void> {
    if (!this.allocator.closed) await this.allocator.deleteRun(this.value, this.keys);
    this.allocator.forget(this);
  }
}

/** @internal The lowest index of `count` free chunks in [0, total), or undefined. */
export function firstFit(kvs: IKeyValue[], total: number, count: number): number | undefined {
  const held = kvs.map((kv) => chunkIndexOf(kv.key.toString())).filter((i) => i >= 0 && i < total);
  held.sort((a, b) => a - b);
  let start = 0;
  for (const index of held) {
    if (index - start >= count) return start;
    start = Math.max(start, index + 1);
  }
  return total - start >= count ? start : undefined;
}

function parseRun(kv: IKeyValue): RunRecord | undefined {
  try {
    const record = JSON.parse(kv.value.toString()) as Partial<RunRecord>;
    if (
      typeof record.owner === 'string' &&
      typeof record.claim === 'string' &&
      Number.isSafeInteger(record.start) &&
      Number.isSafeInteger(record.count)
    ) {
      return record as RunRecord;
    }
  } catch {
    // not a run record
  }
  return undefined;
}
