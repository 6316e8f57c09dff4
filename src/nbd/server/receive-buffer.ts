/**
 * Accepted connections that read into one buffer shared by all of them.
 *
 * Why by hand: Node reads an accepted socket into a fresh 64 KiB buffer on every read, and
 * fresh memory is faulted in the first time it is touched. On this kind of machine (a
 * sandboxed kernel) the fault costs far more than the copy: receiving 1 MiB payloads and
 * copying them into warm memory ran at 39–214 MiB/s with Node's fresh buffers against
 * 477–660 MiB/s with one reused buffer (receiving and discarding without touching: 478 MiB/s),
 * and a WRITE's bytes are touched exactly once, when they are copied into their frames.
 * `net.Socket`'s `onread` option reads into a buffer of ours instead, but Node 20's net.Server
 * cannot pass it to the sockets it accepts. So the server accepts paused (nothing read yet) and
 * each accepted socket hands its handle to a new Socket made with `onread`. That leans on two
 * internals (`_handle`, and `_server` for the server's connection count): when they are not as
 * expected, the accepted socket is used as it is, with Node's own buffers.
 *
 * One buffer serves every connection of a server: a read fills it and its callback runs to
 * completion before the event loop reads any other socket. So a chunk handed on is valid only
 * during that call: whatever keeps bytes for later (a paused request parser, a congested
 * handshake) copies them.
 */
import { Socket } from 'node:net';

/** Large enough that a 1 MiB WRITE arrives in few reads; one per server, whatever the load. */
export const RECEIVE_BUFFER_BYTES = 1024 * 1024;

interface AcceptedInternals {
  _handle?: unknown;
  _server?: unknown;
  server?: unknown;
}

/**
 * A socket for `accepted` (accepted with pauseOnConnect, not read yet) that reads into `buffer`
 * and hands each chunk to `onChunk`, or undefined when it cannot be made: then `accepted` is
 * resumed and delivers 'data' events as usual.
 */
export function adoptWithReceiveBuffer(
  accepted: Socket,
  buffer: Buffer,
  onChunk: (chunk: Buffer) => void,
): Socket | undefined {
  const internals = accepted as unknown as AcceptedInternals;
  const handle = internals._handle;
  const server = internals._server;
  if (handle === null || typeof handle !== 'object' || server === undefined || server === null) {
    accepted.resume();
    return undefined;
  }
  // The new socket owns the handle and the server's connection slot: the accepted one is
  // dropped without being destroyed (destroying it would close the handle).
  internals._handle = null;
  internals._server = null;
  internals.server = null;
  const socket = new Socket({
    handle,
    readable: true,
    writable: true,
    onread: {
      buffer,
      callback: (bytes: number, buf: Uint8Array) => {
        onChunk((buf as Buffer).subarray(0, bytes));
      },
    },
  } as ConstructorParameters<typeof Socket>[0]);
  const adopted = socket as unknown as AcceptedInternals;
  adopted._server = server;
  adopted.server = server;
  return socket;
}
