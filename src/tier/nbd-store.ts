/**
 * A page store on one NBD export given by URL (`nbd://host:port/export`, `nbds://` for TLS): a
 * plain region on a memory appliance, or any NBD server (qemu-nbd, nbdkit). Slot s lives at
 * byte offset + s · pageSize of the export.
 *
 * Unlike the swap stores, this one keeps what the export holds: nothing is wiped at open or
 * close, so an image written, flushed and closed is there for the next open of the same URL
 * (the persistent heap reopens its images this way). It follows that a never-written slot
 * reads as whatever the export holds there: zeros on a fresh appliance region (and on any new
 * export a server creates zeroed), old bytes on an export used before. The contract's "a
 * never-written slot reads zeros" holds for a fresh export; the conformance suite gives every
 * store a fresh region.
 *
 * Mapping onto NBD:
 *   read     NBD_CMD_READ straight into the caller's page (no copy in between).
 *   write    NBD_CMD_WRITE of the page.
 *   discard  NBD_CMD_WRITE_ZEROES without NO_HOLE when the export supports it (the server may
 *            free the space: an appliance drops the pages, qemu-nbd and nbdkit punch holes);
 *            otherwise a write of a page of zeros. Never NBD_CMD_TRIM: the spec lets a trimmed
 *            range read back as anything, and the contract needs zeros.
 *   flush    NBD_CMD_FLUSH, after every write and discard issued before it was answered (the
 *            client's flush is a barrier). An export that does not advertise FLUSH declares that
 *            it has no volatile write cache: an answered write is already as durable as that
 *            server makes anything, so flush then only waits for the writes in flight. The
 *            durability of the image is the server's: an appliance's memory region lives as
 *            long as the appliance process; a file-backed one is on disk after a flush.
 *   close    a soft disconnect (requests in flight finish first).
 *
 * Open checks the export: reachable (else the client's typed error, MF_CONNECTION_CLOSED,
 * MF_TIMEOUT or MF_TLS, and MF_NOT_FOUND for an unknown export, the URL in the message),
 * writable (MF_READ_ONLY), large enough for `capacity` slots from `offset` (MF_INVALID_ARGUMENT
 * naming the export's size and the size needed), and aligned to the server's minimum block
 * size. After open, every failure (an error reply, a timeout, a lost connection) is
 * STORE_FAILED naming the store and the slot with the NBD error as cause. Nothing is retried or
 * reconnected: the pager fails a store for good at its first failure anyway, and a write whose
 * reply was lost may or may not have landed.
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import {
  GROUP_CONNECTIONS_MAX,
  NbdConnectionGroup,
  parseNbdUri,
  type NbdClientTls,
  type NbdUri,
} from '../nbd/index.js';
import type { PageStore, StoreSpec } from './page-store.js';
import { STORE_SLOTS_MAX, StoreGuard, checkStoreGeometry, storeFailed } from './store-guard.js';

export type NbdStoreSpec = Extract<StoreSpec, { kind: 'nbd' }>;

/** Connections when the spec names none: one connection already keeps many requests in flight. */
export const NBD_STORE_CONNECTIONS_DEFAULT = 1;

/** What an open connection says about the export (see inspectNbdStore). */
export interface NbdStoreExport {
  /** The export's size in bytes. */
  readonly exportBytes: number;
  /** Slots of `pageSize` that fit after the spec's offset: floor((exportBytes - offset) / pageSize). */
  readonly capacity: number;
  /** Whether the server advertises NBD_CMD_FLUSH (without it, flush only waits; see the overview). */
  readonly flushes: boolean;
}

interface Resolved {
  readonly uri: NbdUri;
  readonly offset: number;
  readonly name: string;
  readonly connect: Parameters<typeof NbdConnectionGroup.connect>[0];
}

function positive(value: unknown, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw invalidArgument(
      `nbd page store ${what} ${String(value)} must be a positive number of milliseconds`,
    );
  }
  return value;
}

