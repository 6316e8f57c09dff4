/**
 * Transmission over a raw socket: replies, validation errors, pipelining, framing and the
 * isolation of a broken connection.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as C from './nbd-numbers.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { RequestParser, PAYLOAD_COLLECT, PAYLOAD_NONE } from '../../src/nbd/server/request-parser.js';
import type { RequestHeader } from '../../src/nbd/server/request-parser.js';
import { startServer } from './helpers.js';
import { testDirectory } from './memory-export.js';
import { decodeExtents, encodeRequest, infoData, RawClient } from './raw-client.js';
import { collectPayloads } from './payload-collector.js';

const MiB = 1024 * 1024;

test('simple replies: write then read back, cookies echoed', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, '', { structured: false });
  t.after(() => c.destroy());
  const data = randomBytes(10_000);
  c.request(C.CMD_WRITE, 12_345, data.length, { cookie: 0xdeadbeefcafef00dn, payload: data });
  const w = await c.readReply();
  assert.deepEqual([w.kind, w.error, w.cookie], ['simple', 0, 0xdeadbeefcafef00dn]);
  c.request(C.CMD_READ, 12_345, data.length, { cookie: 0x0102030405060708n });
  const r = await c.readReply(data.length);
  assert.equal(r.cookie, 0x0102030405060708n);
  assert.deepEqual(r.data, data);
});

test('structured READ is one OFFSET_DATA chunk flagged DONE', async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  dir.exports.get('small')?.write(1000, Uint8Array.from([1, 2, 3, 4]));
  c.request(C.CMD_READ, 999, 6, { cookie: 42n });
  const r = await c.readReply();
  assert.equal(r.kind, 'structured');
  assert.equal(r.type, C.REPLY_TYPE_OFFSET_DATA);
  assert.equal(r.flags, C.REPLY_FLAG_DONE);
  assert.equal(r.cookie, 42n);
  assert.equal(Number(r.data.readBigUInt64BE(0)), 999);
  assert.deepEqual([...r.data.subarray(8)], [0, 1, 2, 3, 4, 0]);
});

test('validation: range, read-only, unknown command, bad flags, zero length, FLUSH fields', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  const size = 1024 * 1024;
  const cases: Array<[string, number, number, number, number, number]> = [
    // name, type, offset, length, flags, expected errno
    ['read past the end', C.CMD_READ, size - 10, 11, 0, C.EINVAL],
    ['read at 2^60', C.CMD_READ, 2 ** 60, 1, 0, C.EINVAL],
    ['trim past the end', C.CMD_TRIM, size, 1, 0, C.EINVAL],
    ['write zeroes past the end', C.CMD_WRITE_ZEROES, size - 1, 2, 0, C.ENOSPC],
    [
      'block status without a meta context is fine here, past the end is not',
      C.CMD_BLOCK_STATUS,
      size,
      1,
      0,
      C.EINVAL,
    ],
    ['unknown command', 42, 0, 1, 0, C.EINVAL],
    ['resize is not supported', 8, 0, 1, 0, C.EINVAL],
    ['NO_HOLE on READ', C.CMD_READ, 0, 1, C.CMD_FLAG_NO_HOLE, C.EINVAL],
    ['REQ_ONE on TRIM', C.CMD_TRIM, 0, 1, C.CMD_FLAG_REQ_ONE, C.EINVAL],
    ['unknown flag bit', C.CMD_READ, 0, 1, 1 << 9, C.EINVAL],
    ['DF on WRITE_ZEROES', C.CMD_WRITE_ZEROES, 0, 1, C.CMD_FLAG_DF, C.EINVAL],
    ['zero-length read', C.CMD_READ, 0, 0, 0, C.EINVAL],
    ['flush with a length', C.CMD_FLUSH, 0, 4096, 0, C.EINVAL],
    [
      'read above the maximum payload (structured: EOVERFLOW)',
      C.CMD_READ,
      0,
      C.PAYLOAD_BYTES_MAX + 1,
      0,
      C.EOVERFLOW,
    ],
  ];
  let cookie = 100n;
  for (const [name, type, offset, length, flags, errno] of cases) {
    c.request(type, offset, length, { flags, cookie: ++cookie });
    const r = await c.readReply();
    assert.equal(r.cookie, cookie, name);
    assert.equal(r.error, errno, name);
    assert.equal(r.type, C.REPLY_TYPE_ERROR, name);
    assert.equal(r.flags & C.REPLY_FLAG_DONE, C.REPLY_FLAG_DONE, name);
    const messageLength = r.data.readUInt16BE(4);
    assert.ok(messageLength > 0 && messageLength === r.data.length - 6, name);
  }
  // A write past the end still consumes its payload, and the next request is fine.
  assert.equal(await c.pwrite(size - 2, Buffer.alloc(4, 1)), C.ENOSPC);
  assert.equal(await c.pwrite(0, Buffer.alloc(4, 1)), 0);
  assert.ok(server.stats().errors >= cases.length + 1);
});

test('read-only export: writes, trims and zeroes fail with EPERM, reads work', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, 'ro', { structured: false });
  t.after(() => c.destroy());
  assert.equal(await c.pwrite(0, Buffer.alloc(4096, 9)), C.EPERM);
  c.request(C.CMD_TRIM, 0, 4096, { cookie: 2n });
  assert.equal((await c.readReply()).error, C.EPERM);
  c.request(C.CMD_WRITE_ZEROES, 0, 4096, { cookie: 3n });
  assert.equal((await c.readReply()).error, C.EPERM);
  // Simple replies: an oversize READ is EINVAL, and DF is refused without structured replies.
  c.request(C.CMD_READ, 0, C.PAYLOAD_BYTES_MAX + 1, { cookie: 4n });
  assert.equal((await c.readReply()).error, C.EINVAL);
  c.request(C.CMD_READ, 0, 4, { cookie: 5n, flags: C.CMD_FLAG_DF });
  assert.equal((await c.readReply()).error, C.EINVAL);
  assert.deepEqual([...(await c.pread(0, 4, false))], [3, 10, 17, 24]);
});

test('FLUSH and FUA wait for export.flush(); CACHE succeeds', async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const exp = dir.exports.get('small');
  assert.ok(exp);
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  assert.equal(await c.pwrite(0, Buffer.alloc(512, 1), C.CMD_FLAG_FUA), 0);
  assert.equal(exp.flushes, 1);
  c.request(C.CMD_FLUSH, 0, 0, { cookie: 11n });
  assert.deepEqual([(await c.readReply()).error, exp.flushes], [0, 2]);
  c.request(C.CMD_WRITE_ZEROES, 0, 512, { cookie: 12n, flags: C.CMD_FLAG_FUA | C.CMD_FLAG_FAST_ZERO });
  assert.deepEqual([(await c.readReply()).error, exp.flushes], [0, 3]);
  c.request(C.CMD_CACHE, 0, 4096, { cookie: 13n });
  assert.equal((await c.readReply()).error, 0);
  // FUA on a read is accepted and ignored.
  c.request(C.CMD_READ, 0, 4, { cookie: 14n, flags: C.CMD_FLAG_FUA | C.CMD_FLAG_DF });
  assert.equal((await c.readReply()).type, C.REPLY_TYPE_OFFSET_DATA);
  assert.equal(exp.flushes, 3);
});

test('TRIM and WRITE_ZEROES show up in BLOCK_STATUS; REQ_ONE returns one extent', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  const status = async (offset: number, length: number, flags = 0): Promise<Array<[number, number]>> => {
    c.request(C.CMD_BLOCK_STATUS, offset, length, { flags, cookie: 77n });
    const r = await c.readReply();
    assert.equal(r.type, C.REPLY_TYPE_BLOCK_STATUS);
    assert.equal(r.flags, C.REPLY_FLAG_DONE);
    return decodeExtents(r.data).extents;
  };
  const HZ = C.STATE_HOLE | C.STATE_ZERO;
  assert.deepEqual(await status(0, MiB), [[MiB, HZ]]);
  assert.equal(await c.pwrite(0, Buffer.alloc(64 * 1024, 7)), 0);
  assert.deepEqual(await status(0, MiB), [
    [64 * 1024, 0],
    [MiB - 64 * 1024, HZ],
  ]);
  c.request(C.CMD_TRIM, 4096, 8192, { cookie: 1n });
  assert.equal((await c.readReply()).error, 0);
  c.request(C.CMD_WRITE_ZEROES, 16_384, 4096, { cookie: 2n }); // may punch a hole
  assert.equal((await c.readReply()).error, 0);
  c.request(C.CMD_WRITE_ZEROES, 32_768, 4096, { cookie: 3n, flags: C.CMD_FLAG_NO_HOLE });
  assert.equal((await c.readReply()).error, 0);
  assert.deepEqual(await status(0, 64 * 1024), [
    [4096, 0],
    [8192, HZ],
    [4096, 0],
    [4096, HZ],
    [64 * 1024 - 20_480, 0],
  ]);
  assert.deepEqual(await c.pread(4096, 8192), Buffer.alloc(8192));
  assert.deepEqual(await c.pread(32_768, 4096), Buffer.alloc(4096));
  assert.deepEqual(await status(0, MiB, C.CMD_FLAG_REQ_ONE), [[4096, 0]]);
  assert.deepEqual(await status(100, 10, C.CMD_FLAG_REQ_ONE), [[10, 0]]);
  assert.deepEqual(await status(MiB - 100, 100), [[100, HZ]]);
});

test('an exception in the export fails only that request, with the mapped errno', async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const exp = dir.exports.get('small');
  assert.ok(exp);
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  exp.failNext = new Error('disk on fire');
  await assert.rejects(c.pread(0, 4), (e: Error & { errno?: number }) => e.errno === C.EIO);
  exp.failNext = new MemfabricError(ErrorCodes.POOL_EXHAUSTED, 'no frames');
  assert.equal(await c.pwrite(0, Buffer.alloc(4)), C.ENOSPC);
  exp.failNext = new MemfabricError(ErrorCodes.OUT_OF_RANGE, 'beyond');
  c.request(C.CMD_TRIM, 0, 4096, { cookie: 3n });
  assert.equal((await c.readReply()).error, C.EINVAL);
  exp.failNext = new MemfabricError(ErrorCodes.READ_ONLY, 'frozen');
  c.request(C.CMD_BLOCK_STATUS, 0, 4096, { cookie: 4n });
  assert.equal((await c.readReply()).error, C.EPERM);
  assert.equal(await c.pwrite(0, Buffer.from('ok')), 0);
  assert.deepEqual(await c.pread(0, 2), Buffer.from('ok'));
});

test('WRITE above the maximum payload: skipped with EINVAL, or dropped when absurd', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  const big = Buffer.alloc(C.PAYLOAD_BYTES_MAX + 4096, 1);
  assert.equal(await c.pwrite(0, big), C.EINVAL);
  assert.deepEqual(await c.pread(0, 4), Buffer.alloc(4)); // nothing was written
  c.request(C.CMD_WRITE, 0, C.WRITE_SKIP_BYTES_MAX + 1, { cookie: 2n });
  assert.equal(await c.waitClosed(), true);
  assert.equal(server.stats().protocolViolations, 1);
});

test('bad request magic closes that connection only; the others keep working', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: good } = await RawClient.open(port);
  const { client: bad } = await RawClient.open(port);
  t.after(() => good.destroy());
  t.after(() => bad.destroy());
  assert.equal(await good.pwrite(0, Buffer.from('before')), 0);
  bad.write(encodeRequest(C.CMD_READ, 0, 4, 0, 1n, undefined, 0x12345678));
  assert.equal(await bad.waitClosed(), true);
  assert.equal(await good.pwrite(6, Buffer.from('after')), 0);
  assert.deepEqual(await good.pread(0, 11), Buffer.from('beforeafter'));
  const { client: third } = await RawClient.open(port);
  t.after(() => third.destroy());
  assert.deepEqual(await third.pread(0, 11), Buffer.from('beforeafter'));
  const stats = server.stats();
  assert.equal(stats.protocolViolations, 1);
  assert.equal(stats.connectionsTotal, 3);
});

test('requests fed one byte at a time over the socket', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  const payload = randomBytes(300);
  const bytes = Buffer.concat([
    encodeRequest(C.CMD_WRITE, 4000, payload.length, 0, 1n, payload),
    encodeRequest(C.CMD_READ, 4000, payload.length, 0, 2n),
  ]);
  for (let i = 0; i < bytes.length; i++) {
    c.write(bytes.subarray(i, i + 1));
    if (i % 16 === 0) await new Promise((r) => setImmediate(r));
  }
  assert.equal((await c.readReply()).cookie, 1n);
  const r = await c.readReply();
  assert.equal(r.cookie, 2n);
  assert.deepEqual(r.data.subarray(8), payload);
});

test('RequestParser frames requests split at every byte boundary', () => {
  const payload = randomBytes(100);
  const stream = Buffer.concat([
    encodeRequest(C.CMD_READ, 1, 2, 0, 10n),
    encodeRequest(C.CMD_WRITE, 3, payload.length, 1, 11n, payload),
    encodeRequest(C.CMD_FLUSH, 0, 0, 0, 12n),
  ]);
  for (const step of [1, 2, 3, 7, 27, 28, 29, 64, stream.length]) {
    const seen: string[] = [];
    const parser = new RequestParser({
      onHeader: (req: RequestHeader) => {
        seen.push(`h${req.type}:${req.cookieLo}:${req.offset}:${req.length}:${req.flags}`);
        return req.type === C.CMD_WRITE ? PAYLOAD_COLLECT : PAYLOAD_NONE;
      },
      ...collectPayloads((_req, p) => seen.push(`p${p.toString('hex') === payload.toString('hex')}`)),
      onSkipped: () => seen.push('skipped'),
      onViolation: (reason) => seen.push(`violation ${reason}`),
    });
    for (let i = 0; i < stream.length; i += step) parser.feed(stream.subarray(i, i + step));
    assert.deepEqual(
      seen,
      ['h0:10:1:2:0', `h1:11:3:${payload.length}:1`, 'ptrue', 'h3:12:0:0:0'],
      `step ${step}`,
    );
  }
});

test('pipelined requests are all answered with their own cookies', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  const n = 500;
  const frames: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const block = Buffer.alloc(512, i & 0xff);
    frames.push(
      encodeRequest(C.CMD_WRITE, i * 512, 512, i % 50 === 0 ? C.CMD_FLAG_FUA : 0, BigInt(i), block),
    );
  }
  frames.push(encodeRequest(C.CMD_FLUSH, 0, 0, 0, BigInt(n)));
  for (let i = 0; i < n; i++) frames.push(encodeRequest(C.CMD_READ, i * 512, 512, 0, BigInt(n + 1 + i)));
  c.write(Buffer.concat(frames));
  const seen = new Set<bigint>();
  for (let i = 0; i < 2 * n + 1; i++) {
    const r = await c.readReply();
    assert.equal(r.error, 0);
    assert.ok(!seen.has(r.cookie));
    seen.add(r.cookie);
    if (r.cookie > BigInt(n)) {
      const block = Number(r.cookie) - n - 1;
      assert.equal(r.data.length, 8 + 512);
      assert.ok(r.data.subarray(8).every((b) => b === (block & 0xff)));
    }
  }
  assert.equal(seen.size, 2 * n + 1);
  const stats = server.stats();
  assert.equal(stats.requests.write, n);
  assert.equal(stats.requests.read, n);
  assert.equal(stats.requests.flush, 1);
  assert.equal(stats.bytesWritten, n * 512);
  assert.equal(stats.bytesRead, n * 512);
});

test('a client that does not read its replies is throttled, then served in full', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  // 64 x 1 MiB of reads queued while the client reads nothing.
  const n = 64;
  const frames: Buffer[] = [];
  for (let i = 0; i < n; i++)
    frames.push(encodeRequest(C.CMD_READ, (i * MiB) % (64 * MiB), MiB, 0, BigInt(i)));
  c.socket.pause();
  c.write(Buffer.concat(frames));
  // No sleep: wait until the server has answered REPLY_QUEUED_BYTES_MAX worth of reads. It
  // parses a chunk of requests in one go (the export reads synchronously), so a server that did
  // not stop there would have answered every request by the next turns of the event loop.
  const threshold = C.REPLY_QUEUED_BYTES_MAX / MiB;
  for (let i = 0; i < 10_000 && server.stats().requests.read < threshold; i++) {
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.ok(server.stats().requests.read >= threshold, 'the server answered reads up to the limit');
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  // The server stopped once REPLY_QUEUED_BYTES_MAX was queued, well short of answering everything.
  const early = server.stats().requests.read;
  assert.ok(early <= C.REPLY_QUEUED_BYTES_MAX / MiB + 4, `answered ${early} reads into a stalled socket`);
  c.socket.resume();
  for (let i = 0; i < n; i++) assert.equal((await c.readReply()).data.length, 8 + MiB);
  assert.equal(server.stats().requests.read, n);
});

test('DISC: pending requests are answered, then the server closes', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  c.write(
    Buffer.concat([
      encodeRequest(C.CMD_WRITE, 0, 4, C.CMD_FLAG_FUA, 1n, Buffer.from('abcd')),
      encodeRequest(C.CMD_FLUSH, 0, 0, 0, 2n),
      encodeRequest(C.CMD_DISC, 0, 0, 0, 3n),
      encodeRequest(C.CMD_READ, 0, 4, 0, 4n), // after DISC: ignored
    ]),
  );
  const cookies = [(await c.readReply()).cookie, (await c.readReply()).cookie].sort();
  assert.deepEqual(cookies, [1n, 2n]);
  assert.equal(await c.waitClosed(), true);
  assert.equal(c.available(), 0);
});

test('server.close() ends open connections and stops listening', async () => {
  const { server, port } = await startServer();
  const { client: a } = await RawClient.open(port);
  const b = await RawClient.handshake(port);
  assert.equal(server.stats().connectionsOpen, 2);
  await server.close();
  assert.equal(await a.waitClosed(), true);
  assert.equal(await b.waitClosed(), true);
  assert.equal(server.stats().connectionsOpen, 0);
  await assert.rejects(RawClient.connect(port));
});

test('a failing flush fails FLUSH and FUA writes; a flush that never settles cannot hold close()', async (t) => {
  const { server, port, dir } = await startServer();
  const exp = dir.exports.get('small');
  assert.ok(exp);
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  exp.flush = () => Promise.reject(new MemfabricError(ErrorCodes.POOL_EXHAUSTED, 'no room to persist'));
  c.request(C.CMD_FLUSH, 0, 0, { cookie: 1n });
  const r = await c.readReply();
  assert.deepEqual([r.cookie, r.error, r.type], [1n, C.ENOSPC, C.REPLY_TYPE_ERROR]);
  assert.match(r.data.toString('utf8', 6), /no room to persist/);
  assert.equal(await c.pwrite(0, Buffer.from('x'), C.CMD_FLAG_FUA), C.ENOSPC);

  exp.flush = () => new Promise<void>(() => {});
  c.request(C.CMD_FLUSH, 0, 0, { cookie: 2n });
  assert.deepEqual(await c.pread(0, 1), Buffer.from('x')); // later requests are not blocked
  const started = Date.now();
  await server.close();
  assert.ok(Date.now() - started < C.CLOSE_GRACE_MS * 3, 'close() finished');
  assert.equal(await c.waitClosed(), true);
});

test('many concurrent connections; a write flushed on one is read by every other', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const n = 24;
  const clients = await Promise.all(Array.from({ length: n }, () => RawClient.open(port)));
  t.after(() => clients.forEach(({ client }) => client.destroy()));
  assert.equal(server.stats().connectionsOpen, n);
  // Everyone writes its own 64 KiB region (some with FUA), then flushes.
  await Promise.all(
    clients.map(async ({ client }, i) => {
      assert.equal(
        await client.pwrite(i * 65_536, Buffer.alloc(65_536, i + 1), i % 2 ? C.CMD_FLAG_FUA : 0),
        0,
      );
      client.request(C.CMD_FLUSH, 0, 0, { cookie: 99n });
      assert.equal((await client.readReply()).error, 0);
    }),
  );
  // Then everyone reads everyone's region.
  await Promise.all(
    clients.map(async ({ client }, i) => {
      const all = await client.pread(0, n * 65_536, true, BigInt(i));
      for (let j = 0; j < n; j++) {
        const region = all.subarray(j * 65_536, (j + 1) * 65_536);
        assert.ok(region.equals(Buffer.alloc(65_536, j + 1)), `client ${i} sees region ${j}`);
      }
    }),
  );
});

test('a directory that throws is contained to the connection that hit it', async (t) => {
  const dir = testDirectory(1024 * 1024);
  const errors: string[] = [];
  let explode = false;
  const onAttach = dir.onAttach.bind(dir);
  dir.onAttach = (name, delta) => {
    if (explode) throw new Error(`onAttach ${delta}`);
    onAttach(name, delta);
  };
  const { server, port } = await startServer(dir, { logger: { error: (m) => errors.push(m) } });
  t.after(() => server.close());
  const { client: a } = await RawClient.open(port, 'small');
  explode = true;
  a.destroy(); // onAttach(-1) throws inside the socket's 'close' handler
  const b = await RawClient.handshake(port);
  t.after(() => b.destroy());
  b.sendOption(C.OPT_GO, infoData('small')); // onAttach(+1) throws while entering transmission
  assert.equal(await b.waitClosed(), true);
  explode = false;
  const { client: c } = await RawClient.open(port, 'small');
  t.after(() => c.destroy());
  assert.equal(await c.pwrite(0, Buffer.from('fine')), 0);
  assert.equal(errors.length, 2, errors.join('\n'));
});
