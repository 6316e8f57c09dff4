/**
 * Handshake, byte by byte, over a raw socket: greeting, every option we serve, the errors for
 * everything we do not, and that the session stays in sync after each error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as C from './nbd-numbers.js';
import { Handshake } from '../../src/nbd/server/handshake.js';
import type { Negotiated } from '../../src/nbd/server/handshake.js';
import { startServer } from './helpers.js';
import { testDirectory } from './memory-export.js';
import { encodeRequest, infoData, metaContextData, RawClient } from './raw-client.js';

const WRITABLE_FLAGS =
  C.FLAG_HAS_FLAGS |
  C.FLAG_SEND_FLUSH |
  C.FLAG_SEND_FUA |
  C.FLAG_SEND_TRIM |
  C.FLAG_SEND_WRITE_ZEROES |
  C.FLAG_SEND_FAST_ZERO |
  C.FLAG_SEND_CACHE |
  C.FLAG_CAN_MULTI_CONN;

test('greeting is NBDMAGIC IHAVEOPT with FIXED_NEWSTYLE | NO_ZEROES', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.connect(port);
  t.after(() => c.destroy());
  const greeting = await c.read(18);
  assert.equal(greeting.toString('hex'), Buffer.from('NBDMAGICIHAVEOPT').toString('hex') + '0003');
});

test('unknown client flags drop the connection', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port, 0x4 | 1);
  t.after(() => c.destroy());
  assert.equal(await c.waitClosed(), true);
  assert.equal(server.stats().protocolViolations, 1);
});

test('LIST returns every export with its description, then ACK', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_LIST);
  const replies = await c.readOptionRepliesUntilFinal();
  assert.equal(replies.at(-1)?.type, C.REP_ACK);
  const servers = replies
    .filter((r) => r.type === C.REP_SERVER)
    .map((r) => {
      const nameLength = r.data.readUInt32BE(0);
      return [r.data.toString('utf8', 4, 4 + nameLength), r.data.toString('utf8', 4 + nameLength)];
    });
  assert.deepEqual(servers, [
    ['', 'default test export'],
    ['small', 'small export'],
    ['ro', 'read-only export'],
  ]);
  for (const r of replies) assert.equal(r.option, C.OPT_LIST);

  // LIST with data is invalid, and the session carries on.
  c.sendOption(C.OPT_LIST, Buffer.from('x'));
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);
  c.sendOption(C.OPT_LIST);
  assert.equal((await c.readOptionRepliesUntilFinal()).at(-1)?.type, C.REP_ACK);
});

test('unknown options get ERR_UNSUP and the session stays usable', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  for (const option of [C.OPT_PEEK_EXPORT, C.OPT_EXTENDED_HEADERS, 99, 0xffffffff]) {
    c.sendOption(option, Buffer.from('some option data the server must skip'));
    const r = await c.readOptionReply();
    assert.equal(r.option, option >>> 0);
    assert.equal(r.type, C.REP_ERR_UNSUP);
  }
  c.sendOption(C.OPT_STARTTLS);
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_UNSUP);
  const { size } = await c.go('small');
  assert.equal(size, 1024 * 1024);
  assert.deepEqual(await c.pread(0, 4, false), Buffer.alloc(4));
});

test('INFO reports size, flags, name, description and block sizes; GO may follow', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  const info = await c.go('small', [C.INFO_NAME, C.INFO_DESCRIPTION, C.INFO_BLOCK_SIZE, 77], C.OPT_INFO);
  assert.equal(info.size, 1024 * 1024);
  assert.equal(info.flags, WRITABLE_FLAGS);
  const byType = new Map(
    info.replies.filter((r) => r.type === C.REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]),
  );
  assert.equal(byType.get(C.INFO_NAME)?.toString('utf8', 2), 'small');
  assert.equal(byType.get(C.INFO_DESCRIPTION)?.toString('utf8', 2), 'small export');
  const bs = byType.get(C.INFO_BLOCK_SIZE);
  assert.ok(bs);
  assert.equal(bs.length, 14);
  assert.deepEqual(
    [bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)],
    [1, 512, C.PAYLOAD_BYTES_MAX],
  );
  assert.equal(byType.has(77), false);

  // Still in option haggling: GO the default export.
  const go = await c.go('');
  assert.equal(go.size, 64 * 1024 * 1024);
  const bsDefault = go.replies.find(
    (r) => r.type === C.REP_INFO && r.data.readUInt16BE(0) === C.INFO_BLOCK_SIZE,
  );
  assert.equal(bsDefault?.data.readUInt32BE(6), 4096);
});

test('transmission flags: DF only with structured replies; read-only drops write features', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  assert.equal(
    (await c.go('ro', [], C.OPT_INFO)).flags,
    C.FLAG_HAS_FLAGS | C.FLAG_READ_ONLY | C.FLAG_SEND_FLUSH | C.FLAG_SEND_CACHE | C.FLAG_CAN_MULTI_CONN,
  );
  c.sendOption(C.OPT_STRUCTURED_REPLY, Buffer.from('x'));
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);
  c.sendOption(C.OPT_STRUCTURED_REPLY);
  assert.equal((await c.readOptionReply()).type, C.REP_ACK);
  assert.equal((await c.go('', [], C.OPT_INFO)).flags, WRITABLE_FLAGS | C.FLAG_SEND_DF);
});

test('unknown and malformed exports in INFO/GO are errors, not disconnects', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_GO, infoData('nope'));
  const unknown = await c.readOptionReply();
  assert.equal(unknown.type, C.REP_ERR_UNKNOWN);
  assert.match(unknown.data.toString(), /nope/);

  const bad = infoData('small');
  bad.writeUInt32BE(1000, 0); // name length beyond the option
  c.sendOption(C.OPT_INFO, bad);
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);
  c.sendOption(C.OPT_INFO, Buffer.alloc(3));
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);
  const countMismatch = infoData('small', [C.INFO_NAME]);
  countMismatch.writeUInt16BE(5, 4 + 5);
  c.sendOption(C.OPT_INFO, countMismatch);
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);
  const nul = infoData('a\0b');
  c.sendOption(C.OPT_INFO, nul);
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);

  assert.equal((await c.go('small')).size, 1024 * 1024);
});

test('meta contexts: only base:allocation, listing and selection rules', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  const list = async (name: string, queries: string[]): Promise<string[] | number> => {
    c.sendOption(C.OPT_LIST_META_CONTEXT, metaContextData(name, queries));
    const replies = await c.readOptionRepliesUntilFinal();
    const last = replies.at(-1);
    if (last?.type !== C.REP_ACK) return last?.type ?? -1;
    return replies.filter((r) => r.type === C.REP_META_CONTEXT).map((r) => r.data.toString('utf8', 4));
  };
  assert.deepEqual(await list('', []), ['base:allocation']);
  assert.deepEqual(await list('', ['base:']), ['base:allocation']);
  assert.deepEqual(await list('', ['base:allocation', 'qemu:dirty-bitmap:x']), ['base:allocation']);
  assert.deepEqual(await list('', ['qemu:dirty-bitmap:x', 'x-other:thing']), []);
  assert.deepEqual(await list('', ['base:nonexistent']), []);
  assert.equal(await list('', ['no-colon']), C.REP_ERR_INVALID);
  assert.equal(await list('missing', ['base:allocation']), C.REP_ERR_UNKNOWN);
  const truncated = metaContextData('', ['base:allocation']).subarray(0, 12);
  c.sendOption(C.OPT_LIST_META_CONTEXT, truncated);
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);

  // SET needs structured replies first.
  c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData('', ['base:allocation']));
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);
  c.sendOption(C.OPT_STRUCTURED_REPLY);
  await c.readOptionReply();
  // 'base:' selects nothing in SET.
  c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData('', ['base:']));
  assert.equal((await c.readOptionReply()).type, C.REP_ACK);
  c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData('', ['base:allocation', 'base:allocation']));
  const set = await c.readOptionRepliesUntilFinal();
  assert.equal(set.length, 2);
  assert.equal(set[0].type, C.REP_META_CONTEXT);
  assert.notEqual(set[0].data.readUInt32BE(0), 0);
  assert.equal(set[0].data.toString('utf8', 4), 'base:allocation');
  assert.equal(set[1].type, C.REP_ACK);
  await c.go('');
  c.request(C.CMD_BLOCK_STATUS, 0, 4096, { cookie: 5n });
  const r = await c.readReply();
  assert.equal(r.type, C.REPLY_TYPE_BLOCK_STATUS);
  assert.equal(r.data.readUInt32BE(0), set[0].data.readUInt32BE(0));
});

test('meta context chosen for another export does not carry over to GO', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_STRUCTURED_REPLY);
  await c.readOptionReply();
  c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData('small', ['base:allocation']));
  await c.readOptionRepliesUntilFinal();
  await c.go('');
  c.request(C.CMD_BLOCK_STATUS, 0, 4096, { cookie: 5n });
  const r = await c.readReply();
  assert.equal(r.type, C.REPLY_TYPE_ERROR);
  assert.equal(r.error, C.EINVAL);
});

test('oversize option data: ERR_TOO_BIG when skippable, disconnect when absurd', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_INFO, Buffer.alloc(C.OPTION_DATA_BYTES_MAX + 1));
  const r = await c.readOptionReply();
  assert.equal(r.type, C.REP_ERR_TOO_BIG);
  assert.equal(r.option, C.OPT_INFO);
  assert.equal((await c.go('small')).size, 1024 * 1024);

  const d = await RawClient.handshake(port);
  t.after(() => d.destroy());
  d.sendOption(C.OPT_INFO, Buffer.alloc(16), C.OPTION_SKIP_BYTES_MAX + 1);
  assert.equal(await d.waitClosed(), true);
});

test('EXPORT_NAME honours NO_ZEROES and enters transmission; unknown name disconnects', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  for (const clientFlags of [C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES, C.FLAG_C_FIXED_NEWSTYLE, 0]) {
    const c = await RawClient.handshake(port, clientFlags);
    t.after(() => c.destroy());
    c.sendOption(C.OPT_EXPORT_NAME, Buffer.from('small'));
    const head = await c.read(10);
    assert.equal(Number(head.readBigUInt64BE(0)), 1024 * 1024);
    assert.equal(head.readUInt16BE(8), WRITABLE_FLAGS);
    if ((clientFlags & C.FLAG_C_NO_ZEROES) === 0) assert.deepEqual(await c.read(124), Buffer.alloc(124));
    assert.equal(await c.pwrite(0, Buffer.from('hello')), 0);
    assert.deepEqual(await c.pread(0, 5, false), Buffer.from('hello'));
  }
  const bad = await RawClient.handshake(port);
  t.after(() => bad.destroy());
  bad.sendOption(C.OPT_EXPORT_NAME, Buffer.from('nope'));
  assert.equal(await bad.waitClosed(), true);
});

test('ABORT is acknowledged and the server closes', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_ABORT, Buffer.from('ignored'));
  assert.equal((await c.readOptionReply()).type, C.REP_ACK);
  assert.equal(await c.waitClosed(), true);
  assert.equal(server.stats().protocolViolations, 0);
});

/** A logger that keeps each line, to tell apart why the server closed a connection. */
function recordingLogger(): { lines: string[]; warn(m: string): void; debug(m: string): void } {
  const lines: string[] = [];
  return { lines, warn: (m) => lines.push(`warn ${m}`), debug: (m) => lines.push(`debug ${m}`) };
}

