/**
 * The NBD server's and client's public face. The code lives in three rooms: protocol/ (the wire
 * format, written once for both sides), server/ and client/ (which import protocol/, never each
 * other). Everything not exported here is internal to src/nbd.
 */
export {
  NbdServer,
  defaultMaxConnections,
  openFilesLimit,
  NBD_TLS_MODES,
  type NbdServerOptions,
  type NbdLimits,
  type NbdExport,
  type NbdExportDirectory,
  type NbdLogger,
  type NbdStats,
  type NbdTlsMode,
  type NbdServerTlsOptions,
} from './server/index.js';
export {
  NbdClient,
  NbdConnectionGroup,
  NbdRequestError,
  NbdOptionError,
  type NbdClientOptions,
  type NbdServerAddress,
  type NbdTransmissionFlags,
  type NbdBlockSizes,
  type NbdExtent,
  type NbdExportInfo,
  type NbdExportListing,
  type NbdConnectionGroupOptions,
  type NbdClientTls,
} from './client/index.js';
export { errnoForError, parsePskFile, formatPskLine, parseNbdUri, type NbdUri } from './protocol/index.js';

// Internal to memfabric, shared with other folders (src/index.ts does not re-export these):
// the errno a moved region answers with, and the most connections a group may open; the
// latency histograms' bounds, command names and errnos (the appliance's metrics and logs).
export { ESHUTDOWN } from './protocol/index.js';
export { LATENCY_BOUNDS_SECONDS, type RequestLatency } from './server/index.js';
export { COMMAND_NAMES, ENOSPC } from './protocol/index.js';
export { GROUP_CONNECTIONS_MAX } from './client/index.js';
