/**
 * Server side of the fixed newstyle handshake, apart from transmission.
 *
 *   S: NBDMAGIC IHAVEOPT flags(16)          greeting(), sent on connect
 *   C: client flags(32)                     CLIENT_FLAGS
 *   C: IHAVEOPT option(32) length(32)       OPTION_HEADER
 *   C: data[length]                         OPTION_DATA (or OPTION_SKIP when too big)
 *   S: option replies ...                   then back to OPTION_HEADER
 *
 * until NBD_OPT_GO is acknowledged or NBD_OPT_EXPORT_NAME is answered, when `ready` hands the
 * negotiated export (and any bytes the client already sent past it) to the transmission phase.
 *
 * `feed` takes arbitrary chunks. It copies only frames split across chunks, into a 16-byte
 * header scratch or one buffer of exactly the option's length, so a client trickling bytes
 * costs linear time. Every length is bounded: option data above OPTION_DATA_BYTES_MAX is skipped
 * and answered NBD_REP_ERR_TOO_BIG, above OPTION_SKIP_BYTES_MAX it drops the connection; at
 * most HANDSHAKE_OPTIONS_MAX options are served, and at most LIST_OPTIONS_MAX LISTs (later ones
 * get NBD_REP_ERR_POLICY). Unknown options are skipped by their length and answered
 * NBD_REP_ERR_UNSUP, so the session stays in sync. When the connection reports itself congested
 * (the client is not reading our replies), `feed` stops after the current option and hands back
 * the bytes it did not parse; the session feeds them again once the socket drains.
 *
 * Meta contexts: only `base:allocation` exists. A SET_META_CONTEXT is remembered with the export
 * name it named; BLOCK_STATUS is allowed only if GO later names the same export.
 *
 * TLS (tls.ts): with mode `on` or `require`, NBD_OPT_STARTTLS is acknowledged and `startTls`
 * asks the connection to upgrade; the handshake waits (bytes arriving meanwhile are a violation:
 * nothing may follow STARTTLS in plain text) until `tlsEstablished` restarts option haggling
 * over TLS with every earlier choice forgotten. With `require`, every option before TLS but
 * STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD (EXPORT_NAME, which cannot be refused,
 * ends the session). The identity TLS authenticated is handed to every directory lookup, so a
 * tenant lists and opens only its own exports; others answer as unknown exports do.
 */
import type { NbdExport, NbdExportDirectory } from './export.js';
import {
  CLIENT_FLAGS_BYTES,
  CLIENT_FLAGS_KNOWN,
  FLAG_C_NO_ZEROES,
  FLAG_CAN_MULTI_CONN,
  FLAG_FIXED_NEWSTYLE,
  FLAG_HAS_FLAGS,
  FLAG_NO_ZEROES,
  FLAG_READ_ONLY,
  FLAG_SEND_CACHE,
  FLAG_SEND_DF,
  FLAG_SEND_FAST_ZERO,
  FLAG_SEND_FLUSH,
  FLAG_SEND_FUA,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
  INFO_DESCRIPTION,
  INFO_NAME,
  META_CONTEXT_BASE_ALLOCATION,
  META_CONTEXT_ID_BASE_ALLOCATION,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  OPTION_HEADER_BYTES,
  PAYLOAD_BYTES_MAX,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_POLICY,
  REP_ERR_TLS_REQD,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
} from '../protocol/constants.js';
import {
  HANDSHAKE_OPTIONS_MAX,
  LIST_OPTIONS_MAX,
  META_QUERIES_MAX,
  OPTION_DATA_BYTES_MAX,
  OPTION_SKIP_BYTES_MAX,
} from './limits.js';
import type { NbdTlsMode } from './tls.js';
import {
  decodeClientFlags,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeOptionReply,
} from '../protocol/handshake.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeString,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeServerReply,
  isRefusal,
} from '../protocol/option-data.js';

/** What the handshake agreed on; the transmission phase is built from it. */
export interface Negotiated {
  readonly exportName: string;
  readonly export: NbdExport;
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  readonly structuredReplies: boolean;
  /** base:allocation was selected for this export: BLOCK_STATUS is allowed. */
  readonly baseAllocation: boolean;
  /** The transmission flags sent to the client. */
  readonly transmissionFlags: number;
}

