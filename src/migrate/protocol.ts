/**
 * The pre-copy migration protocol over a MessageConnection (message types 1–31).
 *
 *   source                                   destination
 *   HELLO {protocol, mode, kind, size, pageSize, epoch, id}  ──▶
 *                                      ◀──   WELCOME {id}   (the target exists: a space, or a heap image)
 *   PAGES (page batch) …                ──▶   applied in order
 *   SYNC {seq}                          ──▶
 *                                      ◀──   SYNCED {seq, bytes, ms}   (everything before it applied;
 *                                            bytes and ms: what arrived since the last SYNC, and over how long)
 *   … rounds …, then the blackout's PAGES and a SYNC
 *   HANDOVER {finalEpoch}               ──▶   continues the epoch
 *                                      ◀──   APPLIED {epoch}  (it holds everything and is ready to own it)
 *   COMMIT {}                           ──▶   owns the state: space()/heap() resolves
 *
 * Who decides. The source does: it marks its space moved and sends COMMIT in one synchronous
 * step, and only after APPLIED. A destination that loses the connection before COMMIT discards
 * its copy (the source either continues, or — had COMMIT been lost on the network with both
 * processes alive — is moved and still reads as it was, so nothing is lost and nothing is
 * written on two sides). A process killed after that step has already handed COMMIT to its
 * kernel, which delivers it.
 *
 * Either side may end with the connection's ERROR message (255) carrying a code and message.
 */
import { ErrorCodes, MemfabricError } from '../errors.js';
import { protocolError } from './wire.js';

export const PROTOCOL_NAME = 'memfabric-migration';
export const PROTOCOL_VERSION = 1;

export const MSG_HELLO = 1;
export const MSG_WELCOME = 2;
export const MSG_PAGES = 3;
export const MSG_SYNC = 4;
export const MSG_SYNCED = 5;
export const MSG_HANDOVER = 6;
export const MSG_APPLIED = 7;
export const MSG_COMMIT = 8;

export type MigrationMode = 'precopy' | 'postcopy';
export type MigrationKind = 'space' | 'heap';

export interface Hello {
  protocol: string;
  version: number;
  mode: MigrationMode;
  kind: MigrationKind;
  size: number;
  pageSize: number;
  /** The source space's epoch when the migration began. */
  epoch: number;
  /** Names this migration in both processes' logs and errors. */
  id: string;
}

/** Checks a received HELLO; anything else is a protocol error. */
export function checkHello(value: Partial<Hello>): Hello {
  if (value.protocol !== PROTOCOL_NAME) throw protocolError('the first message is not a migration HELLO');
  if (value.version !== PROTOCOL_VERSION) {
    throw protocolError(
      `it speaks migration protocol ${String(value.version)}, this side ${PROTOCOL_VERSION}`,
    );
  }
  if (value.mode !== 'precopy' && value.mode !== 'postcopy')
    throw protocolError(`unknown migration mode ${String(value.mode)}`);
  if (value.kind !== 'space' && value.kind !== 'heap')
    throw protocolError(`unknown migration kind ${String(value.kind)}`);
  const pageSize = value.pageSize;
  if (
    !Number.isInteger(pageSize) ||
    pageSize! < 512 ||
    pageSize! > 65536 ||
    (pageSize! & (pageSize! - 1)) !== 0
  ) {
    throw protocolError(`page size ${String(pageSize)} is not a power of two from 512 to 65536`);
  }
  if (!Number.isSafeInteger(value.size) || value.size! <= 0 || value.size! > 2 ** 52)
    throw protocolError(`space size ${String(value.size)} is impossible`);
  if (!Number.isSafeInteger(value.epoch) || value.epoch! < 1)
    throw protocolError(`epoch ${String(value.epoch)} is impossible`);
  if (typeof value.id !== 'string' || value.id.length === 0 || value.id.length > 100)
    throw protocolError('the migration id is missing');
  return value as Hello;
}

/** The peer ended the connection before the migration finished. */
export function connectionLost(cause: MemfabricError | undefined, what: string): MemfabricError {
  if (cause && cause.code !== ErrorCodes.CONNECTION_CLOSED) return cause;
  return new MemfabricError(
    ErrorCodes.CONNECTION_CLOSED,
    `${what}: ${cause?.message ?? 'the connection closed'}`,
    {
      cause,
    },
  );
}
