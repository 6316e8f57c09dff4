/**
 * Numbers of the NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`, fixed newstyle, no
 * extended headers) and the bounds this implementation enforces on every length a peer sends.
 *
 * Wire numbers keep the spec's names minus the `NBD_` prefix so that a reader can grep the spec.
 * Bounds are named `*_MAX` with their unit before it, as everywhere in memfabric.
 */

// ---------------------------------------------------------------------------------------------
// Magics. 64-bit magics are split in two 32-bit halves: we compare them without BigInt.

/** 'NBDMAGIC', the first 8 bytes the server sends. */
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
/** 'IHAVEOPT': sent by the server after NBDMAGIC, and before every option by the client. */
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
/** Magic of every option reply (0x0003e889045565a9). */
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;
/** Transmission-phase magics. */
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---------------------------------------------------------------------------------------------
// Handshake flags (16 bits, server) and client flags (32 bits).

export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;
/** The only client flags we accept; any other bit means the client speaks something else. */
export const CLIENT_FLAGS_KNOWN = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---------------------------------------------------------------------------------------------
// Transmission flags (16 bits, per export).

export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_ROTATIONAL = 1 << 4;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_SEND_DF = 1 << 7;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_RESIZE = 1 << 9;
export const FLAG_SEND_CACHE = 1 << 10;
export const FLAG_SEND_FAST_ZERO = 1 << 11;

// ---------------------------------------------------------------------------------------------
// Options (client -> server during the handshake).

export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_PEEK_EXPORT = 4;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;
export const OPT_EXTENDED_HEADERS = 11;

// Option reply types. Errors have bit 31 set; `>>> 0` keeps them unsigned.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
const REP_ERR = 0x80000000;
export const REP_ERR_UNSUP = (REP_ERR | 1) >>> 0;
export const REP_ERR_POLICY = (REP_ERR | 2) >>> 0;
export const REP_ERR_INVALID = (REP_ERR | 3) >>> 0;
export const REP_ERR_PLATFORM = (REP_ERR | 4) >>> 0;
export const REP_ERR_TLS_REQD = (REP_ERR | 5) >>> 0;
export const REP_ERR_UNKNOWN = (REP_ERR | 6) >>> 0;
export const REP_ERR_SHUTDOWN = (REP_ERR | 7) >>> 0;
export const REP_ERR_BLOCK_SIZE_REQD = (REP_ERR | 8) >>> 0;
export const REP_ERR_TOO_BIG = (REP_ERR | 9) >>> 0;

// NBD_REP_INFO information types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// ---------------------------------------------------------------------------------------------
// Commands and command flags.

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;
/** Commands are counted in stats by number; everything at or above this is 'unknown'. */
export const CMD_COUNT = 8;
export const COMMAND_NAMES = [
  'read',
  'write',
  'disc',
  'flush',
  'trim',
  'cache',
  'writeZeroes',
  'blockStatus',
] as const;

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

/**
 * Flags each command accepts. FUA is accepted on every command: the spec says a server that
 * advertised SEND_FUA "MUST accept all commands with this bit set (even by ignoring the bit)",
 * and real clients set it on reads. DF is further restricted to structured replies.
 */
export const CMD_FLAGS_ALLOWED: readonly number[] = [
  /* READ */ CMD_FLAG_FUA | CMD_FLAG_DF,
  /* WRITE */ CMD_FLAG_FUA,
  /* DISC */ CMD_FLAG_FUA,
  /* FLUSH */ CMD_FLAG_FUA,
  /* TRIM */ CMD_FLAG_FUA,
  /* CACHE */ CMD_FLAG_FUA,
  /* WRITE_ZEROES */ CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
  /* BLOCK_STATUS */ CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
];

// Structured reply chunk flags and types.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) | 1;
export const REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2;

// base:allocation extent flags.
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

/** The one metadata context we serve, and the id we give it (any value works; ids are opaque). */
export const META_CONTEXT_BASE_ALLOCATION = 'base:allocation';
export const META_CONTEXT_ID_BASE_ALLOCATION = 1;

