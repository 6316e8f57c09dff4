/**
 * A scripted NBD server for the client's fault tests: it misbehaves on purpose (bad magics,
 * unknown cookies, garbage, ESHUTDOWN, hang-ups mid-request, no NBD_OPT_GO), which no real
 * server does on demand. The handshake is the minimum the client needs; in transmission each
 * request (header and any WRITE payload) is handed to the test's `onRequest`, which writes
 * whatever reply it likes with the encoders below. A memory array backs `serveMemory`.
 */
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import * as C from '../../src/nbd/protocol/constants.js';
import { encodeOptionReply } from '../../src/nbd/protocol/handshake.js';
import { readU64, writeU64 } from '../../src/nbd/protocol/integers.js';

export interface FakeRequest {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
  payload: Buffer | undefined;
}

export interface FakeOptions {
  size?: number;
  /** Answer NBD_OPT_GO with ERR_UNSUP (an old server): the client must use EXPORT_NAME. */
  goUnsupported?: boolean;
  /** Refuse NBD_OPT_STRUCTURED_REPLY. */
  noStructured?: boolean;
  /** Never answer the handshake (for connect timeouts). */
  silent?: boolean;
  onRequest?: (req: FakeRequest, socket: Socket, fake: FakeServer) => void;
}

export class FakeServer {
  readonly server: Server;
  readonly sockets = new Set<Socket>();
  readonly memory: Buffer;
  port = 0;
  /** Options the server saw, in order. */
  readonly options: number[] = [];
  /** NBD_CMD_DISC requests received. */
  disconnects = 0;

  constructor(readonly config: FakeOptions = {}) {
    this.memory = Buffer.alloc(config.size ?? 1024 * 1024);
    this.server = createServer((socket) => this.accept(socket));
  }

