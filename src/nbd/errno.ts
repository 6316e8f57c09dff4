/**
 * The one place where an exception from an export becomes an NBD errno. The spec restricts the
 * error field to a handful of values (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP,
 * ESHUTDOWN); whatever else goes wrong in an export is reported as EIO so that the client
 * retries or fails the one request, never misreads the reply.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import { EINVAL, EIO, ENOSPC, EPERM, ESHUTDOWN } from './constants.js';

export function errnoForError(err: unknown): number {
  if (err instanceof MemfabricError) {
    switch (err.code) {
      case ErrorCodes.POOL_EXHAUSTED:
        return ENOSPC;
      case ErrorCodes.READ_ONLY:
        return EPERM;
      case ErrorCodes.OUT_OF_RANGE:
      case ErrorCodes.INVALID_ARGUMENT:
        return EINVAL;
      case ErrorCodes.MIGRATING:
        return ESHUTDOWN;
      default:
        return EIO;
    }
  }
  return EIO;
}

/** A message for an error chunk: short, and never longer than the spec's string bound. */
export function messageForError(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.length > 256 ? `${text.slice(0, 253)}...` : text;
}