// ---------------------------------------------------------------------------------------------
// Errno values allowed on the wire (the spec restricts replies to this set).

export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

// ---------------------------------------------------------------------------------------------
// Frame sizes (bytes).

/** NBDMAGIC + IHAVEOPT + 16-bit handshake flags. */
export const SERVER_GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
/** IHAVEOPT + option + data length. */
export const OPTION_HEADER_BYTES = 16;
/** magic + option + reply type + length. */
export const OPTION_REPLY_HEADER_BYTES = 20;
/** size (8) + transmission flags (2), the reply to NBD_OPT_EXPORT_NAME. */
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_REPLY_ZEROES_BYTES = 124;
/** magic + flags + type + cookie + offset + length. */
export const REQUEST_HEADER_BYTES = 28;
/** magic + error + cookie. */
export const SIMPLE_REPLY_HEADER_BYTES = 16;
/** magic + flags + type + cookie + length. */
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** One base:allocation descriptor: length + flags. */
export const EXTENT_DESCRIPTOR_BYTES = 8;

// ---------------------------------------------------------------------------------------------
// Bounds. Every length a peer controls is checked against one of these before it is used.

const KiB = 1024;
const MiB = 1024 * KiB;

/** Longest string (export name, query, description) the spec allows. */
export const NAME_BYTES_MAX = 4096;
/**
 * Largest READ or WRITE payload. Advertised as the maximum payload in NBD_INFO_BLOCK_SIZE; the
 * spec says payloads up to 2^25 SHOULD NOT be treated as a denial of service.
 */
export const PAYLOAD_BYTES_MAX = 32 * MiB;
/**
 * A WRITE above PAYLOAD_BYTES_MAX but below this is skipped (its payload read and dropped) and
 * answered EINVAL, so the client gets a clear error; above it the length is taken as absurd
 * and the connection is dropped rather than reading gigabytes of garbage.
 */
export const WRITE_SKIP_BYTES_MAX = 2 * PAYLOAD_BYTES_MAX;
/** Largest option data we parse; larger options are answered NBD_REP_ERR_TOO_BIG. */
export const OPTION_DATA_BYTES_MAX = 64 * KiB;
/** Larger than this, option data is absurd: the connection is dropped instead of skipping it. */
export const OPTION_SKIP_BYTES_MAX = 1 * MiB;
/**
 * Options one connection may send before it enters transmission (NBD_OPT_GO / EXPORT_NAME).
 * `nbdinfo --list` (libnbd 1.14) sends STRUCTURED_REPLY, LIST, then INFO and
 * LIST_META_CONTEXT for every export, then ABORT: 2n + 3 options for n exports. Four per
 * export at the appliance's limit of 4096 regions leaves room for clients that ask more.
 */
export const HANDSHAKE_OPTIONS_MAX = 4 * 4096;
/**
 * NBD_OPT_LIST options one connection may send; later ones are answered NBD_REP_ERR_POLICY.
 * One LIST answers with every export (up to ~600 KiB at 4096 regions), so a client repeating
 * it would make the server write far more than it reads.
 */
export const LIST_OPTIONS_MAX = 16;
/** Meta context queries one LIST/SET_META_CONTEXT may carry. */
export const META_QUERIES_MAX = 128;
/**
 * Time a handshaking client may leave between options (and before the first): idleness, not
 * total time, so a client listing thousands of exports one INFO at a time is never cut off.
 */
export const HANDSHAKE_IDLE_MS_MAX = 30_000;
/**
 * Time a request's bytes may stand still: a WRITE payload that stops arriving, or replies the
 * client stops reading while they hold buffers. Progress, not total time, is measured, so a
 * slow but moving transfer is never cut off.
 */
export const STALL_MS_MAX = 30_000;
/**
 * The stall timeout while requests wait for the global buffer budget (when the stall timeout
 * is longer): bytes held by a client that neither reads nor sends are then keeping others
 * waiting, so it gets this long instead. A client that keeps moving is never affected.
 */
