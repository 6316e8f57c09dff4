/** The NBD server's public face; everything else in this folder is internal. */
export { NbdServer } from './server.js';
export type { NbdServerOptions } from './server.js';
export type { NbdExport, NbdExportDirectory } from './export.js';
export type { NbdLogger } from './logger.js';
export type { NbdStats } from './stats.js';
export { errnoForError } from './errno.js';
