/**
 * Defaults and bounds of the NBD client. Wire numbers are shared with the server
 * (../protocol/constants.ts); everything here limits what the client accepts from a server or
 * queues for its caller. Units go last in names, as everywhere in memfabric.
 */
import { NBD_PORT, PAYLOAD_BYTES_MAX, REQUEST_HEADER_BYTES } from '../protocol/constants.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export const CLIENT_HOST_DEFAULT = '127.0.0.1';
export const CLIENT_PORT_DEFAULT = NBD_PORT;
/** TCP connect plus the whole handshake must finish within this. */
export const CONNECT_TIMEOUT_MS_DEFAULT = 10_000;
/** A request without a reply for this long marks the connection dead (0 turns the check off). */
export const REQUEST_TIMEOUT_MS_DEFAULT = 30_000;
/** The shared request-timeout tick runs this many times per timeout, within [MIN, MAX] ms. */
export const TIMEOUT_TICKS_PER_PERIOD = 8;
export const TIMEOUT_TICK_MS_MIN = 5;
export const TIMEOUT_TICK_MS_MAX = 1_000;

/** Requests in flight on one connection (a power of two: slots are indexed by mask). */
export const INFLIGHT_DEFAULT = 256;
export const INFLIGHT_MAX = 4096;
/** Calls waiting for a free slot on one connection; one more is refused with MF_BUSY. */
export const QUEUE_DEFAULT = 4096;
export const QUEUE_MAX = 1 << 20;
/**
 * Largest READ or WRITE piece sent, whatever the server advertises: 2^25 is the size every
 * server must accept (the spec: payloads up to it SHOULD NOT be treated as a denial of service).
 */
export const PIECE_BYTES_MAX = PAYLOAD_BYTES_MAX;
/**
 * Largest effect length of one TRIM, WRITE_ZEROES, CACHE or BLOCK_STATUS request (their
 * length field is 32 bits): 1 GiB, a multiple of every legal minimum block size.
 */
export const EFFECT_BYTES_MAX = 1024 * MiB;
/** Request bytes queued in the socket before the client stops issuing until 'drain'. */
export const WRITE_QUEUED_BYTES_MAX = 16 * MiB;
/** Request headers are carved from slabs of this size (one allocation per ~2000 requests). */
export const HEADER_SLAB_BYTES = 64 * KiB;
/** Slab stride of one request header: its 28 bytes rounded up to a multiple of 8. */
export const REQUEST_HEADER_STRIDE_BYTES = (REQUEST_HEADER_BYTES + 7) & ~7;

// ---- bounds on what a server may send -------------------------------------------------------

/** Largest option reply payload read during the handshake (names and descriptions are <= 4 KiB). */
export const OPTION_REPLY_BYTES_MAX = 64 * KiB;
/** Replies one option may produce (REP_INFO, REP_META_CONTEXT) before the client gives up. */
export const OPTION_REPLIES_MAX = 1024;
/** Exports NBD_OPT_LIST may return. */
export const LIST_EXPORTS_MAX = 65_536;
/** Metadata contexts a client may select (their ids are tracked in a 32-bit mask per request). */
export const META_CONTEXTS_MAX = 32;
/** Largest payload of an error chunk: errno + length + a 4096-byte message + an offset, rounded up. */
export const ERROR_CHUNK_BYTES_MAX = 8 * KiB;
/**
 * Content chunks of one READ that may arrive out of order (disjoint islands past the contiguous
 * prefix) before the reply is taken as hostile: overlap checks stay cheap.
 */
export const READ_ISLANDS_MAX = 4096;
/** After NBD_CMD_DISC the server gets this long to close before the socket is destroyed. */
export const DISCONNECT_GRACE_MS = 2_000;
