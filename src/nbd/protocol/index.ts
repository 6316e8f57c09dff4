/**
 * The NBD protocol, written once and used by both sides: src/nbd/server/ and src/nbd/client/
 * import from here, and nothing here imports either of them.
 *
 *   constants.ts    wire numbers (magics, flags, options, replies, commands, errnos, frame sizes)
 *                   and the spec's own bounds; each side's tighter policy is in its limits.ts
 *   integers.ts     big-endian fields: 64-bit as two 32-bit halves (no BigInt), unchecked loads
 *   handshake.ts    handshake frames: greeting, client flags, option header, option reply
 *                   header, the reply to NBD_OPT_EXPORT_NAME
 *   option-data.ts  what options and option replies carry: INFO/GO requests, NBD_INFO payloads,
 *                   meta context requests and replies, NBD_REP_SERVER, the spec's string rules
 *   request.ts      the transmission request header
 *   reply.ts        simple replies, structured reply chunks, error chunks
 *   errno.ts        exceptions to NBD errnos (sending), errno names and folding (receiving)
 *   uri.ts          the NBD URI parser (nbd://, nbds://)
 *   psk.ts          the psktool key file and TLS-PSK cipher suites
 *
 * Every message has its encoder beside its decoder, so the two sides cannot drift apart.
 */
export * from './constants.js';
export * from './integers.js';
export * from './handshake.js';
export * from './option-data.js';
export * from './request.js';
export * from './reply.js';
export * from './errno.js';
export * from './uri.js';
export * from './psk.js';
