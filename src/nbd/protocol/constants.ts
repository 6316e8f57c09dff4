/**
 * Numbers of the NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`, fixed newstyle, no
 * extended headers) and the spec's own bounds on lengths, shared by the server and the client.
 * What each side enforces beyond them is its own policy: server/limits.ts, client/limits.ts.
 *
 * Wire numbers keep the spec's names minus the `NBD_` prefix so that a reader can grep the spec.
 * Bounds are named `*_MAX` with their unit before it, as everywhere in memfabric.
 */

/** The IANA port of NBD, the default of a server address and of an NBD URI. */
export const NBD_PORT = 10809;

// ---------------------------------------------------------------------------------------------
// Magics. 64-bit magics are split in two 32-bit halves: we compare them without BigInt.

/** 'NBDMAGIC', the first 8 bytes the server sends. */
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
/** 'IHAVEOPT': sent by the server after NBDMAGIC, and before every option by the client. */
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
/**
 * An oldstyle server's cliserv_magic where IHAVEOPT would be (unsupported, but recognised so
 * the client can say so): 0x00420281861253 as 64 bits, that is 0x00004202 then 0x81861253.
 */
export const OLDSTYLE_MAGIC_HI = 0x00004202;
export const OLDSTYLE_MAGIC_LO = 0x81861253;
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
// Bounds the spec sets. Every length a peer controls is checked against one of these, or a
// tighter bound of the side reading it, before it is used.

const KiB = 1024;
const MiB = 1024 * KiB;

/** Longest string (export name, query, description) the spec allows. */
export const NAME_BYTES_MAX = 4096;
/**
 * Largest READ or WRITE payload. Advertised as the maximum payload in NBD_INFO_BLOCK_SIZE; the
 * spec says payloads up to 2^25 SHOULD NOT be treated as a denial of service.
 */
export const PAYLOAD_BYTES_MAX = 32 * MiB;
/** Descriptors in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (the spec's SHOULD NOT exceed 2^20). */
export const BLOCK_STATUS_EXTENTS_MAX = 1 << 20;
