/**
 * Client side of the fixed newstyle handshake, apart from transmission.
 *
 *   S: NBDMAGIC IHAVEOPT flags(16)            greeting (FIXED_NEWSTYLE required; NO_ZEROES used if offered)
 *   C: client flags(32)                       FIXED_NEWSTYLE | NO_ZEROES
 *   C: NBD_OPT_STRUCTURED_REPLY               -> ACK, or an error: simple replies only
 *   C: NBD_OPT_SET_META_CONTEXT name queries  -> META_CONTEXT (id, name) ... ACK (only with structured replies)
 *   C: NBD_OPT_GO name [BLOCK_SIZE, NAME, DESCRIPTION]
 *                                             -> INFO ... ACK: transmission
 *                                             -> ERR_UNSUP: fall back to NBD_OPT_EXPORT_NAME
 *                                             -> other errors: MF_NOT_FOUND / MF_NBD_REQUEST_FAILED
 *
 * With TLS (tls.ts) the greeting is followed by NBD_OPT_STARTTLS, which must be
 * acknowledged; everything above then runs over TLS. `greet` and `startTls` are therefore
 * separate steps run by the caller before `negotiate`, `listExports` or `exportInfo`.
 *
 * `list` (NBD_OPT_LIST) and `info` (NBD_OPT_INFO) end with NBD_OPT_ABORT instead of entering
 * transmission. The handshake is not a hot path, so it is written as plain async code over a
 * reader that yields exactly the bytes asked for. Every length the server sends is bounded
 * (OPTION_REPLY_BYTES_MAX per reply, OPTION_REPLIES_MAX replies per option, LIST_EXPORTS_MAX
 * exports); the caller bounds the time (connectTimeoutMs).
 */
import type { Socket } from 'node:net';
import type { MemfabricError } from '../../errors.js';
import {
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_HAS_FLAGS,
  FLAG_NO_ZEROES,
  INFO_BLOCK_SIZE,
  INFO_DESCRIPTION,
  INFO_EXPORT,
  INFO_NAME,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  OPTION_REPLY_HEADER_BYTES,
  REP_ACK,
  REP_ERR_TLS_REQD,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
} from '../protocol/constants.js';
import { LIST_EXPORTS_MAX, META_CONTEXTS_MAX, OPTION_REPLIES_MAX, OPTION_REPLY_BYTES_MAX } from './limits.js';
import { connectionClosed, NbdOptionError, protocolError } from './errors.js';
import { tlsError } from './tls.js';
import {
  decodeExportNameReply,
  decodeGreetingMagic,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeOption,
  exportNameReplyBytes,
  GREETING_MAGIC_BYTES,
  isOptionReplyError,
} from '../protocol/handshake.js';
import {
  decodeInfoBlockSize,
  decodeInfoExport,
  decodeInfoString,
  decodeInfoType,
  decodeMetaContextReply,
  decodeServerReply,
  encodeInfoRequest,
  INFO_BLOCK_SIZE_BYTES,
  INFO_EXPORT_BYTES,
  encodeMetaContextRequest,
} from '../protocol/option-data.js';

/** Size constraints from NBD_INFO_BLOCK_SIZE. */
export interface NbdBlockSizes {
  readonly minimum: number;
  readonly preferred: number;
  readonly maximum: number;
}

/** What NBD_OPT_INFO / NBD_OPT_GO (or NBD_OPT_EXPORT_NAME) told us about an export. */
export interface ExportDetails {
  /** The name asked for ('' is the default export). */
  readonly exportName: string;
  /** The server's canonical name (NBD_INFO_NAME) when it sent one, else the name asked for. */
  readonly canonicalName: string;
  readonly description: string;
  readonly size: number;
  /** Raw 16-bit transmission flags. */
  readonly flags: number;
  readonly blockSizes: NbdBlockSizes | undefined;
}

export interface Negotiated extends ExportDetails {
  readonly structured: boolean;
  /** Metadata contexts the server selected, in the order it sent them. */
  readonly contexts: ReadonlyArray<{ readonly name: string; readonly id: number }>;
  /** False when the server lacked NBD_OPT_GO and NBD_OPT_EXPORT_NAME was used instead. */
  readonly usedGo: boolean;
}

export interface NegotiateOptions {
  readonly exportName: string;
  readonly structuredReplies: boolean;
  readonly metaContexts: readonly string[];
}

/** Bytes the reader buffers before it pauses the socket (a LIST can arrive as one burst). */
const READER_BUFFERED_BYTES_MAX = 256 * 1024;
const EMPTY = Buffer.alloc(0);

/**
 * Exact-length reads over a socket for the handshake. Chunks are kept until asked for; the
 * socket is paused while more than READER_BUFFERED_BYTES_MAX wait. `detach` hands back what
 * arrived past the handshake so transmission can parse it.
 */
