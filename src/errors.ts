/**
 * Every error a user of memfabric can cause is a `MemfabricError` with a stable `code`.
 * Match on `code`, never on the message: messages say what to do and may be reworded.
 *
 * The table below is the single list of codes. `docs/errors.md` documents each one and a test
 * fails when the two drift apart.
 */
export const ErrorCodes = {
  /** An argument has the wrong type or an impossible value (negative length, bad page size). */
  INVALID_ARGUMENT: 'MF_INVALID_ARGUMENT',
  /** An address range reaches outside the address space or region. */
  OUT_OF_RANGE: 'MF_OUT_OF_RANGE',
  /** The frame pool has no free frame and may not grow: the call changed nothing. */
  POOL_EXHAUSTED: 'MF_POOL_EXHAUSTED',
  /** The address space (or pool, or merger) was destroyed and can no longer be used. */
  DESTROYED: 'MF_DESTROYED',
  /** A write to something that is read-only. */
  READ_ONLY: 'MF_READ_ONLY',
  /** A name is already taken (a region, an export). */
  ALREADY_EXISTS: 'MF_ALREADY_EXISTS',
  /** A named thing (region, export, appliance) does not exist. */
  NOT_FOUND: 'MF_NOT_FOUND',
  /** A size string or number could not be understood. */
  INVALID_SIZE: 'MF_INVALID_SIZE',
  /** A peer broke the NBD protocol (bad magic, impossible lengths, unexpected replies). */
  NBD_PROTOCOL: 'MF_NBD_PROTOCOL',
  /** The NBD server answered a request with an error (the `errno` property holds its code). */
  NBD_REQUEST_FAILED: 'MF_NBD_REQUEST_FAILED',
  /** The connection closed or failed; in-flight requests did not complete. */
  CONNECTION_CLOSED: 'MF_CONNECTION_CLOSED',
  /** A peer did not answer in time (an NBD request or handshake); the connection is closed. */
  TIMEOUT: 'MF_TIMEOUT',
  /** The thing is in use (a region with clients attached) and the call would pull it away. */
  BUSY: 'MF_BUSY',
  /** An HTTP request to the admin API was malformed (bad JSON, unknown fields, wrong types). */
  BAD_REQUEST: 'MF_BAD_REQUEST',
  /** Something failed inside memfabric; the server log has the details. */
  INTERNAL: 'MF_INTERNAL',
  /** The fabric cannot place a region: too few reachable appliances or too little free memory. */
  PLACEMENT_FAILED: 'MF_PLACEMENT_FAILED',
  /** More shards of a fabric region are lost than its redundancy covers: the bytes are gone. */
  DATA_LOST: 'MF_DATA_LOST',
  /** A file on disk is not what it should be (wrong magic, version, truncated). */
  CORRUPT_FILE: 'MF_CORRUPT_FILE',
  /** A region is migrating (or has moved) to another appliance; over NBD a refused request is ESHUTDOWN. */
  MIGRATING: 'MF_MIGRATING',
  /** A server could not listen where asked (the address is in use, not permitted, or not this machine's). */
  LISTEN_FAILED: 'MF_LISTEN_FAILED',
  /** A migration or standby peer broke the wire protocol (bad magic or version, a damaged or impossible frame). */
  MIGRATION_PROTOCOL: 'MF_MIGRATION_PROTOCOL',
  /**
   * Post-copy only: the source died (or was cut off) after the handover, before every page had
   * moved; the pages still on it are lost and the destination's space cannot be trusted.
   */
  POSTCOPY_SOURCE_LOST: 'MF_POSTCOPY_SOURCE_LOST',
  /** A sub-allocated region has no run of free chunks long enough (or an owner bound is hit). */
  CHUNKS_EXHAUSTED: 'MF_CHUNKS_EXHAUSTED',
  /** The call conflicts with current state: another owner's chunk, a different chunk size. */
  CONFLICT: 'MF_CONFLICT',
  /** A page store failed an I/O (read, write, short transfer); the message names the store and slot. */
  STORE_FAILED: 'MF_STORE_FAILED',
  /** The page store (or the pager that owns it) was closed and can no longer be used. */
  STORE_CLOSED: 'MF_STORE_CLOSED',
  /** The page store has no free slot: every slot holds a page. */
  STORE_FULL: 'MF_STORE_FULL',
  /** A path given in the options cannot be used: missing directory, a directory, not writable. */
  BAD_PATH: 'MF_BAD_PATH',
  /** The file system refused a file-backed region's files (too large for it, full, no permission). */
  FILE_REFUSED: 'MF_FILE_REFUSED',
  /** A region is still loading from its files at appliance start; retry shortly. */
  LOADING: 'MF_LOADING',
  /** A region could not be loaded at start (corrupt files, too little memory); it serves nothing. */
  REGION_FAILED: 'MF_REGION_FAILED',
  /** TLS could not be negotiated: STARTTLS refused or required, or the TLS handshake failed. */
  TLS: 'MF_TLS',
  /** An admin API request without a valid token (none, a wrong one, or none from afar). */
  UNAUTHORIZED: 'MF_UNAUTHORIZED',
  /** A valid token that may not do this: a tenant token on an appliance-wide route. */
  FORBIDDEN: 'MF_FORBIDDEN',
  /** A heap image already exists where `Heap.create` was asked to make one. */
  HEAP_EXISTS: 'MF_HEAP_EXISTS',
  /** A file is not a memfabric heap image, or one of a newer format version. */
  HEAP_FOREIGN: 'MF_HEAP_FOREIGN',
  /** A heap image fails its checks: a checksum, a truncated file, inconsistent allocator state. */
  HEAP_CORRUPT: 'MF_HEAP_CORRUPT',
  /** The heap was closed (or failed) and can no longer be used. */
  HEAP_CLOSED: 'MF_HEAP_CLOSED',
  /** free/realloc of an address the allocator did not hand out, or already freed. */
  HEAP_BAD_FREE: 'MF_HEAP_BAD_FREE',
  /** The heap's address space has no room for the allocation. */
  HEAP_FULL: 'MF_HEAP_FULL',
  /** A checkpoint could not be written (disk full, I/O error); the previous one still stands. */
  CHECKPOINT_FAILED: 'MF_CHECKPOINT_FAILED',
  /** A heap value does not match what the call expects (a struct of another schema, a bad type tag). */
  HEAP_TYPE: 'MF_HEAP_TYPE',
  /** A fabric region's descriptor copy is damaged or of an unknown format (that copy is skipped). */
  CORRUPT_DESCRIPTOR: 'MF_CORRUPT_DESCRIPTOR',
  /** A descriptor update or a shard is older than the region's current generation. */
  STALE_GENERATION: 'MF_STALE_GENERATION',
  /** The fleet's catalog (etcd) cannot be reached; metadata changes wait for it or fail with this. */
  CATALOG_UNAVAILABLE: 'MF_CATALOG_UNAVAILABLE',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class MemfabricError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'MemfabricError';
  }
}

export function invalidArgument(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.INVALID_ARGUMENT, message);
}

export function outOfRange(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.OUT_OF_RANGE, message);
}
