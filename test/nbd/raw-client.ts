/**
 * A deliberately dumb NBD client over a raw socket, for tests that need to see (or break)
 * the exact bytes. Every wait is bounded by a timeout so that a server bug fails a test
 * instead of hanging it.
 */
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import * as C from '../../src/nbd/protocol/constants.js';

export const WAIT_MS = 5_000;

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  /** 'simple' or 'structured' */
  kind: 'simple' | 'structured';
  error: number;
  cookie: bigint;
  flags: number;
  type: number;
  data: Buffer;
}

export class RawClient {
  /** Received bytes not yet read, as a list of chunks (concatenated only on demand). */
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private waiter: (() => void) | undefined;
  closed = false;
  readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bufferedBytes += chunk.length;
      this.waiter?.();
    });
    socket.on('error', () => {});
    this.closedPromise = new Promise((resolve) => {
      socket.on('close', () => {
        this.closed = true;
        this.waiter?.();
        resolve();
      });
    });
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
    });
  }

  /** Connects and completes the greeting; client flags default to FIXED_NEWSTYLE | NO_ZEROES. */
  static async handshake(port: number, clientFlags = 3): Promise<RawClient> {
    const c = await RawClient.connect(port);
    const greeting = await c.read(C.SERVER_GREETING_BYTES);
    if (greeting.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT') throw new Error('bad greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags);
    c.write(flags);
    return c;
  }

  /** Connects, negotiates structured replies and base:allocation (optionally), and GOes. */
  static async open(
    port: number,
    name = '',
    opts: { structured?: boolean; meta?: boolean } = {},
  ): Promise<{ client: RawClient; size: number; flags: number }> {
    const c = await RawClient.handshake(port);
    if (opts.structured ?? true) {
      c.sendOption(C.OPT_STRUCTURED_REPLY);
      const r = await c.readOptionReply();
      if (r.type !== C.REP_ACK) throw new Error('structured replies refused');
      if (opts.meta ?? true) {
        c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData(name, ['base:allocation']));
        await c.readOptionRepliesUntilFinal();
      }
    }
    const { size, flags } = await c.go(name);
    return { client: c, size, flags };
  }

  write(buf: Buffer | Uint8Array): void {
    this.socket.write(buf);
  }

  available(): number {
    return this.bufferedBytes;
  }

  /** Resolves with exactly `n` bytes, or rejects on close / timeout. */
  async read(n: number, timeoutMs = WAIT_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.bufferedBytes < n) {
      if (this.closed) throw new Error(`connection closed with ${this.bufferedBytes}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.bufferedBytes})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const head = this.chunks[0];
      const take = Math.min(head.length, n - filled);
      head.copy(out, filled, 0, take);
      filled += take;
      if (take === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(take);
    }
    this.bufferedBytes -= n;
    return out;
  }

  /** Resolves true when the server closes the connection within the timeout. */
  async waitClosed(timeoutMs = WAIT_MS): Promise<boolean> {
    if (this.closed) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const result = await Promise.race([this.closedPromise.then(() => true), timeout]);
    clearTimeout(timer);
    return result;
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ---- handshake ------------------------------------------------------------------------

  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const header = Buffer.alloc(16);
    header.writeUInt32BE(C.IHAVEOPT_HI, 0);
    header.writeUInt32BE(C.IHAVEOPT_LO, 4);
    header.writeUInt32BE(option >>> 0, 8);
    header.writeUInt32BE(declaredLength >>> 0, 12);
    this.write(Buffer.concat([header, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = await this.read(C.OPTION_REPLY_HEADER_BYTES);
    if (
      header.readUInt32BE(0) !== C.OPTION_REPLY_MAGIC_HI ||
      header.readUInt32BE(4) !== C.OPTION_REPLY_MAGIC_LO
    ) {
      throw new Error('bad option reply magic');
    }
    const length = header.readUInt32BE(16);
    const data = await this.read(length);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
  }

  /** Reads replies until ACK or an error reply; returns all of them (the final one last). */
  async readOptionRepliesUntilFinal(): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (let i = 0; i < 10_000; i++) {
      const r = await this.readOptionReply();
      replies.push(r);
      if (r.type === C.REP_ACK || r.type >= 0x80000000) return replies;
    }
    throw new Error('too many option replies');
  }

  async go(
    name: string,
    infos: number[] = [],
    option = C.OPT_GO,
  ): Promise<{ size: number; flags: number; replies: OptionReply[] }> {
    this.sendOption(option, infoData(name, infos));
    const replies = await this.readOptionRepliesUntilFinal();
    const last = replies[replies.length - 1];
    if (last.type !== C.REP_ACK) throw new Error(`GO failed with reply 0x${last.type.toString(16)}`);
    const exportInfo = replies.find((r) => r.type === C.REP_INFO && r.data.readUInt16BE(0) === C.INFO_EXPORT);
    if (exportInfo === undefined) throw new Error('no NBD_INFO_EXPORT');
    const size = Number(exportInfo.data.readBigUInt64BE(2));
    return { size, flags: exportInfo.data.readUInt16BE(10), replies };
  }

  // ---- transmission ---------------------------------------------------------------------

  request(
    type: number,
    offset: number,
    length: number,
    opts: { flags?: number; cookie?: bigint; payload?: Buffer } = {},
  ): void {
    this.write(encodeRequest(type, offset, length, opts.flags ?? 0, opts.cookie ?? 1n, opts.payload));
  }

  /** Reads one reply message; `readLength` is the payload of a successful simple READ reply. */
  async readReply(readLength = 0): Promise<Chunk> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === C.SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      const error = rest.readUInt32BE(0);
      const data = error === 0 && readLength > 0 ? await this.read(readLength) : Buffer.alloc(0);
      return { kind: 'simple', error, cookie: rest.readBigUInt64BE(4), flags: 0, type: 0, data };
    }
    if (magic === C.STRUCTURED_REPLY_MAGIC) {
      const rest = await this.read(16);
      const flags = rest.readUInt16BE(0);
      const type = rest.readUInt16BE(2);
      const data = await this.read(rest.readUInt32BE(12));
      const error = type & 0x8000 ? data.readUInt32BE(0) : 0;
      return { kind: 'structured', error, cookie: rest.readBigUInt64BE(4), flags, type, data };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }

  /** Issues a READ and returns the bytes (structured or simple), or throws with the errno. */
  async pread(offset: number, length: number, structured = true, cookie = 7n): Promise<Buffer> {
    this.request(C.CMD_READ, offset, length, { cookie });
    const r = await this.readReply(structured ? 0 : length);
    if (r.error !== 0) throw Object.assign(new Error(`read errno ${r.error}`), { errno: r.error });
    if (r.kind === 'simple') return r.data;
    if (r.type !== C.REPLY_TYPE_OFFSET_DATA || (r.flags & C.REPLY_FLAG_DONE) === 0) {
      throw new Error(`unexpected chunk type ${r.type} flags ${r.flags}`);
    }
    return r.data.subarray(8);
  }

  /** Issues a WRITE and resolves with the reply's errno. */
  async pwrite(offset: number, data: Buffer, flags = 0, cookie = 8n): Promise<number> {
    this.request(C.CMD_WRITE, offset, data.length, { flags, cookie, payload: data });
    return (await this.readReply()).error;
  }
}

export function encodeRequest(
  type: number,
  offset: number,
  length: number,
  flags = 0,
  cookie = 1n,
  payload?: Buffer,
  magic = C.REQUEST_MAGIC,
): Buffer {
  const header = Buffer.alloc(C.REQUEST_HEADER_BYTES);
  header.writeUInt32BE(magic >>> 0, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length >>> 0, 24);
  return payload === undefined ? header : Buffer.concat([header, payload]);
}

export function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const buf = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  buf.writeUInt32BE(n.length, 0);
  n.copy(buf, 4);
  buf.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((info, i) => buf.writeUInt16BE(info, 6 + n.length + 2 * i));
  return buf;
}

export function metaContextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length);
  parts.push(head, n);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  parts.push(count);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(qb.length);
    parts.push(len, qb);
  }
  return Buffer.concat(parts);
}

/** Decodes NBD_REPLY_TYPE_BLOCK_STATUS payload into [length, flags] pairs. */
export function decodeExtents(data: Buffer): { contextId: number; extents: Array<[number, number]> } {
  const extents: Array<[number, number]> = [];
  for (let at = 4; at + 8 <= data.length; at += 8)
    extents.push([data.readUInt32BE(at), data.readUInt32BE(at + 4)]);
  return { contextId: data.readUInt32BE(0), extents };
}