export class HandshakeReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want = 0;
  private resolveRead: ((buf: Buffer) => void) | null = null;
  private rejectRead: ((err: MemfabricError) => void) | null = null;
  private failure: MemfabricError | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered > READER_BUFFERED_BYTES_MAX) this.socket.pause();
    this.deliver();
  };

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
  }

  /** Makes the pending and every later read fail with `err` (the socket closed or timed out). */
  fail(err: MemfabricError): void {
    if (this.failure !== null) return;
    this.failure = err;
    const reject = this.rejectRead;
    this.resolveRead = this.rejectRead = null;
    reject?.(err);
  }

  read(n: number): Promise<Buffer> {
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise<Buffer>((resolve, reject) => {
      this.want = n;
      this.resolveRead = resolve;
      this.rejectRead = reject;
    });
  }

  write(buf: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(buf);
  }

  /** Stops reading; returns the bytes that arrived after the last read, if any. */
  detach(): Buffer | undefined {
    this.socket.off('data', this.onData);
    this.socket.resume();
    const rest = this.chunks.length === 0 ? undefined : Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private deliver(): void {
    if (this.resolveRead === null || this.buffered < this.want) return;
    const resolve = this.resolveRead;
    this.resolveRead = this.rejectRead = null;
    resolve(this.take(this.want));
  }

  private take(n: number): Buffer {
    if (n === 0) return EMPTY;
    let out: Buffer;
    const first = this.chunks[0];
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const chunk = this.chunks[0];
        const k = Math.min(chunk.length, n - filled);
        chunk.copy(out, filled, 0, k);
        filled += k;
        if (k === chunk.length) this.chunks.shift();
        else this.chunks[0] = chunk.subarray(k);
      }
    }
    this.buffered -= n;
    if (this.buffered <= READER_BUFFERED_BYTES_MAX && this.socket.isPaused()) this.socket.resume();
    return out;
  }
}

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
}

