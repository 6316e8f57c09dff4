/**
 * Where the NBD server reports what happened. Every method is optional so that a caller can
 * pass `console`, a structured logger, or nothing at all. Some lines carry structured fields
 * (a connection's peer, export, duration, bytes) as a second argument; the message alone
 * still reads as a sentence.
 */
export interface NbdLogger {
  debug?(message: string, fields?: Record<string, unknown>): void;
  info?(message: string, fields?: Record<string, unknown>): void;
  warn?(message: string, fields?: Record<string, unknown>): void;
  error?(message: string, fields?: Record<string, unknown>): void;
}

export const SILENT_LOGGER: NbdLogger = {};
