/**
 * A message connection: a socket carrying wire.ts frames, for every migration protocol
 * (pre-copy, post-copy, standby). It owns the socket's lifetime and turns every way it can end
 * (the peer closing, a reset, a malformed frame, our own close) into one `closed` promise and
 * one error, so the protocols above never see a raw socket event.
 *
 * Message types are one byte, split between the protocols so a stray message is always
 * recognised as foreign: 1–31 migration (pre-copy), 32–63 post-copy, 64–95 standby, 255 error.
 */
import { connect as connectTcp, type Socket } from 'node:net';
import { once } from 'node:events';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { FrameReader, decodeJson, encodeJsonFrame } from './wire.js';

/** The peer reports a failure and closes: payload `{ code, message }`. */
export const MSG_ERROR = 255;

/** Receives one message; `payload` is a view valid only during the call (copy what must outlive it). */
export type MessageHandler = (type: number, payload: Buffer) => void;

export interface ConnectOptions {
  host: string;
  port: number;
  /** Give up connecting after this long (default 10 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export const CONNECT_TIMEOUT_DEFAULT_MS = 10_000;

export class MessageConnection {
  /** Resolves when the connection has ended, whatever the reason (never rejects). */
  readonly closed: Promise<void>;
  private readonly reader: FrameReader;
  private handler: MessageHandler | undefined;
  private queued: { type: number; payload: Buffer }[] = [];
  private failure: MemfabricError | undefined;
  private resolveClosed!: () => void;
  private ended = false;

  constructor(readonly socket: Socket) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    socket.setNoDelay(true);
    this.reader = new FrameReader((type, payload) => this.deliver(type, payload));
    socket.on('data', (chunk: Buffer) => {
      try {
        this.reader.push(chunk);
      } catch (error) {
        this.abort(error as MemfabricError);
      }
    });
    socket.on('error', (error) =>
      this.fail(
        new MemfabricError(
          ErrorCodes.CONNECTION_CLOSED,
          `migration peer connection failed: ${error.message}`,
        ),
      ),
    );
    socket.on('close', () => {
      this.fail(new MemfabricError(ErrorCodes.CONNECTION_CLOSED, 'the migration peer closed the connection'));
      this.ended = true;
      this.resolveClosed();
    });
  }

  /** Opens a TCP connection to a peer. */
  static async connect(options: ConnectOptions): Promise<MessageConnection> {
    const socket = connectTcp({ host: options.host, port: options.port });
    const timeoutMs = options.timeoutMs ?? CONNECT_TIMEOUT_DEFAULT_MS;
    const timer = setTimeout(
      () =>
        socket.destroy(
          new MemfabricError(
            ErrorCodes.TIMEOUT,
            `no connection to ${options.host}:${options.port} within ${timeoutMs} ms`,
          ),
        ),
      timeoutMs,
    );
    const abort = (): void => {
      socket.destroy(new MemfabricError(ErrorCodes.CONNECTION_CLOSED, 'connecting was cancelled'));
    };
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      await once(socket, 'connect');
    } catch (error) {
      socket.destroy();
      if (error instanceof MemfabricError) throw error;
      throw new MemfabricError(
        ErrorCodes.CONNECTION_CLOSED,
        `cannot reach the migration peer at ${options.host}:${options.port}: ${(error as Error).message}; check that it listens there`,
      );
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', abort);
    }
    return new MessageConnection(socket);
  }

  /** Why the connection ended, once it has (undefined while it is open). */
  get error(): MemfabricError | undefined {
    return this.failure;
  }

  get isOpen(): boolean {
    return this.failure === undefined;
  }

  /**
   * Sets the receiver of every message. Messages that arrived before a handler was set are
   * delivered to it at once, in order, so nothing sent right after the handshake is dropped.
   */
  onMessage(handler: MessageHandler): void {
    this.handler = handler;
    const queued = this.queued;
    this.queued = [];
    for (const { type, payload } of queued) {
      if (this.handler !== handler) {
        this.queued.push({ type, payload });
        continue;
      }
      this.dispatch(type, payload);
    }
  }

  /**
   * Sends one frame. Resolves once the socket has handed it to the kernel (its write callback:
   * only then may the buffer be reused — a frame partly written stays referenced by the socket
   * even when write() returned true), so a fast sender is paced by the network instead of
   * queueing without bound. Rejects once the connection has ended.
   */
  async send(frame: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    const written = new Promise<void>((resolve) => {
      // Called on success and on failure (a destroyed socket calls back with an error); the
      // failure itself is reported through `this.failure`.
      this.socket.write(frame, () => resolve());
    });
    await Promise.race([written, this.closed]);
    if (this.failure) throw this.failure;
  }

  /** Sends one frame without waiting (small control messages); errors surface through `closed`. */
  post(frame: Buffer): void {
    if (this.failure) return;
    this.socket.write(frame);
  }

  /** Bytes queued in the socket not yet handed to the kernel. */
  get backlog(): number {
    return this.socket.writableLength;
  }

  /** Tells the peer why we stop (an error message), then closes. */
  abort(error: MemfabricError): void {
    if (this.failure === undefined && this.socket.writable) {
      this.socket.end(encodeJsonFrame(MSG_ERROR, { code: error.code, message: error.message }));
    } else {
      this.socket.end();
    }
    this.fail(error);
    // A peer that never reads must not keep the socket open.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  /** Ends the connection after what was sent has been flushed. */
  async close(): Promise<void> {
    if (!this.ended) {
      this.socket.end();
      const timer = setTimeout(() => this.socket.destroy(), 1000);
      timer.unref();
      await this.closed;
      clearTimeout(timer);
    }
  }

  /** Ends the connection at once. */
  destroy(): void {
    this.fail(new MemfabricError(ErrorCodes.CONNECTION_CLOSED, 'the migration connection was closed'));
    this.socket.destroy();
  }

  private deliver(type: number, payload: Buffer): void {
    if (type === MSG_ERROR) {
      const { code, message } = decodeJson<{ code?: unknown; message?: unknown }>(payload);
      const known = Object.values(ErrorCodes).includes(code as never)
        ? (code as string)
        : ErrorCodes.INTERNAL;
      this.fail(new MemfabricError(known as never, `the migration peer failed: ${String(message)}`));
      this.socket.destroy();
      return;
    }
    if (this.handler === undefined) {
      // Kept until a handler is set: copy, the payload is a view of a reused chunk.
      this.queued.push({ type, payload: Buffer.from(payload) });
      return;
    }
    this.dispatch(type, payload);
  }

  private dispatch(type: number, payload: Buffer): void {
    try {
      this.handler!(type, payload);
    } catch (error) {
      const failure =
        error instanceof MemfabricError
          ? error
          : new MemfabricError(
              ErrorCodes.INTERNAL,
              `handling a migration message failed: ${(error as Error).message}`,
            );
      this.abort(failure);
    }
  }

  private fail(error: MemfabricError): void {
    if (this.failure === undefined) this.failure = error;
  }
}