/** How the handshake talks to its connection. */
export interface HandshakeIo {
  write(buf: Buffer): void;
  /** Transmission begins; `rest` holds bytes the client sent after the final option. */
  ready(negotiated: Negotiated, rest: Buffer | undefined): void;
  /**
   * The handshake ended without an export: a soft disconnect (NBD_OPT_ABORT) when `violation`
   * is false, otherwise a protocol violation or policy that requires a hard disconnect.
   */
  close(reason: string, violation: boolean): void;
  /** Too many reply bytes are queued: stop parsing options until the socket drains. */
  congested?(): boolean;
  /** A LIST was refused for exceeding LIST_OPTIONS_MAX (for statistics). */
  listRefused?(): void;
  /**
   * NBD_REP_ACK to STARTTLS has been written: upgrade the connection, then call
   * `tlsEstablished` (or close the session if the TLS handshake fails).
   */
  startTls?(): void;
}

/** The TLS policy of one handshake; without it the server runs in NOTLS mode. */
export interface HandshakeTls {
  readonly mode: NbdTlsMode;
}

/** Transmission flags for an export. DF only makes sense (and is only legal) with structured replies. */
export function transmissionFlags(exp: NbdExport, structuredReplies: boolean): number {
  // Every connection reaches the same memory synchronously and flush covers all of it, so the
  // export is coherent across connections: CAN_MULTI_CONN.
  let flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_CACHE | FLAG_CAN_MULTI_CONN;
  if (structuredReplies) flags |= FLAG_SEND_DF;
  if (exp.readOnly) flags |= FLAG_READ_ONLY;
  // Zeroing memory is always faster than writing it, so FAST_ZERO never has to fail.
  else flags |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
  return flags;
}

/**
 * The preferred block size we advertise: the export's page size when the spec allows it (a
 * power of two, at least 512, at most the maximum payload), else the spec's default 4096.
 */
export function preferredBlockSize(exp: NbdExport): number {
  const size = exp.blockSize;
  const powerOfTwo = Number.isInteger(size) && size > 0 && (size & (size - 1)) === 0;
  return powerOfTwo && size >= 512 && size <= PAYLOAD_BYTES_MAX ? size : 4096;
}

export function greeting(): Buffer {
  return encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
}

const enum Phase {
  CLIENT_FLAGS,
  OPTION_HEADER,
  OPTION_DATA,
  OPTION_SKIP,
  /** STARTTLS acknowledged; waiting for the connection to finish the TLS handshake. */
  TLS_PENDING,
  DONE,
}

export class Handshake {
  private phase = Phase.CLIENT_FLAGS;
  /** Collects a client-flags word or an option header split across chunks. */
  private readonly header = Buffer.allocUnsafe(OPTION_HEADER_BYTES);
  private headerFill = 0;
  /** The option being read, its declared data length, and its data as it arrives. */
  private option = 0;
  private dataLength = 0;
  private data: Buffer | undefined;
  private dataFill = 0;
  private skipRemaining = 0;

  private noZeroes = false;
  private structuredReplies = false;
  /** Export named by the last SET_META_CONTEXT that selected base:allocation, or null. */
  private metaExportName: string | null = null;
  private optionsSeen = 0;
  private listsSeen = 0;
  /** TLS is up on this connection. */
  private tlsActive = false;
  /** Who TLS authenticated; undefined: unrestricted (plain, anonymous TLS or an admin identity). */
  private identity: string | undefined;

  constructor(
    private readonly directory: NbdExportDirectory,
    private readonly io: HandshakeIo,
    private readonly tls: HandshakeTls = { mode: 'off' },
  ) {}

  /** Options received so far (the session watches it to time out idleness between options). */
  get options(): number {
    return this.optionsSeen;
  }

  /**
   * The TLS handshake finished: option haggling starts again over TLS (no new greeting, the
   * client flags stand) and everything negotiated in plain text is forgotten. `identity` scopes
   * every later directory lookup (undefined: no restriction).
   */
  tlsEstablished(identity: string | undefined): void {
    if (this.phase !== Phase.TLS_PENDING) return;
    this.tlsActive = true;
    this.identity = identity;
    this.structuredReplies = false;
    this.metaExportName = null;
    this.phase = Phase.OPTION_HEADER;
  }