/** Checks a spec (plain data from anywhere) and turns it into client options; throws INVALID_ARGUMENT. */
export function resolveNbdStoreSpec(spec: NbdStoreSpec): Resolved {
  const uri = parseNbdUri(spec.url);
  const tls = spec.tls;
  if (uri.tls && tls === undefined) {
    throw invalidArgument(
      `nbd page store ${uri.display} is nbds:// (TLS required): give tls { ca }, { certificates } or ` +
        "{ psk: { identity, key } }, for example { kind: 'nbd', url, tls: { psk: { identity: 'tenant-a', key: 'hex…' } } }",
    );
  }
  if (!uri.tls && tls !== undefined) {
    throw invalidArgument(
      `nbd page store ${uri.display}: tls was given for a plain nbd:// URL; write nbds://… to use TLS`,
    );
  }
  if (tls !== undefined && (typeof tls !== 'object' || tls === null)) {
    throw invalidArgument('nbd page store tls must be an object ({ ca }, { certificates } or { psk })');
  }
  if (uri.tlsType === 'psk' && tls?.psk === undefined) {
    throw invalidArgument(
      `nbd page store ${uri.display} asks for tls-type=psk: give tls.psk { identity, key }`,
    );
  }
  if (uri.tlsType === 'x509' && tls?.psk !== undefined) {
    throw invalidArgument(`nbd page store ${uri.display} asks for tls-type=x509 but tls.psk was given`);
  }
  const connections = spec.connections ?? NBD_STORE_CONNECTIONS_DEFAULT;
  if (!Number.isInteger(connections) || connections < 1 || connections > GROUP_CONNECTIONS_MAX) {
    throw invalidArgument(
      `nbd page store connections ${String(connections)} must be a whole number from 1 to ${GROUP_CONNECTIONS_MAX}`,
    );
  }
  const offset = spec.offset ?? 0;
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
    throw invalidArgument(
      `nbd page store offset ${String(offset)} must be a whole number of bytes, 0 or more`,
    );
  }
  const requestTimeoutMs = positive(spec.requestTimeoutMs, 'requestTimeoutMs');
  const connectTimeoutMs = positive(spec.connectTimeoutMs, 'connectTimeoutMs');
  const servername = tls?.servername ?? uri.tlsHostname;
  const clientTls: NbdClientTls | undefined =
    tls === undefined ? undefined : { ...tls, ...(servername === undefined ? {} : { servername }) };
  return {
    uri,
    offset,
    name: offset === 0 ? uri.display : `${uri.display} from byte ${offset}`,
    connect: {
      host: uri.host,
      port: uri.port,
      exportName: uri.exportName,
      connections,
      // Pages only: no block status, so no metadata contexts to negotiate.
      metaContexts: [],
      ...(clientTls === undefined ? {} : { tls: clientTls }),
      ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }),
      ...(connectTimeoutMs === undefined ? {} : { connectTimeoutMs }),
    },
  };
}

/** Connects and checks the export is writable and aligned for pageSize; the group is closed on failure. */
async function connectChecked(resolved: Resolved, pageSize: number): Promise<NbdConnectionGroup> {
  const { name, offset } = resolved;
  let group: NbdConnectionGroup;
  try {
    group = await NbdConnectionGroup.connect(resolved.connect);
  } catch (error) {
    if (error instanceof MemfabricError) {
      // The client's own code (unreachable, unknown export, TLS refused, timeout), and the URL.
      throw new MemfabricError(error.code, `page store ${name}: cannot open the export: ${error.message}`, {
        cause: error,
      });
    }
    throw storeFailed(name, 'connecting', error);
  }
  const refuse = (error: MemfabricError): never => {
    group.destroy();
    throw error;
  };
  if (group.transmissionFlags.readOnly) {
    refuse(
      new MemfabricError(
        ErrorCodes.READ_ONLY,
        `page store ${name}: the export is read-only; a page store writes, so give a writable export`,
      ),
    );
  }
  const minimum = group.blockSizes?.minimum ?? 1;
  if (offset % minimum !== 0 || pageSize % minimum !== 0) {
    refuse(
      invalidArgument(
        `page store ${name}: the server's minimum block size is ${minimum} bytes, so offset ${offset} ` +
          `and the page size ${pageSize} must be multiples of it`,
      ),
    );
  }
  return group;
}

function slotsIn(exportBytes: number, offset: number, pageSize: number): number {
  return Math.min(STORE_SLOTS_MAX, Math.max(0, Math.floor((exportBytes - offset) / pageSize)));
}

export class NbdPageStore implements PageStore {
  readonly name: string;
  readonly pageSize: number;
  readonly capacity: number;
  /** The export's size in bytes, as the server announced it at open. */
  readonly exportBytes: number;
  /** Byte offset of slot 0 in the export. */
  readonly offset: number;
  private readonly group: NbdConnectionGroup;
  private readonly guard: StoreGuard;
  private readonly zeroWrites: boolean;
  private readonly flushes: boolean;
  /** A discard's page when the export cannot WRITE_ZEROES; never written to, so shared by all. */
  private readonly zeroPage: Uint8Array;

  private constructor(group: NbdConnectionGroup, resolved: Resolved, pageSize: number, capacity: number) {
    this.group = group;
    this.name = resolved.name;
    this.offset = resolved.offset;
    this.pageSize = pageSize;
    this.capacity = capacity;
    this.exportBytes = group.size;
    const flags = group.transmissionFlags;
    this.zeroWrites = flags.canWriteZeroes;
    this.flushes = flags.canFlush;
    this.zeroPage = new Uint8Array(this.zeroWrites ? 0 : pageSize);
    this.guard = new StoreGuard(this.name, pageSize, capacity);
  }