/** An option header with no data. */
function optionHeader(option: number): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(C.IHAVEOPT_HI, 0);
  h.writeUInt32BE(C.IHAVEOPT_LO, 4);
  h.writeUInt32BE(option, 8);
  return h;
}

// The handshake timeout is far longer than any wait below, so a close can only come from the
// offending input; the server's log line and counter say which rule closed it.
const NO_TIMEOUT_MS = 10 * 60_000;

test('bad option magic drops the connection as a protocol violation', async (t) => {
  const logger = recordingLogger();
  const { server, port } = await startServer(testDirectory(), { handshakeTimeoutMs: NO_TIMEOUT_MS, logger });
  t.after(() => server.close());
  const a = await RawClient.handshake(port);
  t.after(() => a.destroy());
  // A well-formed option first: the session is alive until the bad magic arrives.
  a.sendOption(99);
  assert.equal((await a.readOptionReply()).type, C.REP_ERR_UNSUP);
  a.write(Buffer.alloc(16, 0x41));
  assert.equal(await a.waitClosed(), true);
  assert.equal(server.stats().protocolViolations, 1);
  assert.ok(
    logger.lines.some((l) => l.startsWith('warn') && l.includes('bad option magic')),
    logger.lines.join('\n'),
  );
});

test('the option after HANDSHAKE_OPTIONS_MAX drops the connection, not one before', async (t) => {
  const logger = recordingLogger();
  const { server, port } = await startServer(testDirectory(), { handshakeTimeoutMs: NO_TIMEOUT_MS, logger });
  t.after(() => server.close());
  const b = await RawClient.handshake(port);
  t.after(() => b.destroy());
  const one = optionHeader(99);
  b.write(Buffer.concat(new Array<Buffer>(C.HANDSHAKE_OPTIONS_MAX).fill(one)));
  // Every option up to the limit is served (ERR_UNSUP) and the connection stays open.
  for (let i = 0; i < C.HANDSHAKE_OPTIONS_MAX; i++) {
    assert.equal((await b.readOptionReply()).type, C.REP_ERR_UNSUP);
  }
  assert.equal(server.stats().protocolViolations, 0);
  b.write(one);
  assert.equal(await b.waitClosed(), true);
  assert.equal(server.stats().protocolViolations, 1);
  assert.ok(
    logger.lines.some(
      (l) => l.startsWith('warn') && l.includes(`more than ${C.HANDSHAKE_OPTIONS_MAX} options`),
    ),
    logger.lines.join('\n'),
  );
});

