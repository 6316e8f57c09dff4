/**
 * Bounds and defaults of the NBD server: how much it reads, queues and waits for before it
 * refuses, pauses or closes. The wire numbers and the spec's own bounds are in
 * ../protocol/constants.ts; everything here is this server's policy. Units go last in names, as
 * everywhere in memfabric.
 */
import { PAYLOAD_BYTES_MAX } from '../protocol/constants.js';

const KiB = 1024;
const MiB = 1024 * KiB;

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
/** After a hard disconnect or server close, queued replies get this long to drain. */
export const CLOSE_GRACE_MS = 2_000;