  /** Connections open to the export (the spec's count when the server allows multi-conn, else 1). */
  get connections(): number {
    return this.group.clients.length;
  }

  /** Connects to the export and checks it can hold `capacity` slots; see the overview. */
  static async open(
    spec: NbdStoreSpec,
    options: { pageSize: number; capacity: number },
  ): Promise<NbdPageStore> {
    checkStoreGeometry(options.pageSize, options.capacity);
    const { pageSize, capacity } = options;
    const resolved = resolveNbdStoreSpec(spec);
    const group = await connectChecked(resolved, pageSize);
    const needed = resolved.offset + capacity * pageSize;
    if (needed > group.size) {
      group.destroy();
      const fits = slotsIn(group.size, resolved.offset, pageSize);
      throw invalidArgument(
        `page store ${resolved.name}: the export holds ${group.size} bytes, and ${capacity} slots of ` +
          `${pageSize} bytes${resolved.offset === 0 ? '' : ` from byte ${resolved.offset}`} need ${needed}; ` +
          (fits > 0
            ? `give the pager a storeSize of at most ${fits * pageSize} bytes (${fits} slots), or use a larger export`
            : 'use a larger export'),
      );
    }
    return new NbdPageStore(group, resolved, pageSize, capacity);
  }

  async read(slot: number, dst: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, dst);
    try {
      await this.group.readInto(this.offset + slot * this.pageSize, dst);
    } catch (error) {
      throw storeFailed(this.name, 'read', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    this.guard.enterPage(slot, src);
    try {
      await this.group.write(this.offset + slot * this.pageSize, src);
    } catch (error) {
      throw storeFailed(this.name, 'write', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async discard(slot: number): Promise<void> {
    this.guard.enter(slot);
    const position = this.offset + slot * this.pageSize;
    try {
      await (this.zeroWrites
        ? this.group.writeZeroes(position, this.pageSize)
        : this.group.write(position, this.zeroPage));
    } catch (error) {
      throw storeFailed(this.name, 'discard', error, slot);
    } finally {
      this.guard.leave();
    }
  }

  async flush(): Promise<void> {
    this.guard.enterAll();
    try {
      if (this.flushes) await this.group.flush();
      else await Promise.all(this.group.clients.map((client) => client.barrier()));
    } catch (error) {
      throw storeFailed(this.name, 'flush', error);
    } finally {
      this.guard.leave();
    }
  }

  /** Disconnects (after the operations in flight); the export's contents stay. */
  close(): Promise<void> {
    return this.guard.close(() => this.group.disconnect());
  }
}

/**
 * Size and capabilities of the export a spec names, without opening a store: how many slots of
 * `pageSize` fit (to size the pager's store from the export). Errors as NbdPageStore.open.
 */
export async function inspectNbdStore(spec: NbdStoreSpec, pageSize: number): Promise<NbdStoreExport> {
  checkStoreGeometry(pageSize, 1);
  const resolved = resolveNbdStoreSpec(spec);
  const group = await connectChecked(resolved, pageSize);
  try {
    return {
      exportBytes: group.size,
      capacity: slotsIn(group.size, resolved.offset, pageSize),
      flushes: group.transmissionFlags.canFlush,
    };
  } finally {
    await group.disconnect();
  }
}

/**
 * Reads `count` slots from `first` of an 'nbd' store into one buffer (slot first + i at
 * i · pageSize), opening and closing the store around it: what the heap reads before its pager
 * exists (its superblocks). Only 'nbd' specs: other stores do not keep their contents.
 */
export async function readSlots(
  spec: StoreSpec,
  pageSize: number,
  first: number,
  count: number,
): Promise<Uint8Array> {
  if (typeof spec !== 'object' || spec === null || spec.kind !== 'nbd') {
    throw invalidArgument(
      "readSlots reads 'nbd' stores only (the other stores do not keep their contents across opens)",
    );
  }
  if (!Number.isSafeInteger(first) || first < 0 || !Number.isSafeInteger(count) || count < 1) {
    throw invalidArgument(
      `readSlots needs a first slot (0 or more) and a count (1 or more), not ${String(first)} and ${String(count)}`,
    );
  }
  const store = await NbdPageStore.open(spec, { pageSize, capacity: first + count });
  try {
    const out = new Uint8Array(count * pageSize);
    await Promise.all(
      Array.from({ length: count }, (_, i) =>
        store.read(first + i, out.subarray(i * pageSize, (i + 1) * pageSize)),
      ),
    );
    return out;
  } finally {
    await store.close();
  }
}
