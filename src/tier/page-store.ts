/**
 * Page store: where pages go when they leave the resident set. A store is an array of
 * page-sized slots addressed by number; the pager decides which slot holds what (it owns
 * the slot allocator and the clone-chain dedup tables), the store only keeps bytes.
 *
 * Contract, checked for every implementation by test/tier/store-conformance.test.ts:
 *   - read(slot, dst) fills dst (exactly pageSize bytes) with the bytes last written to the
 *     slot, or zeros if the slot was never written or was discarded since.
 *   - write(slot, src) stores exactly pageSize bytes; when the promise resolves the bytes
 *     are in the store (a later read returns them), durable only after flush().
 *   - discard(slot) forgets a slot's bytes (later reads return zeros) and gives back the
 *     space where the store can.
 *   - flush() is a barrier: everything that completed before it is durable when it resolves.
 *   - close() releases the store's resources; further calls reject with STORE_CLOSED.
 *   - A slot outside [0, capacity) rejects with OUT_OF_RANGE; a buffer of the wrong length
 *     with INVALID_ARGUMENT; an I/O failure (including a short read or write that cannot be
 *     completed) with STORE_FAILED, naming the store, the slot and the cause.
 * Operations on different slots may run concurrently; the caller (the destager) never runs
 * two operations on the same slot at once.
 */