export const PRESSURE_STALL_MS = 2_000;
/**
 * A request that has waited this long for the global buffer budget is granted before any
 * younger one (oldest first), whatever the connections hold: the bound on how long requests of
 * connections that hold little may overtake it (budget.ts). Several pressure stall periods, so
 * connections sitting on bytes are closed, and their bytes re-granted, well before it matters.
 */
export const BUDGET_AGED_MS = 10_000;
/**
 * Time a connection in transmission may stay idle (nothing in flight, nothing arriving); 0 turns
 * it off, the default: the Linux kernel's nbd device sends nothing while the block device is
 * unused and fails all later I/O once its connection is closed (nbd-client reconnects only
 * with -persist), so any finite default would break a mounted but quiet disk. Dead peers are
 * found by TCP keepalive (TCP_KEEPALIVE_MS) instead, and live idle ones count against the
 * connection limit.
 */
export const IDLE_MS_DEFAULT = 0;
/** TCP keepalive idle time on every NBD socket: a vanished peer is noticed and its slot freed. */
export const TCP_KEEPALIVE_MS = 60_000;
/**
 * Global buffer budget: reply bytes queued on all sockets plus WRITE payload bytes being
 * assembled, across every connection. When it is spent, connections stop reading new data
 * requests until bytes are freed (the least-holding connection first, see budget.ts).
 */
export const BUFFER_BYTES_MAX = 128 * MiB;
/**
 * File descriptors kept back from NBD connections when the connection limit is derived from
 * the process's open-file limit: the admin API, region files, the data directory, logs.
 */
export const FD_RESERVE = 256;
/** The connection limit never defaults above this (each connection costs up to ~1.3 MiB). */
export const CONNECTIONS_DEFAULT_MAX = 1024;
/** Open-file limit assumed when /proc/self/limits cannot be read (a conservative ulimit -n). */
export const OPEN_FILES_FALLBACK = 1024;
/** Interval of the timeout check is a quarter of the shortest timeout, within these bounds. */
export const TIMEOUT_TICK_MS_MIN = 10;
export const TIMEOUT_TICK_MS_MAX = 1_000;
/** Descriptors in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (the spec's SHOULD NOT exceed 2^20). */
export const BLOCK_STATUS_EXTENTS_MAX = 1 << 20;
/**
 * Reply bytes queued on one socket before we stop parsing that connection's requests (or
 * handshake options) until the socket drains: a client that pipelines reads but never reads
 * replies cannot make us buffer more than this plus one reply. Per connection; the global
 * BUFFER_BYTES_MAX bounds the sum.
 */
export const REPLY_QUEUED_BYTES_MAX = 16 * MiB;
/**
 * The least a caller may set REPLY_QUEUED_BYTES_MAX to: above a socket's default high-water
 * mark (16 KiB), so that a connection paused for it always sees 'drain' again.
 */
export const REPLY_QUEUED_BYTES_MIN = 64 * KiB;
/**
 * READs longer than this are answered in pieces of this size, each produced only when the
 * socket holds less than one piece (and admitted by the global budget on its own): a client
 * that asks for 32 MiB and does not read it makes the server hold about two pieces, not 32 MiB.
 * With structured replies each piece is its own OFFSET_DATA chunk. A piece includes its header,
 * so it is exactly a power of two (the size class of the recycled buffers).
 */
export const READ_PIECE_BYTES = 2 * MiB;
/** Requests of one connection awaiting an asynchronous flush (FLUSH, FUA) before we stop parsing. */
export const ASYNC_REQUESTS_MAX = 64;
/** Scratch buffer kept between split WRITE payloads; larger ones are dropped after use. */
export const PAYLOAD_SCRATCH_KEEP_BYTES_MAX = 1 * MiB;
/** After a hard disconnect or server close, queued replies get this long to drain. */
export const CLOSE_GRACE_MS = 2_000;
