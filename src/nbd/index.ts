/** The NBD server's and client's public face; everything else in this folder is internal. */
export { NbdServer } from './server/server.js';
export type { NbdServerOptions, NbdLimits } from './server/server.js';
export { defaultMaxConnections, openFilesLimit } from './server/connection-limit.js';
export type { NbdExport, NbdExportDirectory } from './server/export.js';
export type { NbdLogger } from './server/logger.js';
export type { NbdStats } from './server/stats.js';
export { errnoForError } from './protocol/errno.js';
export { NbdClient } from './client/client.js';
export type {
  NbdClientOptions,
  NbdServerAddress,
  NbdTransmissionFlags,
  NbdBlockSizes,
  NbdExtent,
  NbdExportInfo,
  NbdExportListing,
} from './client/client.js';
export { NbdConnectionGroup } from './client/group.js';
export type { NbdConnectionGroupOptions } from './client/group.js';
export { NbdRequestError, NbdOptionError } from './client/errors.js';
export { NBD_TLS_MODES } from './server/tls.js';
export { parsePskFile, formatPskLine } from './protocol/psk.js';
export type { NbdTlsMode, NbdServerTlsOptions } from './server/tls.js';
export type { NbdClientTls } from './client/tls.js';
export { parseNbdUri, type NbdUri } from './protocol/uri.js';
