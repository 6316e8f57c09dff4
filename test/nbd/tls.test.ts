/**
 * NBD TLS (STARTTLS) in process, over real sockets: the server's three modes against a raw
 * client (every byte visible), the TypeScript client with TLS-PSK and X.509, credentials that
 * do not match (the handshake fails cleanly, the server keeps serving), and the PSK file format.
 * Tenant isolation, the fabric and migration over TLS are in test/appliance/tls.test.ts; real
 * clients (nbdinfo, nbdcopy, qemu-io) in test/interop/tls.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import fc from 'fast-check';
import { ErrorCodes } from '../../src/errors.js';
import * as C from '../../src/nbd/protocol/constants.js';
import { NbdClient, NbdServer } from '../../src/nbd/index.js';
import { formatPskLine, parsePskFile, PSK_CIPHERS_TLS12 } from '../../src/nbd/protocol/psk.js';
import { startServer } from './helpers.js';
import { testDirectory } from './memory-export.js';
import { infoData, metaContextData, RawClient } from './raw-client.js';
import { credentialsDir, makePsk, makeX509 } from './tls-credentials.js';

const MiB = 1024 * 1024;
const UNTIL_MS_MAX = 10_000;

/** Polls `condition` (every 5 ms) until it holds; fails naming `what` after UNTIL_MS_MAX. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + UNTIL_MS_MAX;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function pskServer(t: test.TestContext, mode: 'on' | 'require') {
  const root = credentialsDir(t);
  const psk = makePsk(root, ['tenant-a', 'tenant-b']);
  const running = await startServer(testDirectory(), { tls: { mode, psk: psk.file } });
  t.after(() => running.server.close());
  return { ...running, psk, root };
}

/** A server requiring TLS with both kinds: X.509 (client certificates verified, CN tenant-a) and PSK (tenant-b). */
async function mixedServer(t: test.TestContext) {
  const root = credentialsDir(t);
  const x509 = makeX509(root, ['tenant-a']);
  const psk = makePsk(root, ['tenant-b']);
  const { port, server } = await startServer(testDirectory(), {
    tls: { mode: 'require', certificates: x509.serverDir, psk: psk.file, verifyClientCertificates: true },
  });
  t.after(() => server.close());
  return { port, x509, psk };
}

/**
 * Sends one option over an established TLS socket and reads its replies up to the final one
 * (ACK or an error); resolves with all of them.
 */
function optionOverTls(
  socket: TLSSocket,
  option: number,
  data: Buffer = Buffer.alloc(0),
): Promise<Array<{ type: number; data: Buffer }>> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const replies: Array<{ type: number; data: Buffer }> = [];
    const onClose = (): void => reject(new Error('closed before the final option reply'));
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      while (got.length >= 20 && got.length >= 20 + got.readUInt32BE(16)) {
        const length = got.readUInt32BE(16);
        const reply = { type: got.readUInt32BE(12), data: got.subarray(20, 20 + length) };
        got = got.subarray(20 + length);
        replies.push(reply);
        if (reply.type === C.REP_ACK || reply.type >= 0x80000000) {
          socket.off('data', onData);
          socket.off('close', onClose);
          resolve(replies);
          return;
        }
      }
    };
    socket.on('data', onData);
    socket.once('close', onClose);
    const header = Buffer.alloc(16);
    header.writeUInt32BE(C.IHAVEOPT_HI, 0);
    header.writeUInt32BE(C.IHAVEOPT_LO, 4);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    socket.write(Buffer.concat([header, data]));
  });
}

/** The final reply's type. */
const last = (replies: Array<{ type: number }>): number => replies[replies.length - 1]!.type;

