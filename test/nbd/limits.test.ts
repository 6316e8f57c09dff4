/**
 * Resource bounds of the NBD server, one hostile client at a time, over real sockets: the
 * handshake idle timeout (idleness, not total time), the payload stall timeout (progress, not
 * total time), the reply stall timeout, the opt-in idle timeout, the connection limit, the LIST
 * cap, and the global buffer budget (requests wait, nothing is lost, the budget returns to 0).
 *
 * Time is never asserted. Where a test shows that progress keeps a connection alive, it moves
 * the server's clock itself (`server.checkTimeouts(now)`) after confirming that the server has
 * received the bytes (`bytesReceived`), with real timeouts far too long to fire meanwhile.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fc from 'fast-check';
import { BufferBudget, type BudgetAccount, type BudgetWaiter } from '../../src/nbd/server/budget.js';
import { defaultMaxConnections, NbdServer, openFilesLimit } from '../../src/nbd/index.js';
import * as C from './nbd-numbers.js';
import { ErrorCodes } from '../../src/errors.js';
import { startServer } from './helpers.js';
import { testDirectory, MemoryExport } from './memory-export.js';
import { encodeRequest, RawClient } from './raw-client.js';
import { waitFor } from '../interop/appliance-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Timeouts that never fire during a test (its clock is moved by hand instead). */
const NEVER_MS = 3_600_000;

async function received(server: NbdServer, bytes: number): Promise<void> {
  await waitFor(`server to receive ${bytes} bytes`, () => server.stats().bytesReceived >= bytes);
}

test('handshake: idleness between options is timed out, not the whole handshake', async (t) => {
  const { server, port } = await startServer(testDirectory(), { handshakeTimeoutMs: 60_000 });
  t.after(() => server.close());
  const busy = await RawClient.handshake(port);
  t.after(() => busy.destroy());
  const quiet = await RawClient.handshake(port);
  t.after(() => quiet.destroy());
  let now = Date.now();
  // Five options 40 s apart (200 s in all, far beyond 60 s): each one is progress.
  for (let i = 0; i < 5; i++) {
    await busy.go('small', [], C.OPT_INFO);
    now += 40_000;
    server.checkTimeouts(now);
  }
  assert.equal(busy.closed, false);
  // The quiet one sent its flags and nothing since: closed at the first check past 60 s.
  assert.equal(await quiet.waitClosed(), true);
  assert.equal(server.stats().handshakeTimeouts, 1);
  const { size } = await busy.go('small');
  assert.equal(size, MiB);
});

test('handshake idle timeout closes a silent client with the real timer', async (t) => {
  const { server, port } = await startServer(testDirectory(), { handshakeTimeoutMs: 200 });
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  assert.equal(await c.waitClosed(10_000), true);
  assert.equal(server.stats().handshakeTimeouts, 1);
});

test('a WRITE payload that stops arriving closes the connection; a slow moving one does not', async (t) => {
  // Only our checks below sample progress: the server's own ticker, on the real clock, would
  // sample a piece's arrival at a real time long before the simulated one and make the slow
  // writer look stalled for minutes.
  t.mock.timers.enable({ apis: ['setInterval'] });
  const { server, port } = await startServer(testDirectory(), { stallTimeoutMs: 60_000 });
  t.after(() => server.close());
  const { client: slow } = await RawClient.open(port);
  t.after(() => slow.destroy());
  const { client: stuck } = await RawClient.open(port);
  t.after(() => stuck.destroy());
  const payload = Buffer.alloc(MiB, 0x5a);

  const header = encodeRequest(C.CMD_WRITE, 0, payload.length, 0, 11n);
  let sent = server.stats().bytesReceived;
  stuck.write(Buffer.concat([header, payload.subarray(0, 1000)]));
  sent += header.length + 1000;
  await received(server, sent);
  slow.write(header);
  sent += header.length;
  let now = Date.now();
  // The slow client sends a piece per 40 s of server time: 16 pieces, 640 s, never 60 s still.
  const piece = payload.length / 16;
  for (let i = 0; i < 16; i++) {
    slow.write(payload.subarray(i * piece, (i + 1) * piece));
    sent += piece;
    await received(server, sent);
    now += 40_000;
    server.checkTimeouts(now);
    assert.equal(server.stats().payloadStalls, i < 2 ? 0 : 1, `after piece ${i}`);
  }
  // stuck sent nothing since the first check: closed once 60 s passed without progress.
  assert.equal(await stuck.waitClosed(), true);
  const reply = await slow.readReply();
  assert.equal(reply.error, 0);
  assert.equal(reply.cookie, 11n);
  assert.deepEqual(await slow.pread(0, payload.length), payload);
  assert.equal(server.stats().payloadStalls, 1);
});