  /** Whether the handshake has finished (successfully or not); later bytes are not ours. */
  get done(): boolean {
    return this.phase === Phase.DONE;
  }

  /**
   * Parses `chunk`. Returns the bytes left unparsed because the connection became congested
   * (feed them again later), or undefined when everything was consumed.
   */
  feed(chunk: Buffer): Buffer | undefined {
    let pos = 0;
    while (pos < chunk.length && this.phase !== Phase.DONE) {
      if (this.phase === Phase.OPTION_HEADER && this.headerFill === 0 && this.io.congested?.() === true) {
        return chunk.subarray(pos);
      }
      switch (this.phase) {
        case Phase.CLIENT_FLAGS: {
          pos = this.fillHeader(chunk, pos, CLIENT_FLAGS_BYTES);
          if (this.headerFill < CLIENT_FLAGS_BYTES) break;
          this.headerFill = 0;
          const flags = decodeClientFlags(this.header);
          if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
            // The spec: the server MUST drop the connection on client flags it does not know.
            this.fail(`unknown client flags 0x${flags.toString(16)}`);
            return undefined;
          }
          this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
          this.phase = Phase.OPTION_HEADER;
          break;
        }
        case Phase.OPTION_HEADER: {
          pos = this.fillHeader(chunk, pos, OPTION_HEADER_BYTES);
          if (this.headerFill < OPTION_HEADER_BYTES) break;
          this.headerFill = 0;
          const header = decodeOptionHeader(this.header);
          if (header === undefined) {
            this.fail('bad option magic');
            return undefined;
          }
          if (++this.optionsSeen > HANDSHAKE_OPTIONS_MAX) {
            this.fail(`more than ${HANDSHAKE_OPTIONS_MAX} options before NBD_OPT_GO`);
            return undefined;
          }
          this.option = header.option;
          this.dataLength = header.length;
          if (this.dataLength > OPTION_DATA_BYTES_MAX) {
            // EXPORT_NAME cannot be answered with an error, and a huge option is not worth reading.
            if (this.option === OPT_EXPORT_NAME || this.dataLength > OPTION_SKIP_BYTES_MAX) {
              this.fail(`option ${this.option} data of ${this.dataLength} bytes is too large`);
              return undefined;
            }
            this.skipRemaining = this.dataLength;
            this.phase = Phase.OPTION_SKIP;
            break;
          }
          if (this.dataLength === 0) {
            this.phase = Phase.OPTION_HEADER;
            this.handleOption(this.option, Buffer.alloc(0), chunk, pos);
            break;
          }
          if (chunk.length - pos >= this.dataLength) {
            // The whole option is in this chunk: hand out a view, copy nothing.
            const data = chunk.subarray(pos, pos + this.dataLength);
            pos += this.dataLength;
            this.handleOption(this.option, data, chunk, pos);
            break;
          }
          this.data = Buffer.allocUnsafe(this.dataLength);
          this.dataFill = 0;
          this.phase = Phase.OPTION_DATA;
          break;
        }
        case Phase.OPTION_DATA: {
          const data = this.data as Buffer;
          const n = Math.min(chunk.length - pos, this.dataLength - this.dataFill);
          chunk.copy(data, this.dataFill, pos, pos + n);
          this.dataFill += n;
          pos += n;
          if (this.dataFill < this.dataLength) break;
          this.data = undefined;
          this.phase = Phase.OPTION_HEADER;
          this.handleOption(this.option, data, chunk, pos);
          break;
        }
        case Phase.TLS_PENDING:
          // The client must wait for our ACK and then speak TLS, which the connection now
          // decrypts before feeding us; plain bytes here would be injected into the TLS session.
          this.fail('data after NBD_OPT_STARTTLS before the TLS handshake');
          return;
        case Phase.OPTION_SKIP: {
          const n = Math.min(chunk.length - pos, this.skipRemaining);
          this.skipRemaining -= n;
          pos += n;
          if (this.skipRemaining > 0) break;
          this.phase = Phase.OPTION_HEADER;
          this.reply(
            this.option,
            REP_ERR_TOO_BIG,
            `option data of ${this.dataLength} bytes exceeds ${OPTION_DATA_BYTES_MAX}`,
          );
          break;
        }
      }
    }
    return undefined;
  }

  /** Copies up to `want - headerFill` bytes into the header scratch; returns the new position. */
  private fillHeader(chunk: Buffer, pos: number, want: number): number {
    const n = Math.min(chunk.length - pos, want - this.headerFill);
    chunk.copy(this.header, this.headerFill, pos, pos + n);
    this.headerFill += n;
    return pos + n;
  }

  private fail(reason: string): void {
    this.phase = Phase.DONE;
    this.io.close(reason, true);
  }

  private reply(option: number, type: number, data?: Buffer | string): void {
    this.io.write(encodeOptionReply(option, type, data));
  }

  /** `chunk` and `pos` locate the bytes after this option, handed on if transmission starts. */
  private handleOption(option: number, data: Buffer, chunk: Buffer, pos: number): void {
    if (this.tls.mode === 'require' && !this.tlsActive) {
      if (option === OPT_EXPORT_NAME) {
        // The spec: EXPORT_NAME cannot be refused, so without TLS the session ends.
        this.fail('NBD_OPT_EXPORT_NAME before TLS while TLS is required');
        return;
      }
      if (option !== OPT_STARTTLS && option !== OPT_ABORT) {
        this.reply(option, REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
        return;
      }
    }
    switch (option) {
      case OPT_EXPORT_NAME:
        this.exportName(data, chunk, pos);
        return;
      case OPT_ABORT:
        // The client SHOULD NOT send data with ABORT; the server SHOULD ignore any it sends.
        this.reply(option, REP_ACK);
        this.phase = Phase.DONE;
        this.io.close('client aborted the handshake', false);
        return;
      case OPT_LIST:
        if (data.length !== 0) {
          this.reply(option, REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return;
        }
        if (++this.listsSeen > LIST_OPTIONS_MAX) {
          this.io.listRefused?.();
          this.reply(option, REP_ERR_POLICY, `at most ${LIST_OPTIONS_MAX} NBD_OPT_LIST per connection`);
          return;
        }
        for (const { name, description } of this.directory.list(this.identity)) {
          this.reply(option, REP_SERVER, encodeServerReply(name, description));
        }
        this.reply(option, REP_ACK);
        return;
      case OPT_STARTTLS:
        this.startTls(option, data, chunk, pos);
        return;
      case OPT_INFO:
      case OPT_GO:
        this.infoOrGo(option, data, chunk, pos);
        return;
      case OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.reply(option, REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          return;
        }
        // Repeating it is harmless, so it is acknowledged again rather than refused.
        this.structuredReplies = true;
        this.reply(option, REP_ACK);
        return;
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        this.metaContext(option, data);
        return;
      default:
        this.reply(option, REP_ERR_UNSUP, `option ${option} is not supported`);
        return;
    }
  }

  private startTls(option: number, data: Buffer, chunk: Buffer, pos: number): void {
    if (this.tls.mode === 'off' || this.io.startTls === undefined) {
      // NOTLS mode: the spec allows ERR_POLICY or ERR_UNSUP; UNSUP as before TLS existed here.
      this.reply(option, REP_ERR_UNSUP, 'TLS is not enabled on this server (start it with --tls on)');
      return;
    }
    if (this.tlsActive) {
      this.reply(option, REP_ERR_INVALID, 'TLS is already negotiated');
      return;
    }
    if (data.length !== 0) {
      this.reply(option, REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
      return;
    }
    if (pos < chunk.length) {
      // The client must wait for the ACK before it sends anything (the TLS ClientHello).
      this.fail('data after NBD_OPT_STARTTLS before its reply');
      return;
    }
    this.reply(option, REP_ACK);
    this.phase = Phase.TLS_PENDING;
    this.io.startTls();
  }

  private exportName(data: Buffer, chunk: Buffer, pos: number): void {
    const name = decodeString(data, 0, data.length);
    const exp = name === undefined ? undefined : this.directory.get(name, this.identity);
    if (name === undefined || exp === undefined) {
      // NBD_OPT_EXPORT_NAME has no error reply: the spec requires terminating the session.
      this.fail(
        name === undefined
          ? 'invalid export name'
          : (this.directory.whyUnavailable?.(name, this.identity) ?? `unknown export '${name}'`),
      );
      return;
    }
    const flags = transmissionFlags(exp, this.structuredReplies);
    this.io.write(encodeExportNameReply(exp.size, flags, this.noZeroes));
    this.finish(name, exp, flags, chunk, pos);
  }

  private infoOrGo(option: number, data: Buffer, chunk: Buffer, pos: number): void {
    const request = decodeInfoRequest(data);
    if (isRefusal(request)) {
      this.reply(option, request.refusal, request.message);
      return;
    }
    const name = request.name;
    // Another tenant's export answers exactly as one that does not exist.
    const exp = this.directory.get(name, this.identity);
    if (exp === undefined) {
      // "Not available": unknown, or (with a reason) existing but not serving yet: retry later.
      this.reply(
        option,
        REP_ERR_UNKNOWN,
        this.directory.whyUnavailable?.(name, this.identity) ?? `unknown export '${name}'`,
      );
      return;
    }
    // INFO_EXPORT and INFO_BLOCK_SIZE are always sent; unknown requests MUST be ignored.
    const wantName = request.infos.includes(INFO_NAME);
    const wantDescription = request.infos.includes(INFO_DESCRIPTION);
    const flags = transmissionFlags(exp, this.structuredReplies);
    this.reply(option, REP_INFO, encodeInfoExport(exp.size, flags));
    if (wantName) this.reply(option, REP_INFO, encodeInfoString(INFO_NAME, name));
    if (wantDescription && exp.description !== '') {
      this.reply(option, REP_INFO, encodeInfoString(INFO_DESCRIPTION, exp.description));
    }
    // Sent even when not asked: our constraints are the defaults, so a client may ignore them.
    this.reply(option, REP_INFO, encodeInfoBlockSize(1, preferredBlockSize(exp), PAYLOAD_BYTES_MAX));
    this.reply(option, REP_ACK);
    if (option === OPT_GO) this.finish(name, exp, flags, chunk, pos);
  }

  private metaContext(option: number, data: Buffer): void {
    const isSet = option === OPT_SET_META_CONTEXT;
    // SET replaces the selection even when it fails, so forget the old one first.
    if (isSet) this.metaExportName = null;
    if (isSet && !this.structuredReplies) {
      this.reply(option, REP_ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
      return;
    }
    // Every query is parsed before answering: a malformed one fails the whole option.
    const request = decodeMetaContextRequest(data, META_QUERIES_MAX);
    if (isRefusal(request)) {
      this.reply(option, request.refusal, request.message);
      return;
    }
    const name = request.name;
    let matches = request.queries.length === 0 && !isSet; // LIST with no query lists everything
    for (const query of request.queries) {
      // 'base:' is a wildcard for LIST and MUST be ignored by SET; other namespaces are ignored.
      if (query === META_CONTEXT_BASE_ALLOCATION || (!isSet && query === 'base:')) matches = true;
    }
    if (this.directory.get(name, this.identity) === undefined) {
      this.reply(option, REP_ERR_UNKNOWN, `unknown export '${name}'`);
      return;
    }
    if (matches) {
      // LIST: "the metadata context ID in these replies is reserved and SHOULD be set to zero".
      const id = isSet ? META_CONTEXT_ID_BASE_ALLOCATION : 0;
      this.reply(option, REP_META_CONTEXT, encodeMetaContextReply(id, META_CONTEXT_BASE_ALLOCATION));
      if (isSet) this.metaExportName = name;
    }
    this.reply(option, REP_ACK);
  }

  private finish(name: string, exp: NbdExport, flags: number, chunk: Buffer, pos: number): void {
    this.phase = Phase.DONE;
    const negotiated: Negotiated = {
      exportName: name,
      export: exp,
      structuredReplies: this.structuredReplies,
      baseAllocation: this.structuredReplies && this.metaExportName === name,
      transmissionFlags: flags,
    };
    this.io.ready(negotiated, pos < chunk.length ? chunk.subarray(pos) : undefined);
  }
}
