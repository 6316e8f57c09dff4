/**
 * The NBD server (src/nbd/server/): it serves an NbdExportDirectory over TCP.
 *
 *   server.ts            NbdServer: listening, the connection limit, the shared budget and stats
 *   session.ts           one connection: its socket, handshake, then transmission
 *   handshake.ts         the server side of option haggling, up to NBD_OPT_GO
 *   transmission.ts      requests in, replies out
 *   request-parser.ts    frames requests out of arbitrary TCP chunks
 *   validate.ts          every check a request passes before the export sees it
 *   budget.ts            the global buffer budget across connections
 *   reply-buffers.ts     recycled buffers for large replies
 *   connection-limit.ts  the default connection limit from the open-file limit
 *   stats.ts, logger.ts  what the server counts and reports
 *   latency.ts           request latency by command (fixed-bucket histograms)
 *   export.ts            what the server needs from whatever holds the bytes
 *   tls.ts               STARTTLS: policy, credentials, the upgrade of a socket
 *   limits.ts            the server's bounds and defaults
 *
 * It speaks the protocol through ../protocol/ and never imports the client.
 */
export { NbdServer } from './server.js';
export type { NbdServerOptions, NbdLimits } from './server.js';
export { defaultMaxConnections, openFilesLimit } from './connection-limit.js';
export type { NbdExport, NbdExportDirectory } from './export.js';
export type { NbdLogger } from './logger.js';
export type { NbdStats } from './stats.js';
export { LATENCY_BOUNDS_SECONDS, type RequestLatency } from './latency.js';
export { NBD_TLS_MODES } from './tls.js';
export type { NbdTlsMode, NbdServerTlsOptions } from './tls.js';
