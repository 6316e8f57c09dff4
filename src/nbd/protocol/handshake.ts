/**
 * The frames of the fixed newstyle handshake, each encoder beside its decoder:
 *
 *   S: NBDMAGIC IHAVEOPT flags(16)                   encodeGreeting / decodeGreetingMagic
 *   C: client flags(32)                              encodeClientFlags / decodeClientFlags
 *   C: IHAVEOPT option(32) length(32) data           encodeOption / decodeOptionHeader
 *   S: magic(64) option(32) type(32) length(32) data encodeOptionReply / decodeOptionReplyHeader
 *   S: size(64) flags(16) [zeroes(124)]              encodeExportNameReply / decodeExportNameReply
 *
 * The data an option or a reply carries is in option-data.ts. Decoders take exactly the bytes
 * of their frame and check only what the frame itself says (its magic); what a side accepts
 * beyond that (known flags, bounded lengths) is its own policy. The handshake is not a hot
 * path: encoders allocate the message, decoders return a small object.
 */
import {
  CLIENT_FLAGS_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  EXPORT_NAME_REPLY_ZEROES_BYTES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  NBDMAGIC_HI,
  NBDMAGIC_LO,
  OLDSTYLE_MAGIC_HI,
  OLDSTYLE_MAGIC_LO,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  SERVER_GREETING_BYTES,
} from './constants.js';
import { readU64, writeU64 } from './integers.js';

// ---- greeting ---------------------------------------------------------------------------------

/** The greeting's two magics: NBDMAGIC and IHAVEOPT (the handshake flags follow). */
export const GREETING_MAGIC_BYTES = 16;

export function encodeGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(SERVER_GREETING_BYTES);
  buf.writeUInt32BE(NBDMAGIC_HI, 0);
  buf.writeUInt32BE(NBDMAGIC_LO, 4);
  buf.writeUInt32BE(IHAVEOPT_HI, 8);
  buf.writeUInt32BE(IHAVEOPT_LO, 12);
  buf.writeUInt16BE(handshakeFlags, GREETING_MAGIC_BYTES);
  return buf;
}

/**
 * What the greeting's first GREETING_MAGIC_BYTES say: a newstyle server (its flags follow),
 * an oldstyle one, something that is not an NBD server, or NBDMAGIC followed by garbage.
 */
export type GreetingMagic = 'newstyle' | 'oldstyle' | 'not-nbd' | 'bad';

export function decodeGreetingMagic(buf: Buffer): GreetingMagic {
  if (buf.readUInt32BE(0) !== NBDMAGIC_HI || buf.readUInt32BE(4) !== NBDMAGIC_LO) return 'not-nbd';
  const hi = buf.readUInt32BE(8);
  const lo = buf.readUInt32BE(12);
  if (hi === OLDSTYLE_MAGIC_HI && lo === OLDSTYLE_MAGIC_LO) return 'oldstyle';
  return hi === IHAVEOPT_HI && lo === IHAVEOPT_LO ? 'newstyle' : 'bad';
}

// ---- client flags -----------------------------------------------------------------------------

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.allocUnsafe(CLIENT_FLAGS_BYTES);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

export function decodeClientFlags(buf: Buffer): number {
  return buf.readUInt32BE(0);
}

// ---- options (client -> server) ---------------------------------------------------------------

/** IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data?: Buffer): Buffer {
  const length = data === undefined ? 0 : data.length;
  const buf = Buffer.allocUnsafe(OPTION_HEADER_BYTES + length);
  buf.writeUInt32BE(IHAVEOPT_HI, 0);
  buf.writeUInt32BE(IHAVEOPT_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(length, 12);
  if (data !== undefined) data.copy(buf, OPTION_HEADER_BYTES);
  return buf;
}

export interface OptionHeader {
  readonly option: number;
  /** Bytes of option data that follow the header. */
  readonly length: number;
}

/** The OPTION_HEADER_BYTES of an option; undefined when the magic is not IHAVEOPT. */
export function decodeOptionHeader(buf: Buffer): OptionHeader | undefined {
  if (buf.readUInt32BE(0) !== IHAVEOPT_HI || buf.readUInt32BE(4) !== IHAVEOPT_LO) return undefined;
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

// ---- option replies (server -> client) --------------------------------------------------------

/** One option reply: header plus `data` (a Buffer, or a string sent as UTF-8). */
export function encodeOptionReply(option: number, replyType: number, data?: Buffer | string): Buffer {
  const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const length = payload === undefined ? 0 : payload.length;
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + length);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(replyType >>> 0, 12);
  buf.writeUInt32BE(length, 16);
  if (payload !== undefined) payload.copy(buf, OPTION_REPLY_HEADER_BYTES);
  return buf;
}

export interface OptionReplyHeader {
  /** The option this replies to, as the server echoed it. */
  readonly option: number;
  /** REP_* (errors have bit 31 set). */
  readonly type: number;
  /** Bytes of reply data that follow the header. */
  readonly length: number;
}

/** The OPTION_REPLY_HEADER_BYTES of a reply; undefined when the magic is wrong. */
export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader | undefined {
  if (buf.readUInt32BE(0) !== OPTION_REPLY_MAGIC_HI || buf.readUInt32BE(4) !== OPTION_REPLY_MAGIC_LO) {
    return undefined;
  }
  return { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

/** Option reply types with bit 31 set are errors. */
export function isOptionReplyError(type: number): boolean {
  return type >= 0x80000000;
}

// ---- the reply to NBD_OPT_EXPORT_NAME ---------------------------------------------------------

/** Its length: 124 zero bytes follow size and flags unless both sides agreed on NO_ZEROES. */
export function exportNameReplyBytes(noZeroes: boolean): number {
  return EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES_BYTES);
}

export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(exportNameReplyBytes(noZeroes));
  writeU64(buf, 0, size);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

export interface ExportNameReply {
  /** At or above 2^53 it is imprecise (see readU64); the reader checks it. */
  readonly size: number;
  readonly transmissionFlags: number;
}

export function decodeExportNameReply(buf: Buffer): ExportNameReply {
  return { size: readU64(buf, 0), transmissionFlags: buf.readUInt16BE(8) };
}
