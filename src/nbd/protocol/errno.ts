/**
 * NBD errnos, both ways. The spec restricts the error field to a handful of values (EPERM, EIO,
 * ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN).
 *
 * Sending (the server): errnoForError is the one place where an exception from an export becomes
 * an NBD errno; whatever else goes wrong in an export is reported as EIO so that the client
 * retries or fails the one request, never misreads the reply.
 *
 * Receiving (the client): errnoName names a value for messages, normalizeErrno folds values
 * outside the spec's list into EINVAL.
 */
import { ErrorCodes, MemfabricError } from '../../errors.js';
import { EINVAL, EIO, ENOMEM, ENOSPC, ENOTSUP, EOVERFLOW, EPERM, ESHUTDOWN } from './constants.js';

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

const ERRNO_NAMES: Record<number, string> = {
  [EPERM]: 'EPERM',
  [EIO]: 'EIO',
  [ENOMEM]: 'ENOMEM',
  [EINVAL]: 'EINVAL',
  [ENOSPC]: 'ENOSPC',
  [EOVERFLOW]: 'EOVERFLOW',
  [ENOTSUP]: 'ENOTSUP',
  [ESHUTDOWN]: 'ESHUTDOWN',
};

/** The spec's name for an NBD errno ('EINVAL'), or 'errno N'. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/**
 * The spec: "The client SHOULD treat an unexpected error value as if it had been NBD_EINVAL".
 * Values outside the spec's list are reported as EINVAL (the message keeps the raw value).
 */
export function normalizeErrno(errno: number): number {
  return ERRNO_NAMES[errno] === undefined ? EINVAL : errno;
}