/** STARTTLS on a raw connection, then a TLS-PSK session over it. */
async function startTlsRaw(
  port: number,
  identity: string,
  key: Buffer,
  before?: (c: RawClient) => Promise<void>,
): Promise<TLSSocket> {
  const plain = await RawClient.handshake(port);
  await before?.(plain);
  plain.sendOption(C.OPT_STARTTLS);
  assert.equal((await plain.readOptionReply()).type, C.REP_ACK);
  return new Promise<TLSSocket>((resolve, reject) => {
    const s = tlsConnect({
      socket: plain.socket,
      ciphers: PSK_CIPHERS_TLS12,
      pskCallback: () => ({ identity, psk: key }),
      checkServerIdentity: () => undefined,
    });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

test('require: every option but STARTTLS and ABORT answers ERR_TLS_REQD, and no data is served', async (t) => {
  const { port, server, dir } = await pskServer(t, 'require');
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  const refused: Array<[number, Buffer]> = [
    [C.OPT_LIST, Buffer.alloc(0)],
    [C.OPT_STRUCTURED_REPLY, Buffer.alloc(0)],
    [C.OPT_INFO, infoData('')],
    [C.OPT_GO, infoData('')],
    [C.OPT_LIST_META_CONTEXT, Buffer.alloc(8)],
    [C.OPT_EXTENDED_HEADERS, Buffer.alloc(0)],
  ];
  for (const [option, data] of refused) {
    c.sendOption(option, data);
    const reply = await c.readOptionReply();
    assert.equal(reply.option, option);
    assert.equal(reply.type, C.REP_ERR_TLS_REQD, `option ${option}`);
    assert.match(reply.data.toString(), /TLS is required/);
  }
  // A plain GO was refused, so the session is still in the handshake: a READ header is junk.
  c.sendOption(C.OPT_ABORT);
  assert.equal((await c.readOptionReply()).type, C.REP_ACK);
  assert.ok(await c.waitClosed());
  assert.equal(server.stats().requests.read, 0);
  assert.equal(dir.attached.size, 0, 'no export was ever attached');

  // EXPORT_NAME cannot be refused with an error: the session ends without export data.
  const e = await RawClient.handshake(port);
  t.after(() => e.destroy());
  e.sendOption(C.OPT_EXPORT_NAME, Buffer.from(''));
  assert.ok(await e.waitClosed());
  assert.equal(e.available(), 0, 'nothing after the greeting');
  assert.equal(dir.attached.size, 0);
});

test('require, any plain option sequence: nothing but ERR_TLS_REQD comes back (fast-check)', async (t) => {
  const { port, server, dir } = await pskServer(t, 'require');
  // Every option number but the three that change state (EXPORT_NAME, ABORT, STARTTLS).
  const option = fc
    .oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 0xffffffff }))
    .filter((o) => o !== C.OPT_EXPORT_NAME && o !== C.OPT_ABORT && o !== C.OPT_STARTTLS);
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(option, fc.uint8Array({ maxLength: 64 })), { minLength: 1, maxLength: 12 }),
      async (options) => {
        const c = await RawClient.handshake(port);
        try {
          for (const [opt, data] of options) {
            c.sendOption(opt, Buffer.from(data));
            const reply = await c.readOptionReply();
            assert.equal(reply.option, opt >>> 0);
            assert.equal(reply.type, C.REP_ERR_TLS_REQD);
          }
        } finally {
          c.destroy();
        }
      },
    ),
    { numRuns: 25 },
  );
  assert.equal(dir.attached.size, 0);
  assert.equal(server.stats().protocolViolations, 0);
});

test('STARTTLS rules: no data, nothing may follow it in plain text, not twice', async (t) => {
  const { port, server, psk } = await pskServer(t, 'require');
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_STARTTLS, Buffer.from([1]));
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_INVALID);

  // STARTTLS followed at once by a plain GO (a command-injection attempt): dropped, not answered.
  const violationsBefore = server.stats().protocolViolations;
  const injected = await RawClient.handshake(port);
  t.after(() => injected.destroy());
  const header = Buffer.alloc(16);
  header.writeUInt32BE(C.IHAVEOPT_HI, 0);
  header.writeUInt32BE(C.IHAVEOPT_LO, 4);
  header.writeUInt32BE(C.OPT_STARTTLS, 8);
  const go = Buffer.alloc(16 + infoData('').length);
  header.copy(go);
  go.writeUInt32BE(C.OPT_GO, 8);
  go.writeUInt32BE(infoData('').length, 12);
  infoData('').copy(go, 16);
  injected.write(Buffer.concat([header, go]));
  assert.ok(await injected.waitClosed());
  assert.equal(injected.available(), 0, 'neither ACK nor a GO reply was sent');
  assert.equal(server.stats().protocolViolations, violationsBefore + 1);

  // A second STARTTLS inside TLS: ERR_INVALID, and the session goes on.
  const secure = await startTlsRaw(port, 'tenant-a', psk.keys.get('tenant-a')!);
  t.after(() => secure.destroy());
  assert.equal(last(await optionOverTls(secure, C.OPT_STARTTLS)), C.REP_ERR_INVALID);
  assert.equal(last(await optionOverTls(secure, C.OPT_STRUCTURED_REPLY)), C.REP_ACK, 'options work over TLS');
});

