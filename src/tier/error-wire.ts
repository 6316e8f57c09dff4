/**
 * Errors across the worker boundary. The page store runs in the pager's I/O worker, and what
 * it rejects with must reach the main thread with its code and its cause intact: a user who
 * catches MF_STORE_FAILED reads `cause` to learn what failed underneath (a lost appliance's
 * MF_DATA_LOST, a disk's EIO). Structured clone keeps an Error's message but drops `code` and
 * the other fields Node and memfabric put on it, so errors cross as plain records and are
 * rebuilt on the other side.
 */
import { ErrorCodes, MemfabricError, type ErrorCode } from '../errors.js';

/** An error as plain data: what survives postMessage. */
export interface WireError {
  name: string;
  message: string;
  code?: string;
  errno?: number;
  syscall?: string;
  path?: string;
  cause?: WireError;
}

/** Causes kept per error: a chain longer than this is cut (a cycle would never end). */
const CAUSE_DEPTH_MAX = 4;
const CODES = new Set<string>(Object.values(ErrorCodes));

export function toWire(error: unknown, depth = 0): WireError {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const fields = error as Error & { code?: unknown; errno?: unknown; syscall?: unknown; path?: unknown };
  const wire: WireError = { name: error.name, message: error.message };
  if (typeof fields.code === 'string') wire.code = fields.code;
  if (typeof fields.errno === 'number') wire.errno = fields.errno;
  if (typeof fields.syscall === 'string') wire.syscall = fields.syscall;
  if (typeof fields.path === 'string') wire.path = fields.path;
  if (error.cause !== undefined && depth < CAUSE_DEPTH_MAX) wire.cause = toWire(error.cause, depth + 1);
  return wire;
}

/** The error again: a MemfabricError when its code is one of ours, else an Error with its fields. */
export function fromWire(wire: WireError): Error {
  const cause = wire.cause === undefined ? undefined : fromWire(wire.cause);
  const options = cause === undefined ? undefined : { cause };
  if (wire.code !== undefined && CODES.has(wire.code)) {
    return new MemfabricError(wire.code as ErrorCode, wire.message, options);
  }
  const error = new Error(wire.message, options) as Error & Partial<Omit<WireError, 'cause'>>;
  error.name = wire.name;
  if (wire.code !== undefined) error.code = wire.code;
  if (wire.errno !== undefined) error.errno = wire.errno;
  if (wire.syscall !== undefined) error.syscall = wire.syscall;
  if (wire.path !== undefined) error.path = wire.path;
  return error;
}

/**
 * What a store's error stands for underneath: a store wraps an I/O failure in its own
 * MF_STORE_FAILED (naming the store and the slot) with the failure as cause; the pager names
 * the store in its own message and keeps the failure itself as cause.
 */
export function underlying(error: unknown): unknown {
  if (
    error instanceof MemfabricError &&
    error.code === ErrorCodes.STORE_FAILED &&
    error.cause !== undefined
  ) {
    return error.cause;
  }
  return error;
}
