/**
 * validateRequest: every check a request passes before the export sees it, in one pure function,
 * so that an export may assume `offset + length <= size`, a writable export for mutations and
 * only flags it understands. A rejection is a reason code; `rejectionErrno` turns it into the
 * errno the spec asks for and `rejectionMessage` into text for a structured error chunk.
 *
 * Order matters only for which error a doubly-wrong request gets: unknown command, flags, DF
 * without structured replies, FLUSH fields, read-only, payload size, missing meta context,
 * zero length, range (docs/nbd.md has the table).
 */
import {
  CMD_BLOCK_STATUS,
  CMD_COUNT,
  CMD_FLAG_DF,
  CMD_FLAGS_ALLOWED,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  COMMAND_NAMES,
  EINVAL,
  ENOSPC,
  EOVERFLOW,
  EPERM,
  PAYLOAD_BYTES_MAX,
} from '../protocol/constants.js';
import type { RequestHeader } from './request-parser.js';

/** What the validator needs to know about the session. */
export interface ValidationContext {
  readonly size: number;
  readonly readOnly: boolean;
  readonly structuredReplies: boolean;
  /** base:allocation was negotiated for this export. */
  readonly baseAllocation: boolean;
}

export const VALID = 0;
export const REJECT_UNKNOWN_COMMAND = 1;
export const REJECT_FLAGS = 2;
export const REJECT_DF_NOT_NEGOTIATED = 3;
export const REJECT_READ_ONLY = 4;
export const REJECT_TOO_LARGE = 5;
export const REJECT_ZERO_LENGTH = 6;
export const REJECT_OUT_OF_RANGE = 7;
export const REJECT_NOT_ZERO = 8;
export const REJECT_NO_META_CONTEXT = 9;

export function validateRequest(req: RequestHeader, ctx: ValidationContext): number {
  const type = req.type;
  if (type >= CMD_COUNT) return REJECT_UNKNOWN_COMMAND;
  if ((req.flags & ~CMD_FLAGS_ALLOWED[type]) !== 0) return REJECT_FLAGS;
  if ((req.flags & CMD_FLAG_DF) !== 0 && !ctx.structuredReplies) return REJECT_DF_NOT_NEGOTIATED;
  if (type === CMD_FLUSH) {
    // offset and length are reserved and MUST be zero.
    return req.offset === 0 && req.length === 0 ? VALID : REJECT_NOT_ZERO;
  }
  if (ctx.readOnly && (type === CMD_WRITE || type === CMD_TRIM || type === CMD_WRITE_ZEROES)) {
    return REJECT_READ_ONLY;
  }
  if ((type === CMD_READ || type === CMD_WRITE) && req.length > PAYLOAD_BYTES_MAX) return REJECT_TOO_LARGE;
  if (type === CMD_BLOCK_STATUS && !ctx.baseAllocation) return REJECT_NO_META_CONTEXT;
  // The spec leaves zero-length requests unspecified (but not a reason to disconnect); we refuse them.
  if (req.length === 0) return REJECT_ZERO_LENGTH;
  if (req.offset > ctx.size || req.length > ctx.size - req.offset) return REJECT_OUT_OF_RANGE;
  return VALID;
}

export function rejectionErrno(reason: number, req: RequestHeader, ctx: ValidationContext): number {
  switch (reason) {
    case REJECT_READ_ONLY:
      return EPERM;
    case REJECT_TOO_LARGE:
      // A structured READ may be refused up front with EOVERFLOW so the client retries smaller;
      // otherwise the spec reserves EOVERFLOW for DF and payload-less commands.
      return req.type === CMD_READ && ctx.structuredReplies ? EOVERFLOW : EINVAL;
    case REJECT_OUT_OF_RANGE:
      // The spec: ENOSPC for writes past the end, EINVAL for everything else.
      return req.type === CMD_WRITE || req.type === CMD_WRITE_ZEROES ? ENOSPC : EINVAL;
    default:
      return EINVAL;
  }
}

export function commandName(type: number): string {
  return type < CMD_COUNT ? COMMAND_NAMES[type] : `command ${type}`;
}

export function rejectionMessage(reason: number, req: RequestHeader, ctx: ValidationContext): string {
  const what = commandName(req.type);
  switch (reason) {
    case REJECT_UNKNOWN_COMMAND:
      return `unknown command ${req.type}`;
    case REJECT_FLAGS:
      return `${what}: flags 0x${req.flags.toString(16)} are not valid for this command`;
    case REJECT_DF_NOT_NEGOTIATED:
      return `${what}: DF requires structured replies`;
    case REJECT_READ_ONLY:
      return `${what}: the export is read-only`;
    case REJECT_TOO_LARGE:
      return `${what}: length ${req.length} exceeds the maximum payload ${PAYLOAD_BYTES_MAX}`;
    case REJECT_ZERO_LENGTH:
      return `${what}: length must not be zero`;
    case REJECT_OUT_OF_RANGE:
      return `${what}: offset ${req.offset} + length ${req.length} exceeds the export size ${ctx.size}`;
    case REJECT_NOT_ZERO:
      return `${what}: offset and length must be zero`;
    case REJECT_NO_META_CONTEXT:
      return `${what}: negotiate base:allocation with NBD_OPT_SET_META_CONTEXT first`;
    default:
      return `${what}: invalid request`;
  }
}