test('what was negotiated in plain text is forgotten once TLS is up', async (t) => {
  const { port, psk } = await pskServer(t, 'on');
  // Structured replies and base:allocation in plain text, then STARTTLS.
  const secure = await startTlsRaw(port, 'tenant-a', psk.keys.get('tenant-a')!, async (plain) => {
    plain.sendOption(C.OPT_STRUCTURED_REPLY);
    assert.equal((await plain.readOptionReply()).type, C.REP_ACK);
    plain.sendOption(C.OPT_SET_META_CONTEXT, metaContextData('', ['base:allocation']));
    const replies = await plain.readOptionRepliesUntilFinal();
    assert.equal(replies[replies.length - 1]!.type, C.REP_ACK);
  });
  t.after(() => secure.destroy());
  const go = await optionOverTls(secure, C.OPT_GO, infoData(''));
  assert.equal(last(go), C.REP_ACK);
  const exportInfo = go.find((r) => r.type === C.REP_INFO && r.data.readUInt16BE(0) === C.INFO_EXPORT)!;
  const flags = exportInfo.data.readUInt16BE(10);
  assert.equal(flags & C.FLAG_SEND_DF, 0, 'DF is offered only with structured replies negotiated over TLS');
});

test('on: plain clients and TLS clients are both served', async (t) => {
  const { port, psk } = await pskServer(t, 'on');
  const { client: raw, size } = await RawClient.open(port, 'small');
  t.after(() => raw.destroy());
  assert.equal(size, 1 * MiB);
  await raw.pwrite(0, Buffer.alloc(4096, 0x5a));

  const client = await NbdClient.connect({
    port,
    exportName: 'small',
    tls: { psk: { identity: 'tenant-b', file: psk.file } },
  });
  t.after(() => client.destroy());
  assert.deepEqual(await client.read(0, 4096), Buffer.alloc(4096, 0x5a));
});

test('the TS client over TLS-PSK: data, list and info; plain against require fails with MF_TLS', async (t) => {
  const { port, psk, server } = await pskServer(t, 'require');
  const tls = { psk: { identity: 'tenant-a', key: psk.keys.get('tenant-a')!.toString('hex') } };
  const client = await NbdClient.connect({ port, exportName: '', tls });
  t.after(() => client.destroy());
  assert.ok(client.structuredReplies, 'options were negotiated again over TLS');
  const data = randomBytes(3 * MiB + 17);
  await client.write(12345, data);
  await client.flush();
  assert.deepEqual(await client.read(12345, data.length), data);
  assert.deepEqual(
    (await NbdClient.list({ port, tls })).map((e) => e.name),
    ['', 'small', 'ro'],
  );
  assert.equal((await NbdClient.info({ port, exportName: 'small', tls })).size, 1 * MiB);

  await assert.rejects(NbdClient.connect({ port, exportName: '' }), (err: Error & { code?: string }) => {
    assert.equal(err.code, ErrorCodes.TLS);
    assert.match(err.message, /requires TLS/);
    return true;
  });
  await assert.rejects(NbdClient.list({ port }), { code: ErrorCodes.TLS });
  // A reconnect keeps TLS.
  await client.reconnect();
  assert.deepEqual(await client.read(12345, 64), data.subarray(0, 64));
  assert.equal(server.tlsMode, 'require');
});

test('a client that asks for TLS never falls back to plain text', async (t) => {
  const root = credentialsDir(t);
  const psk = makePsk(root, ['tenant-a']);
  const { port, server } = await startServer(testDirectory());
  t.after(() => server.close());
  await assert.rejects(
    NbdClient.connect({ port, tls: { psk: { identity: 'tenant-a', file: psk.file } } }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, ErrorCodes.TLS);
      assert.match(err.message, /refused NBD_OPT_STARTTLS/);
      return true;
    },
  );
  assert.equal(server.stats().requests.read + server.stats().requests.write, 0);
});

