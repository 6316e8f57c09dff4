/**
 * Where the NBD server reports what happened. Every method is optional so that a caller can
 * pass `console`, a structured logger, or nothing at all.
 */
export interface NbdLogger {
  debug?(message: string): void;
  info?(message: string): void;
  warn?(message: string): void;
  error?(message: string): void;
}

export const SILENT_LOGGER: NbdLogger = {};