test('payload stall timeout closes a stalled WRITE with the real timer and frees its budget', async (t) => {
  const { server, port } = await startServer(testDirectory(), { stallTimeoutMs: 200 });
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  c.write(Buffer.concat([encodeRequest(C.CMD_WRITE, 0, 8 * MiB, 0, 1n), Buffer.alloc(4096)]));
  await waitFor('the payload to be reserved', () => server.stats().bufferBytesUsed >= 8 * MiB);
  assert.equal(await c.waitClosed(10_000), true);
  assert.equal(server.stats().payloadStalls, 1);
  await waitFor('the budget to be free again', () => server.stats().bufferBytesUsed === 0);
});

test('replies left unread close the connection after the stall timeout', async (t) => {
  const { server, port } = await startServer(testDirectory(), { stallTimeoutMs: 200 });
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  c.socket.pause();
  const frames: Buffer[] = [];
  for (let i = 0; i < 64; i++) frames.push(encodeRequest(C.CMD_READ, i * MiB, MiB, 0, BigInt(i)));
  c.write(Buffer.concat(frames));
  await waitFor('the connection to close', () => server.stats().connectionsOpen === 0, 20_000);
  assert.equal(server.stats().replyStalls, 1);
  assert.equal(server.stats().bufferBytesUsed, 0);
});

test('idle timeout: off by default, and when set it closes idle connections only', async (t) => {
  const plain = await startServer();
  t.after(() => plain.server.close());
  assert.equal(plain.server.effectiveLimits.idleTimeoutMs, 0);
  const { client: kept } = await RawClient.open(plain.port);
  t.after(() => kept.destroy());
  plain.server.checkTimeouts(Date.now() + 365 * 24 * 3_600_000);
  assert.deepEqual(await kept.pread(0, 512), Buffer.alloc(512));
  assert.equal(plain.server.stats().idleTimeouts, 0);

  const { server, port } = await startServer(testDirectory(), {
    idleTimeoutMs: 60_000,
    stallTimeoutMs: NEVER_MS,
  });
  t.after(() => server.close());
  const { client: idle } = await RawClient.open(port);
  t.after(() => idle.destroy());
  const { client: waiting } = await RawClient.open(port);
  t.after(() => waiting.destroy());
  // `waiting` has half a request header on the wire: a request is arriving, it is not idle.
  const before = server.stats().bytesReceived;
  waiting.write(encodeRequest(C.CMD_READ, 0, 512, 0, 5n).subarray(0, 10));
  await received(server, before + 10);
  server.checkTimeouts(Date.now() + 61_000);
  assert.equal(await idle.waitClosed(), true);
  assert.equal(server.stats().idleTimeouts, 1);
  waiting.write(encodeRequest(C.CMD_READ, 0, 512, 0, 5n).subarray(10));
  const reply = await waiting.readReply();
  assert.equal(reply.cookie, 5n);
  assert.equal(reply.error, 0);
});

