/**
 * The data that handshake options and option replies carry, each encoder beside its decoder:
 *
 *   NBD_OPT_INFO / NBD_OPT_GO        name length(32) name count(16) info types(16 each)
 *   NBD_OPT_*_META_CONTEXT           name length(32) name count(32) (length(32) query)...
 *   NBD_REP_SERVER                   name length(32) name description
 *   NBD_REP_META_CONTEXT             context id(32) context name
 *   NBD_REP_INFO                     info type(16), then per type:
 *     NBD_INFO_EXPORT                  size(64) transmission flags(16)
 *     NBD_INFO_NAME / _DESCRIPTION     text
 *     NBD_INFO_BLOCK_SIZE              minimum(32) preferred(32) maximum payload(32)
 *
 * Decoders of what a client sends (the server reads them) check every length against the data
 * and answer a malformed option with the refusal the spec asks for; decoders of what a server
 * sends return undefined for a payload of the wrong size and leave the message to the client.
 */
import {
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  NAME_BYTES_MAX,
  REP_ERR_INVALID,
  REP_ERR_TOO_BIG,
} from './constants.js';
import { readU64, writeU64 } from './integers.js';

/** Why the server refuses option data: the reply type to answer with and a message for the client. */
export interface OptionDataRefusal {
  readonly refusal: number;
  readonly message: string;
}

export function isRefusal(decoded: object): decoded is OptionDataRefusal {
  return 'refusal' in decoded;
}

function invalid(message: string): OptionDataRefusal {
  return { refusal: REP_ERR_INVALID, message };
}

/**
 * A client-chosen string (export name, query) as UTF-8, or undefined when it breaks the spec's
 * string rules: at most NAME_BYTES_MAX bytes and no NUL.
 */
export function decodeString(buf: Buffer, start: number, end: number): string | undefined {
  if (end - start > NAME_BYTES_MAX) return undefined;
  const bytes = buf.subarray(start, end);
  if (bytes.includes(0)) return undefined;
  return bytes.toString('utf8');
}

// ---- NBD_OPT_INFO / NBD_OPT_GO ----------------------------------------------------------------

export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBytes.length + 2 + 2 * infos.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  let at = 4 + nameBytes.length;
  buf.writeUInt16BE(infos.length, at);
  at += 2;
  for (const info of infos) {
    buf.writeUInt16BE(info, at);
    at += 2;
  }
  return buf;
}

export interface InfoRequest {
  readonly name: string;
  /** The NBD_INFO_* types asked for, unknown ones included (the server ignores those). */
  readonly infos: readonly number[];
}

export function decodeInfoRequest(data: Buffer): InfoRequest | OptionDataRefusal {
  // name length (32) + name + request count (16) + requests (16 each), nothing more or less.
  if (data.length < 6) return invalid('option data too short');
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return invalid('export name length exceeds option data');
  const requestCount = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * requestCount) {
    return invalid('information request count does not match option length');
  }
  const name = decodeString(data, 4, 4 + nameLength);
  if (name === undefined) return invalid('export name is not a valid string');
  const infos: number[] = [];
  for (let i = 0; i < requestCount; i++) infos.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { name, infos };
}

// ---- NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT -------------------------------------

export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const queryBytes = queries.map((q) => Buffer.from(q, 'utf8'));
  let size = 4 + nameBytes.length + 4;
  for (const q of queryBytes) size += 4 + q.length;
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  let at = 4 + nameBytes.length;
  buf.writeUInt32BE(queryBytes.length, at);
  at += 4;
  for (const q of queryBytes) {
    buf.writeUInt32BE(q.length, at);
    q.copy(buf, at + 4);
    at += 4 + q.length;
  }
  return buf;
}

export interface MetaContextRequest {
  readonly name: string;
  /** Each a namespace, a colon and a leaf name (or a namespace wildcard such as 'base:'). */
  readonly queries: readonly string[];
}

/**
 * Every query is parsed before the option is answered: a malformed one fails the whole option.
 * More than `queriesMax` queries are refused NBD_REP_ERR_TOO_BIG before any is read.
 */