test('a slow handshake is dropped by the handshake timeout, not as a violation', async (t) => {
  const logger = recordingLogger();
  const { server, port } = await startServer(testDirectory(), { handshakeTimeoutMs: 300, logger });
  t.after(() => server.close());
  const slow = await RawClient.handshake(port);
  t.after(() => slow.destroy());
  assert.equal(await slow.waitClosed(), true);
  assert.equal(server.stats().protocolViolations, 0);
  assert.equal(server.stats().handshakeTimeouts, 1);
  assert.ok(
    logger.lines.some((l) => l.includes('no handshake option for 300 ms')),
    logger.lines.join('\n'),
  );
});

test('bytes the client pipelines right after GO reach the transmission phase', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  // One write: GO for 'ro' immediately followed by a READ (a client must not, but may).
  const go = Buffer.alloc(16);
  go.writeUInt32BE(C.IHAVEOPT_HI, 0);
  go.writeUInt32BE(C.IHAVEOPT_LO, 4);
  go.writeUInt32BE(C.OPT_GO, 8);
  const data = infoData('ro');
  go.writeUInt32BE(data.length, 12);
  c.write(Buffer.concat([go, data, encodeRequest(C.CMD_READ, 0, 4, 0, 9n)]));
  const replies = await c.readOptionRepliesUntilFinal();
  assert.equal(replies.at(-1)?.type, C.REP_ACK);
  const r = await c.readReply(4);
  assert.equal(r.cookie, 9n);
  assert.deepEqual([...r.data], [3, 10, 17, 24]);
});