test('idle timeout closes an idle connection with the real timer', async (t) => {
  const { server, port } = await startServer(testDirectory(), { idleTimeoutMs: 200 });
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port);
  t.after(() => c.destroy());
  assert.deepEqual(await c.pread(0, 512), Buffer.alloc(512));
  assert.equal(await c.waitClosed(10_000), true);
  assert.equal(server.stats().idleTimeouts, 1);
});

test('connection limit: extra connections are closed before the greeting, served again later', async (t) => {
  const { server, port } = await startServer(testDirectory(), { maxConnections: 3 });
  t.after(() => server.close());
  const open: RawClient[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await RawClient.handshake(port);
    t.after(() => c.destroy());
    open.push(c);
  }
  const refused = await RawClient.connect(port);
  t.after(() => refused.destroy());
  await assert.rejects(refused.read(C.SERVER_GREETING_BYTES), /closed/);
  assert.equal(server.stats().connectionsRefused, 1);
  assert.equal(server.stats().connectionsOpen, 3);

  open[0].destroy();
  await waitFor('a slot to free', () => server.stats().connectionsOpen === 2);
  const { client: later } = await RawClient.open(port, 'small');
  t.after(() => later.destroy());
  assert.deepEqual(await later.pread(0, 512), Buffer.alloc(512));
});

test('the default connection limit leaves descriptors for everything else', () => {
  const limits = (soft: string) =>
    `Limit                     Soft Limit           Hard Limit           Units\n` +
    `Max open files            ${soft}                 65536                files\n`;
  assert.equal(openFilesLimit(limits('1024')), 1024);
  assert.equal(openFilesLimit(limits('unlimited')), Number.MAX_SAFE_INTEGER);
  assert.equal(openFilesLimit('garbage'), C.OPEN_FILES_FALLBACK);
  assert.equal(defaultMaxConnections(1024), (1024 - C.FD_RESERVE) / 2);
  assert.equal(defaultMaxConnections(64), 1);
  assert.equal(defaultMaxConnections(1 << 20), C.CONNECTIONS_DEFAULT_MAX);
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 1 << 24 }), (nofile) => {
      const max = defaultMaxConnections(nofile);
      return (
        max >= 1 &&
        max <= C.CONNECTIONS_DEFAULT_MAX &&
        (nofile < 2 * C.FD_RESERVE || max + C.FD_RESERVE <= nofile)
      );
    }),
  );
});

test('LIST: at most LIST_OPTIONS_MAX per connection, later ones refused by policy', async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  for (let i = 0; i < C.LIST_OPTIONS_MAX + 2; i++) {
    c.sendOption(C.OPT_LIST);
    const replies = await c.readOptionRepliesUntilFinal();
    const last = replies[replies.length - 1];
    if (i < C.LIST_OPTIONS_MAX) {
      assert.equal(last.type, C.REP_ACK);
      assert.equal(replies.length, 4); // three exports, then ACK
    } else {
      assert.equal(last.type, C.REP_ERR_POLICY);
    }
  }
  assert.equal(server.stats().listRefusals, 2);
  const { size } = await c.go('small');
  assert.equal(size, MiB);
});

test('handshake: options are not parsed while their replies go unread', async (t) => {
  const dir = testDirectory();
  // Long names: one LIST answers ~1 MiB.
  for (let i = 0; i < 4000; i++) dir.add(`${'n'.repeat(240)}${i}`, new MemoryExport(4096));
  const { server, port } = await startServer(dir, { replyQueuedBytesMax: 256 * KiB });
  t.after(() => server.close());
  const c = await RawClient.handshake(port);
  t.after(() => c.destroy());
  c.socket.pause();
  const list = Buffer.alloc(16);
  list.writeUInt32BE(C.IHAVEOPT_HI, 0);
  list.writeUInt32BE(C.IHAVEOPT_LO, 4);
  list.writeUInt32BE(C.OPT_LIST, 8);
  c.write(Buffer.concat(new Array<Buffer>(C.LIST_OPTIONS_MAX).fill(list)));
  await waitFor('the handshake to stop reading', () => server.stats().replyPauses > 0);
  // Stopped after at most one LIST beyond the bound, not 16 MiB of replies.
  assert.ok(server.stats().bufferBytesUsed <= 256 * KiB + 1.1 * MiB, `${server.stats().bufferBytesUsed}`);
  c.socket.resume();
  let lists = 0;
  while (lists < C.LIST_OPTIONS_MAX) {
    const r = await c.readOptionReply();
    if (r.type === C.REP_ACK) lists++;
    else assert.equal(r.type, C.REP_SERVER);
  }
  const { size } = await c.go('small');
  assert.equal(size, MiB);
});

