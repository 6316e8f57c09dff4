/**
 * Disconnects, hangs and misbehaving servers. Real processes where a real server can do it:
 * nbdkit killed with SIGKILL mid-workload (every request in flight fails promptly with
 * MF_CONNECTION_CLOSED, reconnect() reaches the restarted server) and nbdkit stopped with
 * SIGSTOP (requests fail by the timeout with MF_TIMEOUT). A scripted server (client-fake-server.ts)
 * for what no real server does on demand: malformed replies, ESHUTDOWN, hang-ups, no NBD_OPT_GO.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import type { NbdRequestError } from '../../src/nbd/index.js';
import { NbdClient } from '../../src/nbd/index.js';
import * as C from '../../src/nbd/protocol/constants.js';
import { missing, stopProcess } from './helpers.js';
import { spawnNbdkitMemory } from './client-servers.js';
import { chunkHeader, FakeServer, simpleReply, u64 } from './client-fake-server.js';

const MiB = 1024 * 1024;
/**
 * How long requests may take to fail once the server is gone ("promptly"): a third of the 30 s
 * default request timeout, so a failure within it came from the closed connection, not from
 * timing out. (It was 2 s, and a CI-sized machine under load 15 took 2,010 ms.)
 */
const FAIL_MS_MAX = 10_000;

