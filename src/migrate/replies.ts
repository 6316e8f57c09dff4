/**
 * Waiting for the peer's answers on a MessageConnection: `expect(type)` resolves with the next
 * message of that type (a copy of its payload). A message nobody expects, or the connection
 * ending, fails every wait — with the connection's own error, so a peer's ERROR message
 * surfaces with the peer's code.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import type { MessageConnection } from './connection.js';
import { protocolError } from './wire.js';

export class Replies {
  private readonly waiting = new Map<
    number,
    { resolve: (payload: Buffer) => void; reject: (error: unknown) => void }
  >();
  private failure: MemfabricError | undefined;

  constructor(
    private readonly connection: MessageConnection,
    private readonly lost: (cause: MemfabricError | undefined) => MemfabricError,
  ) {
    connection.onMessage((type, payload) => {
      const waiter = this.waiting.get(type);
      if (waiter === undefined) throw protocolError(`an unexpected message of type ${type} arrived`);
      this.waiting.delete(type);
      waiter.resolve(Buffer.from(payload));
    });
    void connection.closed.then(() => this.fail(this.lost(connection.error)));
  }

  expect(type: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiting.has(type)) {
      return Promise.reject(new MemfabricError(ErrorCodes.INTERNAL, `already waiting for message ${type}`));
    }
    return new Promise((resolve, reject) => this.waiting.set(type, { resolve, reject }));
  }

  /** The peer answered something impossible: fail the connection with a protocol error. */
  violation(message: string): MemfabricError {
    const error = protocolError(message);
    this.connection.abort(error);
    return error;
  }

  private fail(error: MemfabricError): void {
    this.failure ??= error;
    for (const waiter of this.waiting.values()) waiter.reject(this.failure);
    this.waiting.clear();
  }
}