export function decodeMetaContextRequest(
  data: Buffer,
  queriesMax: number,
): MetaContextRequest | OptionDataRefusal {
  // export name length (32) + name + query count (32) + queries, each length (32) + string.
  if (data.length < 8) return invalid('option data too short');
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return invalid('export name length exceeds option data');
  const name = decodeString(data, 4, 4 + nameLength);
  if (name === undefined) return invalid('export name is not a valid string');
  const queryCount = data.readUInt32BE(4 + nameLength);
  if (queryCount > queriesMax)
    return { refusal: REP_ERR_TOO_BIG, message: `more than ${queriesMax} queries` };
  const queries: string[] = [];
  let at = 8 + nameLength;
  for (let i = 0; i < queryCount; i++) {
    if (data.length - at < 4) return invalid('query length exceeds option data');
    const queryLength = data.readUInt32BE(at);
    at += 4;
    if (queryLength > data.length - at) return invalid('query length exceeds option data');
    const query = decodeString(data, at, at + queryLength);
    at += queryLength;
    if (query === undefined || !query.includes(':')) {
      return invalid('a query must be a namespace, a colon and a leaf name');
    }
    queries.push(query);
  }
  if (at !== data.length) return invalid('trailing bytes after the last query');
  return { name, queries };
}

// ---- NBD_REP_SERVER (one export in the reply to NBD_OPT_LIST) --------------------------------

export function encodeServerReply(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description, 'utf8');
  const payload = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  payload.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(payload, 4);
  descriptionBytes.copy(payload, 4 + nameBytes.length);
  return payload;
}

/** Undefined when the name does not fit in the reply. */
export function decodeServerReply(data: Buffer): { name: string; description: string } | undefined {
  if (data.length < 4) return undefined;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 4) return undefined;
  return {
    name: data.toString('utf8', 4, 4 + nameLength),
    description: data.toString('utf8', 4 + nameLength),
  };
}

// ---- NBD_REP_META_CONTEXT ---------------------------------------------------------------------

export function encodeMetaContextReply(id: number, name: string): Buffer {
  const context = Buffer.from(name, 'utf8');
  const payload = Buffer.allocUnsafe(4 + context.length);
  payload.writeUInt32BE(id, 0);
  context.copy(payload, 4);
  return payload;
}

/** Undefined unless the reply holds an id and a non-empty name. */
export function decodeMetaContextReply(data: Buffer): { id: number; name: string } | undefined {
  if (data.length < 5) return undefined;
  return { id: data.readUInt32BE(0), name: data.toString('utf8', 4) };
}

// ---- NBD_REP_INFO -----------------------------------------------------------------------------

export const INFO_EXPORT_BYTES = 12;
export const INFO_BLOCK_SIZE_BYTES = 14;

/** The NBD_INFO_* type of an NBD_REP_INFO payload; undefined when it is too short to have one. */
export function decodeInfoType(data: Buffer): number | undefined {
  return data.length < 2 ? undefined : data.readUInt16BE(0);
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(INFO_EXPORT_BYTES);
  buf.writeUInt16BE(INFO_EXPORT, 0);
  writeU64(buf, 2, size);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

/** Undefined unless the payload is exactly INFO_EXPORT_BYTES; a size at or above 2^53 is imprecise. */
export function decodeInfoExport(data: Buffer): { size: number; transmissionFlags: number } | undefined {
  if (data.length !== INFO_EXPORT_BYTES) return undefined;
  return { size: readU64(data, 2), transmissionFlags: data.readUInt16BE(10) };
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION. */
export function encodeInfoString(type: number, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(2 + bytes.length);
  buf.writeUInt16BE(type, 0);
  bytes.copy(buf, 2);
  return buf;
}

export function decodeInfoString(data: Buffer): string {
  return data.toString('utf8', 2);
}

export interface BlockSizes {
  readonly minimum: number;
  readonly preferred: number;
  readonly maximum: number;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const buf = Buffer.allocUnsafe(INFO_BLOCK_SIZE_BYTES);
  buf.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  buf.writeUInt32BE(minimum, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(maximum, 10);
  return buf;
}

/** Undefined unless the payload is exactly INFO_BLOCK_SIZE_BYTES; the values are not checked. */
export function decodeInfoBlockSize(data: Buffer): BlockSizes | undefined {
  if (data.length !== INFO_BLOCK_SIZE_BYTES) return undefined;
  return { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
}