test('Handshake state machine accepts its input one byte at a time', () => {
  const dir = testDirectory(1024 * 1024);
  const out: Buffer[] = [];
  let negotiated: Negotiated | undefined;
  let rest: Buffer | undefined;
  const hs = new Handshake(dir, {
    write: (b) => out.push(b),
    ready: (n, r) => {
      negotiated = n;
      rest = r;
    },
    close: (reason) => assert.fail(reason),
  });
  const option = (opt: number, data: Buffer): Buffer => {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(C.IHAVEOPT_HI, 0);
    h.writeUInt32BE(C.IHAVEOPT_LO, 4);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    return Buffer.concat([h, data]);
  };
  const input = Buffer.concat([
    Buffer.from([0, 0, 0, 3]),
    option(77, Buffer.from('unknown')),
    option(C.OPT_STRUCTURED_REPLY, Buffer.alloc(0)),
    option(C.OPT_SET_META_CONTEXT, metaContextData('small', ['base:allocation'])),
    option(C.OPT_GO, infoData('small')),
    Buffer.from('tail'),
  ]);
  for (let i = 0; i < input.length && !hs.done; i++) hs.feed(input.subarray(i, i + 1));
  assert.ok(negotiated);
  assert.equal(negotiated.exportName, 'small');
  assert.equal(negotiated.structuredReplies, true);
  assert.equal(negotiated.baseAllocation, true);
  // Fed byte by byte, the byte after GO arrives in the next feed; nothing was left in this one.
  assert.equal(rest, undefined);
  const types = out.map((b) => b.readUInt32BE(12));
  assert.deepEqual(types, [
    C.REP_ERR_UNSUP,
    C.REP_ACK,
    C.REP_META_CONTEXT,
    C.REP_ACK,
    C.REP_INFO,
    C.REP_INFO,
    C.REP_ACK,
  ]);
});

test('onAttach sees each connection enter and leave its export', async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const { client } = await RawClient.open(port, 'small');
  assert.equal(dir.attached.get('small'), 1);
  client.request(C.CMD_DISC, 0, 0);
  assert.equal(await client.waitClosed(), true);
  for (let i = 0; i < 100 && dir.attached.get('small') !== 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  assert.equal(dir.attached.get('small'), 0);
});