test('a wrong PSK key or an unknown identity fails the handshake; the server keeps serving', async (t) => {
  const { port, psk, server } = await pskServer(t, 'require');
  const wrongKey = { psk: { identity: 'tenant-a', key: randomBytes(32) } };
  const unknown = { psk: { identity: 'mallory', key: randomBytes(32) } };
  for (const tls of [wrongKey, unknown]) {
    await assert.rejects(NbdClient.connect({ port, tls }), (err: Error & { code?: string }) => {
      assert.equal(err.code, ErrorCodes.TLS, err.message);
      return true;
    });
  }
  const good = await NbdClient.connect({ port, tls: { psk: { identity: 'tenant-b', file: psk.file } } });
  t.after(() => good.destroy());
  await good.write(0, Buffer.alloc(512, 1));
  assert.deepEqual(await good.read(0, 512), Buffer.alloc(512, 1));
  assert.equal(server.stats().protocolViolations, 0, 'a failed TLS handshake is not a protocol violation');
  // The failed connections are gone from the server, not lingering half-open.
  await until(() => server.stats().connectionsOpen === 1, 'failed TLS sessions to close');
  assert.equal(server.stats().connectionsTotal, 3);
});

test('the handshake timeout also bounds a TLS handshake that never comes', async (t) => {
  const root = credentialsDir(t);
  const psk = makePsk(root, ['tenant-a']);
  const { port, server } = await startServer(testDirectory(1 * MiB), {
    tls: { mode: 'require', psk: psk.file },
    handshakeTimeoutMs: 200,
  });
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_STARTTLS);
  assert.equal((await c.readOptionReply()).type, C.REP_ACK);
  // No ClientHello: the server gives up when the handshake timer fires.
  assert.ok(await c.waitClosed(30_000), 'the server closed the silent connection');
  await until(() => server.stats().connectionsOpen === 0, 'the session to end');
});

test('X.509: the client verifies the server against its CA; a wrong CA fails cleanly', async (t) => {
  const root = credentialsDir(t);
  const x509 = makeX509(root, ['tenant-a']);
  const { port, server } = await startServer(testDirectory(), {
    tls: { mode: 'require', certificates: x509.serverDir },
  });
  t.after(() => server.close());
  const client = await NbdClient.connect({
    port,
    exportName: 'small',
    tls: { certificates: x509.clientDir('tenant-a') },
  });
  t.after(() => client.destroy());
  await client.write(0, Buffer.alloc(1024, 7));
  assert.deepEqual(await client.read(0, 1024), Buffer.alloc(1024, 7));

  await assert.rejects(
    NbdClient.connect({ port, tls: { certificates: x509.otherCaDir } }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, ErrorCodes.TLS);
      assert.match(err.message, /certificate/i);
      return true;
    },
  );
  // The server is still there for others.
  const again = await NbdClient.connect({ port, tls: { certificates: x509.clientDir('tenant-a') } });
  await again.disconnect();
});

test('X.509 with client verification: a client without a certificate, or with one from another CA, is refused', async (t) => {
  const root = credentialsDir(t);
  const x509 = makeX509(root, ['tenant-a']);
  const { port, server } = await startServer(testDirectory(), {
    tls: { mode: 'require', certificates: x509.serverDir, verifyClientCertificates: true },
  });
  t.after(() => server.close());
  const withCert = await NbdClient.connect({ port, tls: { certificates: x509.clientDir('tenant-a') } });
  await withCert.disconnect();
  // Trusts the server but has no certificate of its own.
  const ca = readFileSync(join(x509.serverDir, 'ca-cert.pem'));
  await assert.rejects(NbdClient.connect({ port, tls: { ca } }), { code: ErrorCodes.TLS });
  // A certificate from another CA: the TLS handshake completes, then the server refuses it.
  await assert.rejects(NbdClient.connect({ port, tls: { certificates: x509.rogueClientDir } }), {
    code: ErrorCodes.TLS,
  });
  const again = await NbdClient.connect({ port, tls: { certificates: x509.clientDir('tenant-a') } });
  await again.disconnect();
});

test('PSK and X.509 with client verification on one server: each client uses its own kind', async (t) => {
  const { port, x509, psk } = await mixedServer(t);
  const byPsk = await NbdClient.connect({ port, tls: { psk: { identity: 'tenant-b', file: psk.file } } });
  await byPsk.write(0, Buffer.alloc(4096, 9));
  await byPsk.disconnect();
  const byCert = await NbdClient.connect({ port, tls: { certificates: x509.clientDir('tenant-a') } });
  assert.deepEqual(await byCert.read(0, 4096), Buffer.alloc(4096, 9));
  await byCert.disconnect();
});

