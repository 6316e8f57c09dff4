/**
 * The client's errors, all MemfabricErrors with a stable code:
 *   - a server's error reply to a request: NbdRequestError (MF_NBD_REQUEST_FAILED) with the
 *     errno, the command and the range, and the server's message when it sent one;
 *   - a broken stream (bad magic, unknown cookie, impossible lengths): MF_NBD_PROTOCOL;
 *   - a connection that closed or failed: MF_CONNECTION_CLOSED;
 *   - a request or handshake with no answer in time: MF_TIMEOUT.
 */
import { ErrorCodes, MemfabricError } from '../../errors.js';
import { errnoName, normalizeErrno } from '../protocol/errno.js';
import {
  CMD_COUNT,
  COMMAND_NAMES,
  EINVAL,
  ENOTSUP,
  EOVERFLOW,
  EPERM,
  ESHUTDOWN,
  REP_ERR_BLOCK_SIZE_REQD,
  REP_ERR_INVALID,
  REP_ERR_PLATFORM,
  REP_ERR_POLICY,
  REP_ERR_SHUTDOWN,
  REP_ERR_TLS_REQD,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
} from '../protocol/constants.js';

export function commandLabel(command: number): string {
  return command < CMD_COUNT ? COMMAND_NAMES[command] : `command ${command}`;
}

/** A server answered a request with an error. Match on `code` and `errno`, never the message. */
export class NbdRequestError extends MemfabricError {
  /** The NBD errno (1 EPERM, 5 EIO, 12 ENOMEM, 22 EINVAL, 28 ENOSPC, 75 EOVERFLOW, 95 ENOTSUP, 108 ESHUTDOWN). */
  readonly errno: number;
  /** 'read', 'write', 'flush', 'trim', 'cache', 'writeZeroes', 'blockStatus'. */
  readonly command: string;
  readonly offset: number;
  readonly length: number;

  constructor(command: number, offset: number, length: number, rawErrno: number, serverMessage: string) {
    const errno = normalizeErrno(rawErrno);
    const name = commandLabel(command);
    const raw = errno === rawErrno ? '' : ` (server sent errno ${rawErrno})`;
    const detail = serverMessage === '' ? '' : `: ${serverMessage}`;
    super(
      ErrorCodes.NBD_REQUEST_FAILED,
      `nbd ${name} at offset ${offset} length ${length} failed with ${errnoName(errno)} (${errno})${raw}${detail}`,
    );
    this.name = 'NbdRequestError';
    this.errno = errno;
    this.command = name;
    this.offset = offset;
    this.length = length;
  }
}

export function protocolError(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.NBD_PROTOCOL, `nbd protocol violation: ${message}`);
}

export function connectionClosed(message: string, cause?: unknown): MemfabricError {
  return new MemfabricError(
    ErrorCodes.CONNECTION_CLOSED,
    message,
    cause === undefined ? undefined : { cause },
  );
}

export function timeoutError(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.TIMEOUT, message);
}

const OPTION_ERROR_NAMES: Record<number, [string, number]> = {
  [REP_ERR_UNSUP]: ['NBD_REP_ERR_UNSUP', ENOTSUP],
  [REP_ERR_POLICY]: ['NBD_REP_ERR_POLICY', EPERM],
  [REP_ERR_INVALID]: ['NBD_REP_ERR_INVALID', EINVAL],
  [REP_ERR_PLATFORM]: ['NBD_REP_ERR_PLATFORM', ENOTSUP],
  [REP_ERR_TLS_REQD]: ['NBD_REP_ERR_TLS_REQD', EPERM],
  [REP_ERR_UNKNOWN]: ['NBD_REP_ERR_UNKNOWN', EINVAL],
  [REP_ERR_SHUTDOWN]: ['NBD_REP_ERR_SHUTDOWN', ESHUTDOWN],
  [REP_ERR_BLOCK_SIZE_REQD]: ['NBD_REP_ERR_BLOCK_SIZE_REQD', EINVAL],
  [REP_ERR_TOO_BIG]: ['NBD_REP_ERR_TOO_BIG', EOVERFLOW],
};

/**
 * A server refused a handshake option. An unknown export is MF_NOT_FOUND; any other refusal is
 * MF_NBD_REQUEST_FAILED with the closest errno (policy and TLS: EPERM, shutdown: ESHUTDOWN,
 * unsupported: ENOTSUP, too big: EOVERFLOW, otherwise EINVAL).
 */
export class NbdOptionError extends MemfabricError {
  readonly errno: number;
  /** The option reply type (bit 31 set). */
  readonly replyType: number;

  constructor(optionName: string, replyType: number, serverMessage: string, exportName: string) {
    const [name, errno] = OPTION_ERROR_NAMES[replyType] ?? [
      `error reply 0x${replyType.toString(16)}`,
      EINVAL,
    ];
    const detail = serverMessage === '' ? '' : `: ${serverMessage}`;
    const unknown = replyType === REP_ERR_UNKNOWN;
    super(
      unknown ? ErrorCodes.NOT_FOUND : ErrorCodes.NBD_REQUEST_FAILED,
      unknown
        ? `nbd export '${exportName}' does not exist on the server${detail}`
        : `nbd ${optionName} refused with ${name}${detail}`,
    );
    this.name = 'NbdOptionError';
    this.errno = errno;
    this.replyType = replyType;
  }
}