const OPTION_NAMES: Record<number, string> = {
  [OPT_GO]: 'NBD_OPT_GO',
  [OPT_INFO]: 'NBD_OPT_INFO',
  [OPT_LIST]: 'NBD_OPT_LIST',
  [OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  [OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
};

async function readOptionReply(io: HandshakeReader, option: number): Promise<OptionReply> {
  const header = decodeOptionReplyHeader(await io.read(OPTION_REPLY_HEADER_BYTES));
  if (header === undefined) throw protocolError('bad option reply magic');
  const { option: echoed, type, length } = header;
  if (echoed !== option) throw protocolError(`reply to option ${echoed} while waiting for option ${option}`);
  if (length > OPTION_REPLY_BYTES_MAX) {
    throw protocolError(`option reply of ${length} bytes (at most ${OPTION_REPLY_BYTES_MAX})`);
  }
  return { type, data: length === 0 ? EMPTY : await io.read(length) };
}

function optionError(option: number, reply: OptionReply, exportName: string): MemfabricError {
  if (reply.type === REP_ERR_TLS_REQD) {
    return tlsError(
      `the nbd server requires TLS (it refused ${OPTION_NAMES[option] ?? `option ${option}`} in plain text); ` +
        'connect with tls: { psk } or tls: { ca }',
    );
  }
  return new NbdOptionError(
    OPTION_NAMES[option] ?? `option ${option}`,
    reply.type,
    reply.data.toString('utf8'),
    exportName,
  );
}

/** Reads the greeting and answers with our flags; resolves whether NO_ZEROES is in effect. */
export async function greet(io: HandshakeReader): Promise<boolean> {
  const magic = decodeGreetingMagic(await io.read(GREETING_MAGIC_BYTES));
  if (magic === 'not-nbd') throw protocolError('the peer is not an NBD server (no NBDMAGIC)');
  if (magic === 'oldstyle') {
    throw protocolError('the server speaks oldstyle negotiation, which is not supported');
  }
  if (magic === 'bad') throw protocolError('bad greeting magic');
  const flags = (await io.read(2)).readUInt16BE(0);
  if ((flags & FLAG_FIXED_NEWSTYLE) === 0) {
    throw protocolError('the server does not support fixed newstyle negotiation');
  }
  const noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
  io.write(encodeClientFlags(FLAG_C_FIXED_NEWSTYLE | (noZeroes ? FLAG_C_NO_ZEROES : 0)));
  return noZeroes;
}

/**
 * NBD_OPT_STARTTLS: resolves when the server acknowledged it (the caller then runs the TLS
 * handshake); any other answer fails with MF_TLS, never a fall back to plain text.
 */
export async function startTls(io: HandshakeReader): Promise<void> {
  io.write(encodeOption(OPT_STARTTLS));
  const reply = await readOptionReply(io, OPT_STARTTLS);
  if (reply.type === REP_ACK) {
    if (reply.data.length !== 0) throw protocolError('NBD_REP_ACK to NBD_OPT_STARTTLS carries data');
    return;
  }
  const detail = reply.data.length === 0 ? '' : `: ${reply.data.toString('utf8')}`;
  if (isOptionReplyError(reply.type)) {
    throw tlsError(
      `the nbd server refused NBD_OPT_STARTTLS (reply 0x${reply.type.toString(16)}${detail}); ` +
        'TLS is not enabled there (start the appliance with --tls on or --tls require)',
    );
  }
  throw protocolError(`unexpected reply ${reply.type} to NBD_OPT_STARTTLS`);
}

async function requestStructuredReplies(io: HandshakeReader): Promise<boolean> {
  io.write(encodeOption(OPT_STRUCTURED_REPLY));
  const reply = await readOptionReply(io, OPT_STRUCTURED_REPLY);
  if (reply.type === REP_ACK) return true;
  // ERR_UNSUP and friends: the server will use simple replies only.
  if (isOptionReplyError(reply.type)) return false;
  throw protocolError(`unexpected reply ${reply.type} to NBD_OPT_STRUCTURED_REPLY`);
}

async function setMetaContexts(
  io: HandshakeReader,
  exportName: string,
  queries: readonly string[],
): Promise<Array<{ name: string; id: number }>> {
  io.write(encodeOption(OPT_SET_META_CONTEXT, encodeMetaContextRequest(exportName, queries)));
  const contexts: Array<{ name: string; id: number }> = [];
  for (let i = 0; i <= OPTION_REPLIES_MAX; i++) {
    const reply = await readOptionReply(io, OPT_SET_META_CONTEXT);
    if (reply.type === REP_ACK) return contexts;
    // A refusal selects nothing: block status is then unavailable, everything else works.
    if (isOptionReplyError(reply.type)) return [];
    const context = reply.type === REP_META_CONTEXT ? decodeMetaContextReply(reply.data) : undefined;
    if (context === undefined) {
      throw protocolError(`unexpected reply ${reply.type} to NBD_OPT_SET_META_CONTEXT`);
    }
    const { id, name } = context;
    if (contexts.some((c) => c.id === id)) throw protocolError(`metadata context id ${id} given twice`);
    if (contexts.length >= META_CONTEXTS_MAX) {
      throw protocolError(`more than ${META_CONTEXTS_MAX} metadata contexts selected`);
    }
    contexts.push({ name, id });
  }
  throw protocolError(`more than ${OPTION_REPLIES_MAX} replies to NBD_OPT_SET_META_CONTEXT`);
}

interface InfoResult {
  details: ExportDetails | undefined;
  /** The server does not know NBD_OPT_GO / NBD_OPT_INFO. */
  unsupported: boolean;
}

/** NBD_OPT_INFO or NBD_OPT_GO: INFO replies until ACK (or an error). */
async function infoOrGo(io: HandshakeReader, option: number, exportName: string): Promise<InfoResult> {
  io.write(
    encodeOption(option, encodeInfoRequest(exportName, [INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION])),
  );
  let size = -1;
  let flags = 0;
  let canonicalName = exportName;
  let description = '';
  let blockSizes: NbdBlockSizes | undefined;
  for (let i = 0; i <= OPTION_REPLIES_MAX; i++) {
    const reply = await readOptionReply(io, option);
    const data = reply.data;
    if (reply.type === REP_ACK) {
      if (size < 0) throw protocolError(`${OPTION_NAMES[option]} succeeded without NBD_INFO_EXPORT`);
      return {
        details: { exportName, canonicalName, description, size, flags, blockSizes },
        unsupported: false,
      };
    }
    if (reply.type === REP_ERR_UNSUP) return { details: undefined, unsupported: true };
    if (isOptionReplyError(reply.type)) throw optionError(option, reply, exportName);
    const infoType = reply.type === REP_INFO ? decodeInfoType(data) : undefined;
    if (infoType === undefined) {
      throw protocolError(`unexpected reply ${reply.type} to ${OPTION_NAMES[option]}`);
    }
    switch (infoType) {
      case INFO_EXPORT: {
        const info = decodeInfoExport(data);
        if (info === undefined) {
          throw protocolError(`NBD_INFO_EXPORT of ${data.length} bytes (must be ${INFO_EXPORT_BYTES})`);
        }
        size = info.size;
        flags = info.transmissionFlags;
        if (size > Number.MAX_SAFE_INTEGER) throw protocolError(`export size ${size} is beyond 2^53`);
        break;
      }
      case INFO_NAME:
        canonicalName = decodeInfoString(data);
        break;
      case INFO_DESCRIPTION:
        description = decodeInfoString(data);
        break;
      case INFO_BLOCK_SIZE: {
        const sizes = decodeInfoBlockSize(data);
        if (sizes === undefined) {
          throw protocolError(
            `NBD_INFO_BLOCK_SIZE of ${data.length} bytes (must be ${INFO_BLOCK_SIZE_BYTES})`,
          );
        }
        blockSizes = checkBlockSizes(sizes.minimum, sizes.preferred, sizes.maximum);
        break;
      }
      default:
        // "The client MUST ignore information replies it does not understand."
        break;
    }
  }
  throw protocolError(`more than ${OPTION_REPLIES_MAX} replies to ${OPTION_NAMES[option]}`);
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function checkBlockSizes(minimum: number, preferred: number, maximum: number): NbdBlockSizes {
  // The spec's rules; a server breaking them gets a clear error rather than misaligned I/O.
  if (!isPowerOfTwo(minimum) || minimum > 65536) {
    throw protocolError(`minimum block size ${minimum} is not a power of two up to 65536`);
  }
  if (!isPowerOfTwo(preferred) || preferred < minimum) {
    throw protocolError(`preferred block size ${preferred} is not a power of two >= the minimum ${minimum}`);
  }
  if (maximum < minimum) throw protocolError(`maximum payload ${maximum} is below the minimum block size`);
  return { minimum, preferred, maximum };
}

async function exportNameFallback(
  io: HandshakeReader,
  exportName: string,
  noZeroes: boolean,
): Promise<ExportDetails> {
  io.write(encodeOption(OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8')));
  let reply: Buffer;
  try {
    reply = await io.read(exportNameReplyBytes(noZeroes));
  } catch (err) {
    // NBD_OPT_EXPORT_NAME has no error reply: a server that does not know the export hangs up.
    throw connectionClosed(
      `nbd server closed the connection after NBD_OPT_EXPORT_NAME '${exportName}' (unknown export?)`,
      err,
    );
  }
  const { size, transmissionFlags } = decodeExportNameReply(reply);
  if (size > Number.MAX_SAFE_INTEGER) throw protocolError(`export size ${size} is beyond 2^53`);
  return {
    exportName,
    canonicalName: exportName,
    description: '',
    size,
    flags: transmissionFlags,
    blockSizes: undefined,
  };
}

/** The full handshake after the greeting (and STARTTLS) up to transmission. */
export async function negotiate(
  io: HandshakeReader,
  options: NegotiateOptions,
  noZeroes: boolean,
): Promise<Negotiated> {
  const structured = options.structuredReplies ? await requestStructuredReplies(io) : false;
  const contexts =
    structured && options.metaContexts.length > 0
      ? await setMetaContexts(io, options.exportName, options.metaContexts)
      : [];
  const go = await infoOrGo(io, OPT_GO, options.exportName);
  const details = go.details ?? (await exportNameFallback(io, options.exportName, noZeroes));
  return { ...details, flags: normalizeFlags(details.flags), structured, contexts, usedGo: !go.unsupported };
}

/** Without HAS_FLAGS the other bits mean nothing. */
function normalizeFlags(flags: number): number {
  return (flags & FLAG_HAS_FLAGS) === 0 ? 0 : flags;
}

/** Sends NBD_OPT_ABORT; the caller then closes the socket (the reply, if any, is not awaited). */
export function abort(io: HandshakeReader): void {
  io.write(encodeOption(OPT_ABORT));
}

export async function listExports(
  io: HandshakeReader,
): Promise<Array<{ name: string; description: string }>> {
  io.write(encodeOption(OPT_LIST));
  const exports: Array<{ name: string; description: string }> = [];
  for (let i = 0; i <= LIST_EXPORTS_MAX; i++) {
    const reply = await readOptionReply(io, OPT_LIST);
    if (reply.type === REP_ACK) {
      abort(io);
      return exports;
    }
    if (isOptionReplyError(reply.type)) throw optionError(OPT_LIST, reply, '');
    if (reply.type !== REP_SERVER || reply.data.length < 4) {
      throw protocolError(`unexpected reply ${reply.type} to NBD_OPT_LIST`);
    }
    const entry = decodeServerReply(reply.data);
    if (entry === undefined) throw protocolError('NBD_REP_SERVER name longer than the reply');
    exports.push(entry);
  }
  throw protocolError(`more than ${LIST_EXPORTS_MAX} exports in reply to NBD_OPT_LIST`);
}

export async function exportInfo(io: HandshakeReader, exportName: string): Promise<ExportDetails> {
  const info = await infoOrGo(io, OPT_INFO, exportName);
  if (info.details === undefined) {
    throw new NbdOptionError(
      'NBD_OPT_INFO',
      REP_ERR_UNSUP,
      'the server does not support NBD_OPT_INFO',
      exportName,
    );
  }
  abort(io);
  return { ...info.details, flags: normalizeFlags(info.details.flags) };
}