test('global budget: a client holding it and reading nothing is closed by the stall timeout; the others are served and nothing is lost', async (t) => {
  const { server, port, dir } = await startServer(testDirectory(), {
    bufferBytesMax: 2 * MiB,
    stallTimeoutMs: 300,
  });
  t.after(() => server.close());
  // The hog asks for 64 x 1 MiB and reads nothing: it fills the budget and stops there.
  const { client: hog } = await RawClient.open(port);
  t.after(() => hog.destroy());
  hog.socket.pause();
  const frames: Buffer[] = [];
  for (let i = 0; i < 64; i++) frames.push(encodeRequest(C.CMD_READ, i * MiB, MiB, 0, BigInt(i)));
  hog.write(Buffer.concat(frames));
  await waitFor('the hog to hold the budget', () => server.stats().bufferBytesUsed >= MiB);

  // A good client's writes and reads are served (before or after the hog's close), with the right bytes.
  const { client: good } = await RawClient.open(port, 'small');
  t.after(() => good.destroy());
  const data = Buffer.alloc(256 * KiB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 13 + 1) & 0xff;
  assert.equal(await good.pwrite(4096, data), 0);
  assert.deepEqual(await good.pread(4096, data.length), data);
  assert.deepEqual(
    Buffer.from((dir.exports.get('small') as MemoryExport).data.subarray(4096, 4096 + data.length)),
    data,
  );
  assert.ok(server.stats().bufferBytesUsed <= 2 * MiB + MiB + 64, `${server.stats().bufferBytesUsed}`);
  await waitFor('the hog to be closed for not reading', () => server.stats().replyStalls === 1, 20_000);
  hog.socket.resume(); // (a paused socket never sees the server's FIN)
  assert.equal(await hog.waitClosed(10_000), true);
  good.destroy();
  await waitFor('every connection to close', () => server.stats().connectionsOpen === 0);
  assert.equal(server.stats().bufferBytesUsed, 0, 'every byte charged was given back');
});