  static async start(config: FakeOptions = {}): Promise<FakeServer> {
    const fake = new FakeServer(config);
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve));
    const address = fake.server.address();
    fake.port = typeof address === 'object' && address !== null ? address.port : 0;
    return fake;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Answers a request like a correct server over `this.memory` (simple replies, errors as EINVAL). */
  serveMemory(req: FakeRequest, socket: Socket, structured = true): void {
    const end = req.offset + req.length;
    if (req.type !== C.CMD_FLUSH && end > this.memory.length) {
      socket.write(simpleReply(C.EINVAL, req));
      return;
    }
    switch (req.type) {
      case C.CMD_READ:
        if (structured) {
          socket.write(chunkHeader(C.REPLY_FLAG_DONE, C.REPLY_TYPE_OFFSET_DATA, req, 8 + req.length));
          socket.write(u64(req.offset));
        } else {
          socket.write(simpleReply(0, req));
        }
        socket.write(this.memory.subarray(req.offset, end));
        return;
      case C.CMD_WRITE:
        req.payload?.copy(this.memory, req.offset);
        break;
      case C.CMD_WRITE_ZEROES:
      case C.CMD_TRIM:
        this.memory.fill(0, req.offset, end);
        break;
    }
    socket.write(simpleReply(0, req));
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    if (this.config.silent) return;
    const greeting = Buffer.alloc(18);
    greeting.writeUInt32BE(C.NBDMAGIC_HI, 0);
    greeting.writeUInt32BE(C.NBDMAGIC_LO, 4);
    greeting.writeUInt32BE(C.IHAVEOPT_HI, 8);
    greeting.writeUInt32BE(C.IHAVEOPT_LO, 12);
    greeting.writeUInt16BE(C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES, 16);
    socket.write(greeting);
    let buffered = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        if (phase === 'flags') {
          if (buffered.length < 4) return;
          buffered = buffered.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buffered.length < 16) return;
          const option = buffered.readUInt32BE(8);
          const length = buffered.readUInt32BE(12);
          if (buffered.length < 16 + length) return;
          const data = buffered.subarray(16, 16 + length);
          buffered = buffered.subarray(16 + length);
          this.options.push(option);
          if (this.option(socket, option, data)) phase = 'transmission';
        } else {
          if (buffered.length < C.REQUEST_HEADER_BYTES) return;
          const type = buffered.readUInt16BE(6);
          const length = buffered.readUInt32BE(24);
          const payloadBytes = type === C.CMD_WRITE ? length : 0;
          if (buffered.length < C.REQUEST_HEADER_BYTES + payloadBytes) return;
          const req: FakeRequest = {
            flags: buffered.readUInt16BE(4),
            type,
            cookieHi: buffered.readUInt32BE(8),
            cookieLo: buffered.readUInt32BE(12),
            offset: readU64(buffered, 16),
            length,
            payload:
              payloadBytes > 0
                ? Buffer.from(buffered.subarray(C.REQUEST_HEADER_BYTES, C.REQUEST_HEADER_BYTES + length))
                : undefined,
          };
          buffered = buffered.subarray(C.REQUEST_HEADER_BYTES + payloadBytes);
          if (type === C.CMD_DISC) {
            this.disconnects++;
            socket.end();
            return;
          }
          (this.config.onRequest ?? ((r, s, f) => f.serveMemory(r, s)))(req, socket, this);
        }
      }
    });
  }

  /** Answers one option; true when transmission begins. */
  private option(socket: Socket, option: number, data: Buffer): boolean {
    const size = this.memory.length;
    const flags = C.FLAG_HAS_FLAGS | C.FLAG_SEND_FLUSH | C.FLAG_SEND_TRIM | C.FLAG_SEND_WRITE_ZEROES;
    switch (option) {
      case C.OPT_STRUCTURED_REPLY:
        socket.write(encodeOptionReply(option, this.config.noStructured ? C.REP_ERR_UNSUP : C.REP_ACK));
        return false;
      case C.OPT_SET_META_CONTEXT: {
        const payload = Buffer.alloc(4 + 15);
        payload.writeUInt32BE(7, 0);
        payload.write('base:allocation', 4);
        socket.write(encodeOptionReply(option, C.REP_META_CONTEXT, payload));
        socket.write(encodeOptionReply(option, C.REP_ACK));
        return false;
      }
      case C.OPT_GO: {
        if (this.config.goUnsupported) {
          socket.write(encodeOptionReply(option, C.REP_ERR_UNSUP, 'no GO here'));
          return false;
        }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(C.INFO_EXPORT, 0);
        writeU64(info, 2, size);
        info.writeUInt16BE(flags, 10);
        socket.write(encodeOptionReply(option, C.REP_INFO, info));
        socket.write(encodeOptionReply(option, C.REP_ACK));
        return true;
      }
      case C.OPT_EXPORT_NAME: {
        const reply = Buffer.alloc(10);
        writeU64(reply, 0, size);
        reply.writeUInt16BE(flags, 8);
        socket.write(reply);
        void data;
        return true;
      }
      case C.OPT_ABORT:
        socket.write(encodeOptionReply(option, C.REP_ACK));
        socket.end();
        return false;
      default:
        socket.write(encodeOptionReply(option, C.REP_ERR_UNSUP));
        return false;
    }
  }
}

export function u64(value: number): Buffer {
  const buf = Buffer.alloc(8);
  writeU64(buf, 0, value);
  return buf;
}

export function simpleReply(errno: number, req: { cookieHi: number; cookieLo: number }): Buffer {
  const buf = Buffer.alloc(16);
  buf.writeUInt32BE(C.SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(errno, 4);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  return buf;
}

export function chunkHeader(
  flags: number,
  type: number,
  req: { cookieHi: number; cookieLo: number },
  length: number,
): Buffer {
  const buf = Buffer.alloc(20);
  buf.writeUInt32BE(C.STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  buf.writeUInt32BE(length, 16);
  return buf;
}