/** Settles every promise or fails the test after `ms` (no test waits forever). */
async function settleWithin<T>(promises: Promise<T>[], ms: number): Promise<PromiseSettledResult<T>[]> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`requests did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([Promise.allSettled(promises), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function codeOf(result: PromiseSettledResult<unknown>): string {
  if (result.status === 'fulfilled') return 'fulfilled';
  const reason: unknown = result.reason;
  return reason instanceof MemfabricError ? reason.code : `not a MemfabricError: ${String(reason)}`;
}

test(
  'nbdkit SIGKILLed mid-workload: in-flight requests fail promptly; reconnect() reaches the restarted server',
  { skip: missing('nbdkit') },
  async (t) => {
    let server = await spawnNbdkitMemory('256M');
    t.after(() => server.stop());
    const client = await NbdClient.connect({ port: server.port });
    t.after(() => client.destroy());
    const closeEvents: Array<MemfabricError | undefined> = [];
    client.on('close', (reason) => closeEvents.push(reason));
    await client.write(0, Buffer.alloc(4096, 1));

    const requests: Promise<unknown>[] = [];
    for (let i = 0; i < 128; i++) {
      requests.push(client.write(i * MiB, Buffer.alloc(MiB, i)));
      requests.push(client.read(i * MiB, 64 * 1024));
    }
    assert.ok(client.inFlight > 0);
    process.kill(server.pid, 'SIGKILL');
    const started = Date.now();
    const results = await settleWithin(requests, FAIL_MS_MAX);
    const elapsed = Date.now() - started;
    const codes = new Set(results.map(codeOf));
    codes.delete('fulfilled');
    assert.deepEqual([...codes], [ErrorCodes.CONNECTION_CLOSED], 'only CONNECTION_CLOSED failures');
    assert.ok(
      results.some((r) => r.status === 'rejected'),
      'some requests were in flight',
    );
    assert.ok(elapsed < FAIL_MS_MAX, `failed within ${elapsed} ms`);
    const reason = await client.closed;
    assert.equal(reason?.code, ErrorCodes.CONNECTION_CLOSED);
    assert.equal(closeEvents.length, 1);
    assert.equal(client.isOpen, false);
    await assert.rejects(client.read(0, 1), { code: ErrorCodes.CONNECTION_CLOSED });

    // The same port, a fresh server: reconnect() opens a new connection with the same options.
    const port = server.port;
    await server.stop();
    server = await spawnNbdkitMemory('256M', port);
    await client.reconnect();
    assert.ok(client.isOpen);
    assert.equal(client.size, 256 * MiB);
    await client.write(5, Buffer.from('again'));
    assert.equal((await client.read(5, 5)).toString(), 'again');
    assert.equal((await client.read(0, 1))[0], 0, 'the restarted server starts empty');
    await client.disconnect();
  },
);

test(
  'nbdkit SIGSTOPped: requests fail by the timeout with MF_TIMEOUT; it is reachable again after SIGCONT',
  { skip: missing('nbdkit') },
  async (t) => {
    const server = await spawnNbdkitMemory('64M');
    t.after(() => server.stop()); // SIGCONT then SIGKILL
    const timeoutMs = 300;
    const client = await NbdClient.connect({ port: server.port, requestTimeoutMs: timeoutMs });
    t.after(() => client.destroy());
    await client.write(0, Buffer.from('before'));
    await stopProcess(server.pid);
    t.after(() => {
      try {
        process.kill(server.pid, 'SIGCONT');
      } catch {
        // already gone
      }
    });
    const requests: Promise<unknown>[] = [
      client.read(0, 6),
      client.write(4096, Buffer.alloc(4096)),
      client.flush(),
    ];
    // Only a guard against a hang: what failed them is told by their codes and messages (the
    // timeout's), never by the clock, which a loaded machine stretches.
    const results = await settleWithin(requests, 100 * timeoutMs);
    // The flush waits for the write before it (a barrier), so it was never sent: MF_CONNECTION_CLOSED.
    assert.deepEqual(results.map(codeOf), [
      ErrorCodes.TIMEOUT,
      ErrorCodes.TIMEOUT,
      ErrorCodes.CONNECTION_CLOSED,
    ]);
    assert.match((results[2] as PromiseRejectedResult).reason.message, /not sent/);
    assert.equal((await client.closed)?.code, ErrorCodes.TIMEOUT);
    assert.match((results[0] as PromiseRejectedResult).reason.message, /no reply .* within 300 ms/);

    process.kill(server.pid, 'SIGCONT');
    await client.reconnect();
    assert.equal((await client.read(0, 6)).toString(), 'before');
    await client.disconnect();
  },
);

test('a malformed reply closes the connection with NBD_PROTOCOL and fails every request in flight', async (t) => {
  const cases: Array<[string, (req: { cookieHi: number; cookieLo: number; offset: number }) => Buffer[]]> = [
    ['bad magic', () => [Buffer.from('0123456789abcdef')]],
    ['unknown cookie', (req) => [simpleReply(0, { cookieHi: req.cookieHi + 1000, cookieLo: 1 })]],
    ['stale seq', (req) => [simpleReply(0, { cookieHi: req.cookieHi, cookieLo: req.cookieLo + 7 })]],
    [
      'data outside the read',
      (req) => [
        chunkHeader(C.REPLY_FLAG_DONE, C.REPLY_TYPE_OFFSET_DATA, req, 8 + 4),
        u64(req.offset + 4096),
        Buffer.alloc(4),
      ],
    ],
    ['success with too little data', (req) => [chunkHeader(C.REPLY_FLAG_DONE, C.REPLY_TYPE_NONE, req, 0)]],
    ['impossible chunk length', (req) => [chunkHeader(0, C.REPLY_TYPE_OFFSET_DATA, req, 0xffffffff)]],
    ['unknown chunk type', (req) => [chunkHeader(C.REPLY_FLAG_DONE, 42, req, 0)]],
    ['successful simple reply to a structured read', (req) => [simpleReply(0, req)]],
  ];
  for (const [name, reply] of cases) {
    let first = true;
    const fake = await FakeServer.start({
      onRequest: (req, socket) => {
        if (!first) return; // the other requests stay in flight
        first = false;
        for (const part of reply(req)) socket.write(part);
      },
    });
    const client = await NbdClient.connect({ port: fake.port });
    const requests: Promise<unknown>[] = [
      client.read(0, 16),
      client.read(4096, 16),
      client.write(8192, Buffer.alloc(16)),
    ];
    const results = await settleWithin(requests, FAIL_MS_MAX);
    assert.deepEqual(
      results.map(codeOf),
      [ErrorCodes.NBD_PROTOCOL, ErrorCodes.NBD_PROTOCOL, ErrorCodes.NBD_PROTOCOL],
      name,
    );
    assert.equal((await client.closed)?.code, ErrorCodes.NBD_PROTOCOL, name);
    await fake.stop();
  }
  t.diagnostic(`${cases.length} kinds of malformed reply`);
});

test('server errors: an error chunk fails one request; ESHUTDOWN makes the client disconnect softly', async (t) => {
  const fake = await FakeServer.start({
    onRequest: (req, socket, f) => {
      if (req.offset === 4096 && req.type === C.CMD_READ) {
        const message = Buffer.from('disk on fire');
        socket.write(chunkHeader(C.REPLY_FLAG_DONE, C.REPLY_TYPE_ERROR_OFFSET, req, 6 + message.length + 8));
        const fields = Buffer.alloc(6);
        fields.writeUInt32BE(C.EIO, 0);
        fields.writeUInt16BE(message.length, 4);
        socket.write(Buffer.concat([fields, message, u64(4100)]));
      } else if (req.offset === 12345) {
        socket.write(simpleReply(C.ESHUTDOWN, req));
      } else if (req.offset === 777) {
        socket.write(simpleReply(9999, req)); // not an NBD errno: taken as EINVAL
      } else {
        f.serveMemory(req, socket);
      }
    },
  });
  t.after(() => fake.stop());
  const client = await NbdClient.connect({ port: fake.port });
  await assert.rejects(client.read(4096, 16), (err: NbdRequestError) => {
    assert.equal(err.errno, C.EIO);
    assert.match(err.message, /disk on fire/);
    return true;
  });
  await assert.rejects(client.write(777, Buffer.alloc(1)), (err: NbdRequestError) => err.errno === C.EINVAL);
  await client.write(0, Buffer.from('ok'));
  const last = client.read(0, 2);
  await assert.rejects(client.read(12345, 1), (err: NbdRequestError) => err.errno === C.ESHUTDOWN);
  assert.equal((await last).toString(), 'ok', 'requests in flight still complete');
  const reason = await settleWithin([client.closed], FAIL_MS_MAX);
  assert.equal(codeOf(reason[0]), 'fulfilled');
  assert.match((await client.closed)?.message ?? '', /ESHUTDOWN/);
  assert.equal(fake.disconnects, 1, 'the client sent NBD_CMD_DISC');
});

test('a server without NBD_OPT_GO: fallback to NBD_OPT_EXPORT_NAME; simple replies', async (t) => {
  const fake = await FakeServer.start({
    goUnsupported: true,
    noStructured: true,
    onRequest: (req, socket, f) => f.serveMemory(req, socket, false),
  });
  t.after(() => fake.stop());
  const client = await NbdClient.connect({ port: fake.port });
  t.after(() => client.destroy());
  assert.deepEqual(fake.options, [C.OPT_STRUCTURED_REPLY, C.OPT_GO, C.OPT_EXPORT_NAME]);
  assert.equal(client.size, MiB);
  assert.equal(client.blockSizes, undefined);
  assert.equal(client.structuredReplies, false);
  await client.write(10, Buffer.from('fallback'));
  assert.equal((await client.read(10, 8)).toString(), 'fallback');
  await client.disconnect();
});

test('hang-ups and silence: CONNECTION_CLOSED mid-request, TIMEOUT in the handshake', async (t) => {
  const hangUp = await FakeServer.start({ onRequest: (_req, socket) => socket.end() });
  t.after(() => hangUp.stop());
  const client = await NbdClient.connect({ port: hangUp.port });
  const results = await settleWithin([client.read(0, 1), client.read(1, 1)], FAIL_MS_MAX);
  assert.deepEqual(results.map(codeOf), [ErrorCodes.CONNECTION_CLOSED, ErrorCodes.CONNECTION_CLOSED]);

  const silent = await FakeServer.start({ silent: true });
  t.after(() => silent.stop());
  const started = Date.now();
  await assert.rejects(NbdClient.connect({ port: silent.port, connectTimeoutMs: 200 }), {
    code: ErrorCodes.TIMEOUT,
  });
  assert.ok(Date.now() - started < FAIL_MS_MAX);
  await assert.rejects(NbdClient.connect({ port: hangUp.port + 0, exportName: 'x'.repeat(5000) }), {
    code: ErrorCodes.INVALID_ARGUMENT,
  });
  // Nothing listens on a just-closed port.
  const closedPort = silent.port;
  await silent.stop();
  await assert.rejects(NbdClient.connect({ port: closedPort }), { code: ErrorCodes.CONNECTION_CLOSED });
});
