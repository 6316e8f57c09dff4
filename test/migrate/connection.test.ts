/**
 * The message connection over a real loopback socket: frames arrive in order (also those sent
 * before the receiver set its handler), a peer's error message ends the connection with the
 * peer's code, and garbage on the socket ends it with a protocol error instead of a crash.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { MessageConnection } from '../../src/migrate/connection.js';
import { encodeFrame } from '../../src/migrate/wire.js';
import { ErrorCodes, MemfabricError } from '../../src/index.js';

async function pair(): Promise<{ server: Server; a: MessageConnection; b: Promise<Socket> }> {
  const server = createServer();
  const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const a = await MessageConnection.connect({ host: '127.0.0.1', port });
  return { server, a, b: accepted };
}

test('messages arrive in order, including those sent before the handler was set', async () => {
  const { server, a, b } = await pair();
  const peer = new MessageConnection(await b);
  for (let i = 0; i < 50; i++) await a.send(encodeFrame(1, Buffer.alloc(i * 1000, i)));
  await new Promise((resolve) => setTimeout(resolve, 0));
  const got: number[] = [];
  const all = new Promise<void>((resolve) =>
    peer.onMessage((type, payload) => {
      assert.equal(type, 1);
      assert.ok(payload.every((byte) => byte === got.length % 256));
      assert.equal(payload.length, got.length * 1000);
      got.push(got.length);
      if (got.length === 50) resolve();
    }),
  );
  await all;
  await a.close();
  await peer.closed;
  server.close();
});

test("a peer's error message ends the connection with the peer's code", async () => {
  const { server, a, b } = await pair();
  const peer = new MessageConnection(await b);
  peer.abort(new MemfabricError(ErrorCodes.POOL_EXHAUSTED, 'the destination has no room'));
  await a.closed;
  assert.equal(a.error?.code, ErrorCodes.POOL_EXHAUSTED);
  assert.match(a.error!.message, /no room/);
  await assert.rejects(
    a.send(encodeFrame(1)),
    (error: MemfabricError) => error.code === ErrorCodes.POOL_EXHAUSTED,
  );
  server.close();
});

test('garbage on the socket ends the connection with a protocol error', async () => {
  const server = createServer();
  const accepted = once(server, 'connection').then(([socket]) => new MessageConnection(socket as Socket));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const raw = connect({ host: '127.0.0.1', port });
  await once(raw, 'connect');
  const conn = await accepted;
  let delivered = 0;
  conn.onMessage(() => delivered++);
  raw.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await conn.closed;
  assert.equal(conn.error?.code, ErrorCodes.MIGRATION_PROTOCOL);
  assert.equal(delivered, 0);
  raw.destroy();
  server.close();
});

test('connecting where nothing listens says so', async () => {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  await assert.rejects(
    MessageConnection.connect({ host: '127.0.0.1', port }),
    (error: MemfabricError) =>
      error.code === ErrorCodes.CONNECTION_CLOSED && /check that it listens there/.test(error.message),
  );
});