test('global budget: a connection holding nothing is served before one sitting on unread replies', async (t) => {
  // No timeouts at all: no timer moves the server's clock, nobody is closed, nothing ages, so
  // only the grant order decides who gets the bytes F frees.
  const { server, port, dir } = await startServer(testDirectory(), {
    bufferBytesMax: 4 * MiB,
    stallTimeoutMs: 0,
    handshakeTimeoutMs: 0,
  });
  t.after(() => server.close());
  // F reserves a 2 MiB WRITE payload and sends only its first 4 KiB for now.
  const { client: f } = await RawClient.open(port);
  t.after(() => f.destroy());
  const rest = Buffer.alloc(2 * MiB - 4096, 0x11);
  f.write(Buffer.concat([encodeRequest(C.CMD_WRITE, 0, 2 * MiB, 0, 1n), Buffer.alloc(4096, 0x11)]));
  await waitFor('the payload to be reserved', () => server.stats().bufferBytesUsed >= 2 * MiB);
  // A pipelines 1 MiB READs and reads nothing: it fills the rest of the budget (holding more
  // than 1 MiB of unread replies, or its next READ would fit) and waits for more.
  const { client: a } = await RawClient.open(port);
  t.after(() => a.destroy());
  a.socket.pause();
  const frames: Buffer[] = [];
  for (let i = 0; i < 64; i++) frames.push(encodeRequest(C.CMD_READ, 0, MiB, 0, BigInt(100 + i)));
  a.write(Buffer.concat(frames));
  await waitFor('the reader to wait for the budget', () => server.stats().budgetWaits >= 1);
  // G holds nothing and asks for 2 MiB, after A: first come, first served would give A the
  // bytes F frees, and A never gives them back.
  const { client: g } = await RawClient.open(port);
  t.after(() => g.destroy());
  const data = Buffer.alloc(2 * MiB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 11 + 3) & 0xff;
  const waits = server.stats().budgetWaits;
  g.request(C.CMD_WRITE, 8 * MiB, data.length, { cookie: 7n, payload: data });
  await waitFor('the good client to wait for the budget', () => server.stats().budgetWaits > waits);
  f.write(rest);
  const reply = await g.read(C.SIMPLE_REPLY_HEADER_BYTES);
  assert.equal(reply.readUInt32BE(0), C.SIMPLE_REPLY_MAGIC);
  assert.equal(reply.readUInt32BE(4), 0);
  assert.equal(reply.readBigUInt64BE(8), 7n);
  const stored = (dir.exports.get('') as MemoryExport).data.subarray(8 * MiB, 10 * MiB);
  assert.ok(Buffer.from(stored).equals(data));
  // A is still served once it reads: nothing it asked for was lost.
  a.socket.resume();
  for (let i = 0; i < 64; i++) {
    const chunk = await a.readReply(MiB);
    assert.equal(chunk.cookie, BigInt(100 + i));
  }
  for (const c of [f, a, g]) c.destroy();
  await waitFor('every connection to close', () => server.stats().connectionsOpen === 0);
  assert.equal(server.stats().bufferBytesUsed, 0, 'every byte charged was given back');
});

