/**
 * What the NBD server needs from whatever holds the bytes (an appliance region, a test
 * buffer). The server validates every request (range, alignment, flags, read-only) before it
 * calls these, so an implementation may assume `offset + length <= size` and a writable
 * export for mutating calls. Data calls are synchronous: resident memory never waits.
 * Implementations throw `MemfabricError`; the server maps codes to NBD errnos in one place
 * (POOL_EXHAUSTED -> ENOSPC, READ_ONLY -> EPERM, OUT_OF_RANGE -> EINVAL, others -> EIO).
 */
export interface NbdExport {
  /** Export size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description: string;
  /** Preferred block size (the page size); also the minimum block size the server advertises is 1. */
  readonly blockSize: number;

  /** Copies `dst.length` bytes starting at `offset` into `dst`. */
  read(offset: number, dst: Uint8Array): void;
  /**
   * Optional, like read: copies `length` bytes starting at `offset` into `dst` at `dstOffset`.
   * The server builds small READ replies in place in a larger buffer; with this it needs no
   * view of that buffer per request (a heap allocation per read, and scavenges to match).
   */
  readInto?(offset: number, length: number, dst: Uint8Array, dstOffset: number): void;
  /** Writes `src` at `offset`. */
  write(offset: number, src: Uint8Array): void;
  /**
   * Optional, for a WRITE whose payload the server puts in place piece by piece as it arrives
   * (see write-pieces.ts): called once with the whole range before any of it, so the write can
   * be refused while nothing is written (memory that cannot hold it, a moved region). Its
   * pieces then go to writePiece, in order; without these two they go to write().
   */
  beginWrite?(offset: number, length: number): void;
  /** Writes `src` at `offset`: a piece of the write beginWrite announced. */
  writePiece?(offset: number, src: Uint8Array): void;
  /** Discards a range: later reads return zeros and block status reports a hole. */
  trim(offset: number, length: number): void;
  /**
   * Makes a range read as zeros. With `mayPunchHole` the implementation may deallocate
   * (NBD_CMD_WRITE_ZEROES without NBD_CMD_FLAG_NO_HOLE).
   */
  writeZeroes(offset: number, length: number, mayPunchHole: boolean): void;
  /** Makes every completed write durable (a no-op for pure memory). */
  flush(): Promise<void>;
  /**
   * Describes `[offset, offset + length)` as consecutive extents, calling `emit` in order
   * with each extent's length and its `base:allocation` flags (1 = hole, 2 = reads as zero).
   * May stop early (the server asks for at least one extent); must not emit past the range.
   * Returns the number of extents emitted.
   */
  blockStatus(offset: number, length: number, emit: (length: number, flags: number) => void): number;
}

/**
 * The set of exports a server offers; looked up on every NBD_OPT_GO / EXPORT_NAME.
 *
 * `identity` is who the connection authenticated as over TLS (a PSK identity or a client
 * certificate's CN), or undefined for a connection the server does not restrict (plain, anonymous
 * TLS, or an admin identity). A directory that scopes exports by identity returns undefined from
 * `get` and omits from `list` whatever that identity may not see: the client then cannot tell it
 * from an export that does not exist.
 */
export interface NbdExportDirectory {
  /** The export called `name` ('' is the default export) that `identity` may open, or undefined. */
  get(name: string, identity?: string): NbdExport | undefined;
  /** Names and descriptions for NBD_OPT_LIST, as `identity` may see them. */
  list(identity?: string): Array<{ name: string; description: string }>;
  /**
   * Why an export that exists (and that `identity` may see) does not serve now (e.g. still
   * loading), for the refusal's message; undefined when `name` is simply unknown. Optional.
   */
  whyUnavailable?(name: string, identity?: string): string | undefined;
  /**
   * Called when a connection starts using an export (+1) and when it is done with it (-1: its
   * NBD_CMD_DISC answered, or its socket closed), exactly once each; `exp` is the export it was
   * given (the name may meanwhile stand for another export). Optional.
   */
  onAttach?(name: string, delta: 1 | -1, exp?: NbdExport): void;
}