test('server TLS options are checked at construction, naming the file', async (t) => {
  const root = credentialsDir(t);
  const directory = testDirectory(1 * MiB);
  assert.throws(() => new NbdServer({ directory, tls: { mode: 'require' } }), {
    code: ErrorCodes.INVALID_ARGUMENT,
    message: /needs credentials/,
  });
  assert.throws(() => new NbdServer({ directory, tls: { mode: 'on', psk: join(root, 'absent.psk') } }), {
    code: ErrorCodes.INVALID_ARGUMENT,
    message: /absent\.psk \(ENOENT\)/,
  });
  assert.throws(() => new NbdServer({ directory, tls: { mode: 'on', certificates: root } }), {
    code: ErrorCodes.INVALID_ARGUMENT,
    message: /server-cert\.pem/,
  });
  assert.throws(() => new NbdServer({ directory, tls: { mode: 'sometimes' as 'on' } }), {
    code: ErrorCodes.INVALID_ARGUMENT,
  });
  // 'off' needs nothing and answers STARTTLS as a server without TLS does.
  const off = await startServer(testDirectory(1 * MiB), { tls: { mode: 'off' } });
  t.after(() => off.server.close());
  const c = await RawClient.handshake(off.port);
  t.after(() => c.destroy());
  c.sendOption(C.OPT_STARTTLS);
  assert.equal((await c.readOptionReply()).type, C.REP_ERR_UNSUP);
});

test('PSK files: psktool lines round-trip; malformed lines are refused with their line number', () => {
  const identity = fc.stringMatching(/^[A-Za-z0-9._@-]{1,64}$/);
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.tuple(identity, fc.uint8Array({ minLength: 16, maxLength: 64 })), {
        minLength: 1,
        maxLength: 8,
        selector: ([id]) => id,
      }),
      (entries) => {
        const text = ['# keys', ...entries.map(([id, key]) => formatPskLine(id, key)), ''].join('\n');
        const parsed = parsePskFile(text);
        assert.equal(parsed.size, entries.length);
        for (const [id, key] of entries) assert.deepEqual(parsed.get(id), Buffer.from(key));
      },
    ),
  );
  const bad: Array<[string, RegExp]> = [
    ['', /holds no key/],
    ['nokey\n', /line 1: expected identity:hexkey/],
    ['a:' + '00'.repeat(16) + '\nb:xyz\n', /line 2: .*hex digits/],
    ['a:' + '00'.repeat(8), /line 1: the key has 8 bytes/],
    ['a:' + '00'.repeat(16) + '\na:' + '11'.repeat(16), /appears twice/],
    ['bad id:' + '00'.repeat(16), /identity must be/],
  ];
  for (const [text, message] of bad) {
    assert.throws(() => parsePskFile(text, 'keys.psk'), { code: ErrorCodes.INVALID_ARGUMENT, message });
  }
});

test('a PSK identity named without its key authenticates nothing, even when OpenSSL drops the PSK for a certificate handshake', async (t) => {
  // The attack: offer tenant-b's identity with a wrong key, TLS 1.3 suites whose hash does not
  // fit the PSK (so OpenSSL skips it before checking the binder), and a client certificate from
  // another CA. The server must neither take the identity nor accept the certificate.
  const { port, x509 } = await mixedServer(t);
  const plain = await RawClient.handshake(port);
  t.after(() => plain.destroy());
  plain.sendOption(C.OPT_STARTTLS);
  assert.equal((await plain.readOptionReply()).type, C.REP_ACK);
  const outcome = await new Promise<string>((resolve) => {
    const s = tlsConnect({
      socket: plain.socket,
      minVersion: 'TLSv1.3',
      ciphers: 'TLS_AES_256_GCM_SHA384',
      ca: readFileSync(join(x509.serverDir, 'ca-cert.pem')),
      cert: readFileSync(join(x509.rogueClientDir, 'client-cert.pem')),
      key: readFileSync(join(x509.rogueClientDir, 'client-key.pem')),
      pskCallback: () => ({ identity: 'tenant-b', psk: randomBytes(32) }),
      checkServerIdentity: () => undefined,
    });
    s.once('error', (err) => resolve(`refused: ${err.message}`));
    s.once('close', () => resolve('refused: closed'));
    s.once('secureConnect', () => {
      optionOverTls(s, C.OPT_LIST).then(
        (replies) => resolve(`served ${replies.length} LIST replies`),
        () => resolve('refused after TLS'),
      );
    });
  });
  assert.match(outcome, /^refused/, outcome);
});
