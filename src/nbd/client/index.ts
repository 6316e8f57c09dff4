/**
 * The NBD client (src/nbd/client/): it reads and writes an export of any NBD server.
 *
 *   client.ts        NbdClient: one connection, many requests in flight, matched by cookie
 *   group.ts         NbdConnectionGroup: several connections to one export used as one (multi-conn)
 *   handshake.ts     the client side of option haggling, up to transmission
 *   inflight.ts      the requests one connection has in flight, in fixed arrays by slot
 *   queue.ts         calls waiting for a free slot
 *   reply-parser.ts  replies out of arbitrary TCP chunks, checked against the request
 *   tls.ts           the caller's TLS options, and the upgrade after STARTTLS
 *   errors.ts        the client's MemfabricErrors
 *   limits.ts        the client's bounds and defaults
 *
 * It speaks the protocol through ../protocol/ and never imports the server.
 */
export { NbdClient } from './client.js';
export type {
  NbdClientOptions,
  NbdServerAddress,
  NbdTransmissionFlags,
  NbdBlockSizes,
  NbdExtent,
  NbdExportInfo,
  NbdExportListing,
} from './client.js';
export { NbdConnectionGroup, GROUP_CONNECTIONS_MAX } from './group.js';
export type { NbdConnectionGroupOptions } from './group.js';
export { NbdRequestError, NbdOptionError } from './errors.js';
export type { NbdClientTls } from './tls.js';