/** Lets grants (delivered from setImmediate) run. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function waiter(account: BudgetAccount, bytes: number, granted: () => void): BudgetWaiter {
  return { account, bytes, since: 0, granted };
}

test('BufferBudget: a connection holding nothing is granted before one holding a lot', async () => {
  const budget = new BufferBudget(12 * MiB);
  const hog = { held: 0 };
  const other = { held: 0 };
  const fresh = { held: 0 };
  assert.ok(budget.tryTake(hog, 8 * MiB));
  assert.ok(budget.tryTake(other, 2 * MiB));
  const order: string[] = [];
  // The hog queues first (FIFO would serve it first), the fresh connection second.
  budget.wait(waiter(hog, 3 * MiB, () => order.push('hog')));
  budget.wait(waiter(fresh, 3 * MiB, () => order.push('fresh')));
  // A newcomer that would hold more than the best waiter does not overtake it.
  assert.equal(budget.tryTake({ held: 0 }, 3 * MiB), false);
  budget.release(other, 2 * MiB); // 4 MiB free: room for one of them
  await turn();
  assert.deepEqual(order, ['fresh']);
  assert.equal(fresh.held, 3 * MiB);
  assert.equal(budget.used, 11 * MiB);
  budget.release(fresh, 3 * MiB);
  await turn();
  assert.deepEqual(order, ['fresh', 'hog']);
  assert.equal(hog.held, 11 * MiB);
  budget.release(hog, 11 * MiB);
  assert.equal(budget.used, 0);
});

test('BufferBudget: an old large waiter is not starved by a stream of small requests', async () => {
  const budget = new BufferBudget(10, 1_000);
  budget.tick(5_000);
  const small = [{ held: 0 }, { held: 0 }, { held: 0 }];
  const big = { held: 0 };
  for (const s of small) assert.ok(budget.tryTake(s, 2));
  const order: string[] = [];
  budget.wait(waiter(big, 8, () => order.push('big')));
  // Young, it is overtaken: the small ones give back and take again, never leaving 8 free.
  for (let i = 0; i < 5; i++) {
    for (const s of small) {
      budget.release(s, 2);
      assert.ok(budget.tryTake(s, 2));
    }
    budget.tick(5_000 + i * 100);
  }
  await turn();
  assert.equal(order.length, 0);
  // Aged: nobody overtakes it any more, and it goes first once its bytes are free.
  budget.tick(6_000);
  budget.release(small[0], 2);
  assert.equal(budget.tryTake(small[0], 2), false);
  budget.wait(waiter(small[0], 2, () => order.push('small')));
  budget.release(small[1], 2);
  await turn();
  assert.deepEqual(order, ['big']);
  budget.release(small[2], 2);
  await turn();
  assert.deepEqual(order, ['big', 'small']);
  assert.equal(budget.used, 10);
});

test('BufferBudget model: never above capacity unless one request alone; every waiter is granted', async () => {
  const CONNECTIONS = 5;
  const op = fc.oneof(
    fc.record({
      kind: fc.constant('ask' as const),
      conn: fc.nat(CONNECTIONS - 1),
      bytes: fc.integer({ min: 1, max: 80 }),
    }),
    fc.record({ kind: fc.constant('free' as const), conn: fc.nat(CONNECTIONS - 1) }),
    fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 0, max: 600 }) }),
  );
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 64 }),
      fc.array(op, { maxLength: 60 }),
      async (capacity, ops) => {
        const budget = new BufferBudget(capacity, 1_000);
        const conns = Array.from({ length: CONNECTIONS }, () => ({
          account: { held: 0 },
          holds: [] as number[],
        }));
        let now = 0;
        let asked = 0;
        let granted = 0;
        const check = (): void => {
          let total = 0;
          let reservations = 0;
          for (const c of conns) {
            const held = c.holds.reduce((a, b) => a + b, 0);
            assert.equal(c.account.held, held, 'an account holds what its connection was granted');
            total += held;
            reservations += c.holds.length;
          }
          assert.equal(budget.used, total);
          assert.ok(budget.used <= capacity || reservations === 1, `${budget.used} > ${capacity}`);
        };
        for (const o of ops) {
          if (o.kind === 'ask') {
            const c = conns[o.conn];
            asked++;
            if (budget.tryTake(c.account, o.bytes)) {
              c.holds.push(o.bytes);
              granted++;
            } else {
              budget.wait(
                waiter(c.account, o.bytes, () => {
                  c.holds.push(o.bytes);
                  granted++;
                }),
              );
            }
          } else if (o.kind === 'free') {
            const c = conns[o.conn];
            const bytes = c.holds.shift();
            if (bytes !== undefined) budget.release(c.account, bytes);
          } else {
            now += o.ms;
            budget.tick(now);
          }
          await turn();
          check();
        }
        // Everybody gives back what they hold, again and again: every waiter must get its turn.
        for (let round = 0; round <= asked && granted < asked; round++) {
          for (const c of conns) {
            for (const bytes of c.holds.splice(0)) budget.release(c.account, bytes);
          }
          await turn();
          check();
        }
        assert.equal(granted, asked, 'every waiter was granted');
        assert.equal(budget.waiting, 0);
        for (const c of conns) for (const bytes of c.holds.splice(0)) budget.release(c.account, bytes);
        assert.equal(budget.used, 0);
      },
    ),
    { numRuns: 300 },
  );
});

test('under budget pressure a client that holds bytes without reading gets the short stall', async (t) => {
  const start = Date.now();
  // No pressure: a big budget, the hog only fills its own reply queue. 55 s pass: kept.
  const calm = await startServer(testDirectory(), { stallTimeoutMs: 60_000, bufferBytesMax: 1 << 30 });
  t.after(() => calm.server.close());
  const { client: patient } = await RawClient.open(calm.port);
  t.after(() => patient.destroy());
  patient.socket.pause();
  const frames: Buffer[] = [];
  for (let i = 0; i < 64; i++) frames.push(encodeRequest(C.CMD_READ, i * MiB, MiB, 0, BigInt(i)));
  patient.write(Buffer.concat(frames));
  await waitFor('the reply queue to fill', () => calm.server.stats().replyPauses > 0);
  for (let ms = 5_000; ms <= 55_000; ms += 5_000) calm.server.checkTimeouts(start + ms);
  assert.equal(calm.server.stats().replyStalls, 0);
  assert.equal(calm.server.stats().connectionsOpen, 1);

  // Pressure: the budget is smaller than what the hog asks for, so requests wait for it.
  const tight = await startServer(testDirectory(), { stallTimeoutMs: 60_000, bufferBytesMax: 2 * MiB });
  t.after(() => tight.server.close());
  const { client: hog } = await RawClient.open(tight.port);
  t.after(() => hog.destroy());
  hog.socket.pause();
  hog.write(Buffer.concat(frames));
  await waitFor('requests to wait for the budget', () => tight.server.stats().budgetWaits > 0);
  let ms = 0;
  while (tight.server.stats().replyStalls === 0 && ms < 50_000) {
    ms += C.PRESSURE_STALL_MS + 100;
    tight.server.checkTimeouts(start + ms);
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.equal(tight.server.stats().replyStalls, 1, 'closed long before the 60 s stall timeout');
  await waitFor('the budget to be free', () => tight.server.stats().bufferBytesUsed === 0);
});

test('stalled writers cannot deadlock the budget: a good 4 MiB WRITE still completes', async (t) => {
  // Writers that send half a payload and stop: with a budget for two payloads, each must either
  // be admitted whole (then closed by the stall timeout) or wait holding nothing.
  const { server, port, dir } = await startServer(testDirectory(), {
    bufferBytesMax: 8 * MiB,
    stallTimeoutMs: 300,
  });
  t.after(() => server.close());
  const half = Buffer.alloc(2 * MiB, 0xee);
  for (let i = 0; i < 6; i++) {
    const { client: w } = await RawClient.open(port);
    t.after(() => w.destroy());
    w.write(Buffer.concat([encodeRequest(C.CMD_WRITE, 0, 4 * MiB, 0, BigInt(i)), half]));
  }
  await waitFor('writers to wait for the budget', () => server.stats().budgetWaits > 0);
  const { client: good } = await RawClient.open(port);
  t.after(() => good.destroy());
  const data = Buffer.alloc(4 * MiB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 5) & 0xff;
  good.request(C.CMD_WRITE, 16 * MiB, data.length, { cookie: 99n, payload: data });
  // A successful WRITE gets a 16-byte simple reply even with structured replies.
  const reply = await good.read(C.SIMPLE_REPLY_HEADER_BYTES, 60_000);
  assert.equal(reply.readUInt32BE(0), C.SIMPLE_REPLY_MAGIC);
  assert.equal(reply.readUInt32BE(4), 0);
  assert.equal(reply.readBigUInt64BE(8), 99n);
  const stored = (dir.exports.get('') as MemoryExport).data.subarray(16 * MiB, 20 * MiB);
  assert.ok(Buffer.from(stored).equals(data));
  assert.ok(server.stats().payloadStalls >= 1);
});

test('replyQueuedBytesMax below a socket high-water mark is refused (the connection could wait for ever)', () => {
  assert.throws(() => new NbdServer({ directory: testDirectory(), replyQueuedBytesMax: 1024 }), {
    code: ErrorCodes.INVALID_ARGUMENT,
    message: /replyQueuedBytesMax must be at least 65536/,
  });
  assert.doesNotThrow(
    () => new NbdServer({ directory: testDirectory(), replyQueuedBytesMax: C.REPLY_QUEUED_BYTES_MIN }),
  );
});