export interface PageStore {
  /** A short human name for messages and statistics ("memory", "file /var/tmp/x.swap", …). */
  readonly name: string;
  readonly pageSize: number;
  /** Number of slots the store can hold. */
  readonly capacity: number;
  read(slot: number, dst: Uint8Array): Promise<void>;
  write(slot: number, src: Uint8Array): Promise<void>;
  discard(slot: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: how a thread other than the store's own may read slots straight from the file
   * (see direct-read.ts). Only a store whose bytes are one plain local file, and whose written
   * slots are known to that thread, can offer it; the rest leave it out.
   */
  directSource?(): DirectReadSource | undefined;
}

/**
 * What the pager's main thread needs to read a local file store's slots itself: the file (a
 * path it may open read-only, and the file's identity, checked after opening), where slot 0
 * starts, and the store's bitmap of written slots (one bit per slot, set once a write is in the
 * file and cleared by a discard; a clear bit reads as zeros, as the store itself answers).
 */
export interface DirectReadSource {
  path: string;
  dev: number;
  ino: number;
  /** Byte offset of slot 0. */
  firstByte: number;
  written: SharedArrayBuffer;
}

/**
 * How to build a store, as plain data: the store runs inside the pager's I/O worker, so the
 * pager hands the worker a spec rather than an object.
 */
export type StoreSpec =
  | { kind: 'memory' }
  | {
      kind: 'file';
      /**
       * The swap file. Created if missing; an existing file must be a memfabric swap file. It
       * stays after close (cut back to its header). Give path or directory, not both.
       */
      path?: string;
      /**
       * A directory for a temporary swap file, unlinked as soon as it is open, so it never
       * outlives the process. The pager's default is the OS temp directory.
       */
      directory?: string;
    }
  | {
      kind: 'fabric';
      /** Admin URLs of the appliances. */
      appliances: string[];
      /** Token sent to the appliances' admin APIs (an admin token, or a token of `tenant`). */
      token?: string;
      /** CA certificates (PEM text) trusted for https appliance URLs. */
      ca?: string;
      /** 'none', { copies } or { data, parity } (see docs/fabric.md). */
      redundancy?: 'none' | { copies: number } | { data: number; parity: number };
      tenant?: string;
      /** Name prefix of the region the store allocates. */
      name?: string;
      requestTimeoutMs?: number;
    }
  | {
      /**
       * A heap image (src/heap/): slot s at byte s·pageSize of an existing file, whose contents
       * are kept (see image-store.ts). The heap opens its images with this; it is not a swap store.
       */
      kind: 'image';
      path: string;
      /** A fork's base image: slots [2, slots) are read from it. */
      base?: { path: string; slots: number };
      readOnly?: boolean;
      /** Test double (crash tests only): lose power at a chosen flush, see power-loss-layer.ts. */
      powerLoss?: { crashAtSync: number; seed: number };
      /** Test double: writes after the first this many fail with EIO. */
      failWritesAfter?: number;
    }
  | {
      kind: 'nbd';
      /**
       * The export holding the slots: `nbd://host[:port]/export`, or `nbds://…` for TLS (the NBD
       * URI spec's TCP forms; port 10809 when omitted). Slot s lives at byte offset + s ·
       * pageSize. The store keeps the export's contents: it wipes nothing at open or close.
       */
      url: string;
      /** Credentials for an nbds:// URL (required with nbds://, refused with nbd://). */
      tls?: NbdStoreTls;
      /** Connections to open when the server allows multi-conn (else 1). Default 1, at most 16. */
      connections?: number;
      /** A request unanswered this long fails the store (STORE_FAILED). Default 30 s. */
      requestTimeoutMs?: number;
      /** TCP connect plus the NBD handshake. Default 10 s. */
      connectTimeoutMs?: number;
      /** Byte offset of slot 0 in the export (a multiple of the server's minimum block size). Default 0. */
      offset?: number;
    }
  | {
      /**
       * A post-copy destination's store (src/migrate/postcopy-destination.ts builds it): the
       * source's data pages are fetched from its page server on demand and pushed by it in the
       * background, and kept in `local` once they arrive (see migration-source-store.ts).
       */
      kind: 'migration-source';
      /** The source's page server. */
      host: string;
      port: number;
      /** The migration's id: the page server serves only a store that presents it. */
      migrationId: string;
      /** Where moved and evicted pages live. Default a temporary swap file in the OS temp directory. */
      local?: { kind: 'memory' } | { kind: 'file'; path?: string; directory?: string };
      /** A fault the source leaves unanswered this long fails with POSTCOPY_SOURCE_LOST. Default 10 s. */
      faultTimeoutMs?: number;
      /** Connecting and attaching to the page server. Default 10 s. */
      connectTimeoutMs?: number;
      /** Slots after a faulted one fetched with it (the next data pages), 0 to 256. Default 8. */
      readAhead?: number;
      /** Progress cells the store updates (postcopy-protocol.ts); shared with the main thread. */
      progress?: SharedArrayBuffer;
    }
  | {
      /** Test double: a memory store that can delay and fail operations (test/tier only). */
      kind: 'test';
      readDelayMs?: number;
      writeDelayMs?: number;
      discardDelayMs?: number;
      /** Fail every write to these slots with STORE_FAILED. */
      failWriteSlots?: number[];
      /** Fail every operation after the first this many with STORE_FAILED (cause: an EIO). */
      failAfterOps?: number;
    };

/**
 * TLS credentials of an 'nbd' store, as plain data (specs cross a worker boundary): the
 * NBD client's options (src/nbd/client/tls.ts) with PEM text and paths rather than Buffers.
 */
export interface NbdStoreTls {
  /** PEM certificate(s) of the CA that signed the server's certificate. */
  ca?: string;
  /** A directory holding ca-cert.pem, and client-cert.pem + client-key.pem when present. */
  certificates?: string;
  /** A client certificate and its key (PEM), for servers that verify clients. */
  cert?: string;
  key?: string;
  /** TLS-PSK: the identity (on a memfabric appliance, the tenant) and its key (hex) or key file. */
  psk?: { identity: string; key?: string | Uint8Array; file?: string };
  /** The name the server certificate must carry; default the URL's tls-hostname, else its host. */
  servername?: string;
}

/**
 * Where slot `slot` lies in the file or export a spec names, for messages that send the user to
 * the bytes ("byte 8192 of …"): each store's own layout, kept here beside the specs so the
 * pager, which holds only the spec, reports the real position. undefined for stores whose slots
 * have no single byte position (memory, fabric regions, post-copy, the test double).
 *   file   (s + 1) · pageSize: the header page comes first (file-store.ts)
 *   image  s · pageSize, in the base image for a fork's base slots [2, base.slots) (image-store.ts)
 *   nbd    offset + s · pageSize of the export (nbd-store.ts)
 */
export function slotPosition(
  spec: StoreSpec,
  slot: number,
  pageSize: number,
): { byte: number; base?: string } | undefined {
  switch (spec.kind) {
    case 'file':
      return { byte: (slot + 1) * pageSize };
    case 'image':
      return spec.base !== undefined && slot >= 2 && slot < spec.base.slots
        ? { byte: slot * pageSize, base: spec.base.path }
        : { byte: slot * pageSize };
    case 'nbd':
      return { byte: (spec.offset ?? 0) + slot * pageSize };
    default:
      return undefined;
  }
}
