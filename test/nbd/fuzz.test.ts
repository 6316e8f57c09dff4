/**
 * Fuzzing the server under a time budget: random, mostly malformed handshakes and request
 * streams (bad magics, truncated frames, huge lengths, unknown options / commands / flags,
 * out-of-range offsets, abrupt disconnects mid-payload) hit a running server while a good
 * client keeps writing and verifying its own export. Properties:
 *   - every fuzz connection is greeted (the server keeps accepting);
 *   - in structured mode every byte the server sends parses as reply messages carrying cookies
 *     the fuzzer sent;
 *   - the good client never sees an error or a wrong byte, and its export ends up exactly as
 *     its model says.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as C from '../../src/nbd/constants.js';
import { startServer } from './helpers.js';
import { infoData, metaContextData, RawClient } from './raw-client.js';

const FUZZ_MS = 8_000;
const RUN_WAIT_MS = 25;
const GOOD_REGION_BYTES = 256 * 1024;

// ---- generators ----------------------------------------------------------------------------

const u32 = fc.oneof(
  fc.constantFrom(
    0,
    1,
    511,
    4096,
    65_536,
    C.PAYLOAD_BYTES_MAX,
    C.PAYLOAD_BYTES_MAX + 1,
    2 ** 31,
    2 ** 32 - 1,
  ),
  fc.nat({ max: 2 ** 32 - 1 }),
);
const u64 = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    4096n,
    64n * 1024n * 1024n - 1n,
    64n * 1024n * 1024n,
    2n ** 53n,
    2n ** 63n,
    2n ** 64n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 64n * 1024n * 1024n }),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
);
const fuzzName = fc
  .oneof(fc.constantFrom('', 'ro', 'nope'), fc.string({ maxLength: 20 }))
  .filter((n) => n !== 'small');

/** One option frame: a known or random option, data well-formed or not, a declared length that may lie. */
const optionFrame = fc
  .record({
    option: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.nat({ max: 2 ** 32 - 1 })),
    data: fc.oneof(
      fuzzName.chain((name) =>
        fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }).map((infos) => infoData(name, infos)),
      ),
      fuzzName.chain((name) =>
        fc
          .array(fc.oneof(fc.constantFrom('base:', 'base:allocation', 'qemu:x', 'nocolon'), fc.string()), {
            maxLength: 4,
          })
          .map((q) => metaContextData(name, q)),
      ),
      fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
    ),
    lie: fc.option(u32, { freq: 5 }),
    badMagic: fc.boolean().map((b) => b && Math.random() < 0.1),
  })
  .map(({ option, data, lie, badMagic }) => {
    const header = Buffer.alloc(16);
    header.writeUInt32BE(badMagic ? 0x12345678 : C.IHAVEOPT_HI, 0);
    header.writeUInt32BE(C.IHAVEOPT_LO, 4);
    header.writeUInt32BE(option >>> 0, 8);
    header.writeUInt32BE((lie ?? data.length) >>> 0, 12);
    return Buffer.concat([header, data]);
  });

/** One request frame, mostly with the right magic so that validation gets exercised. */
const requestFrame = fc
  .record({
    magic: fc.oneof(
      { weight: 9, arbitrary: fc.constant(C.REQUEST_MAGIC) },
      { weight: 1, arbitrary: fc.nat({ max: 2 ** 32 - 1 }) },
    ),
    flags: fc.oneof(fc.constantFrom(0, 1, 2, 4, 8, 16, 3, 0x20), fc.integer({ min: 0, max: 0xffff })),
    type: fc.oneof(
      { weight: 6, arbitrary: fc.integer({ min: 0, max: 7 }) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    offset: u64,
    length: fc.oneof(fc.integer({ min: 0, max: 70_000 }), u32),
    payload: fc.constantFrom('exact', 'short', 'none'),
  })
  .map((r) => {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(r.magic >>> 0, 0);
    header.writeUInt16BE(r.flags, 4);
    header.writeUInt16BE(r.type, 6);
    header.writeBigUInt64BE(r.cookie, 8);
    header.writeBigUInt64BE(r.offset, 16);
    header.writeUInt32BE(r.length >>> 0, 24);
    let payload = Buffer.alloc(0);
    if (r.type === C.CMD_WRITE && r.payload !== 'none') {
      // Never more than 64 KiB actually sent: a longer declared length leaves the frame truncated.
      const sent = Math.min(r.length, 65_536, r.payload === 'short' ? Math.floor(r.length / 2) : r.length);
      payload = Buffer.alloc(sent, 0xee);
    }
    return { bytes: Buffer.concat([header, payload]), cookie: r.cookie };
  });

const scenario = fc.record({
  phase: fc.constantFrom('handshake', 'transmission'),
  clientFlags: fc.oneof(
    { weight: 8, arbitrary: fc.constant(3) },
    { weight: 1, arbitrary: fc.nat({ max: 2 ** 32 - 1 }) },
  ),
  options: fc.array(optionFrame, { maxLength: 6 }),
  exportName: fc.constantFrom('', 'ro'),
  structured: fc.boolean(),
  requests: fc.array(requestFrame, { minLength: 1, maxLength: 12 }),
  garbage: fc.option(fc.uint8Array({ minLength: 1, maxLength: 100 }), { freq: 6 }),
  splits: fc.array(fc.integer({ min: 1, max: 200 }), { maxLength: 6 }),
  abrupt: fc.boolean(),
});

// ---- checks --------------------------------------------------------------------------------

/** Parses a structured-mode reply stream; returns an error string or undefined. */
function checkReplies(stream: Buffer, cookies: Set<bigint>): string | undefined {
  let at = 0;
  while (at < stream.length) {
    if (stream.length - at < 4) return undefined; // cut short by our disconnect
    const magic = stream.readUInt32BE(at);
    let size: number;
    if (magic === C.SIMPLE_REPLY_MAGIC) size = 16;
    else if (magic === C.STRUCTURED_REPLY_MAGIC) {
      if (stream.length - at < 20) return undefined;
      size = 20 + stream.readUInt32BE(at + 16);
      if (size > C.PAYLOAD_BYTES_MAX + 64) return `reply chunk of ${size} bytes`;
    } else return `bad reply magic 0x${magic.toString(16)} at ${at}`;
    if (stream.length - at < 16) return undefined;
    const cookie = stream.readBigUInt64BE(at + 8);
    if (!cookies.has(cookie)) return `reply for a cookie never sent: ${cookie}`;
    at += size;
  }
  return undefined;
}

function sendSplit(c: RawClient, bytes: Buffer, splits: number[]): void {
  let at = 0;
  for (const s of splits) {
    if (at >= bytes.length) break;
    c.write(bytes.subarray(at, at + s));
    at += s;
  }
  if (at < bytes.length) c.write(bytes.subarray(at));
}

/** Reads whatever arrives until the server closes or the wait ends. */
async function drain(c: RawClient, ms: number): Promise<Buffer> {
  await c.waitClosed(ms);
  return c.read(c.available(), 0).catch(() => Buffer.alloc(0));
}

async function optionReplies(c: RawClient): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await c.readOptionReply();
    if (r.type === C.REP_ACK || r.type >= 0x80000000) return;
  }
}

// ---- the test ------------------------------------------------------------------------------

test('fuzzed handshakes and requests never hurt the server or a good client', async (t) => {
  const { server, port, dir } = await startServer(undefined, { handshakeTimeoutMs: 2_000 });
  t.after(() => server.close());

  // The good client: writes random blocks into 'small' and reads each one back, for as long as
  // the fuzzer runs; its model is what the region must hold.
  const model = Buffer.alloc(GOOD_REGION_BYTES);
  const { client: good } = await RawClient.open(port, 'small');
  t.after(() => good.destroy());
  let fuzzing = true;
  let goodOps = 0;
  const goodLoop = (async () => {
    let seed = 1;
    const next = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
    while (fuzzing) {
      const length = 512 * (1 + (next() % 16));
      const offset = 512 * (next() % ((GOOD_REGION_BYTES - length) / 512));
      const block = Buffer.alloc(length, next() & 0xff);
      block.writeUInt32BE(goodOps, 0);
      assert.equal(await good.pwrite(offset, block, goodOps % 7 === 0 ? C.CMD_FLAG_FUA : 0), 0);
      block.copy(model, offset);
      assert.deepEqual(await good.pread(offset, length), block);
      goodOps++;
    }
  })();

  let runs = 0;
  await fc.assert(
    fc.asyncProperty(scenario, async (s) => {
      runs++;
      const c = await RawClient.connect(port);
      try {
        const greeting = await c.read(18);
        assert.equal(greeting.toString('latin1', 0, 8), 'NBDMAGIC', 'server still greets');
        const flags = Buffer.alloc(4);
        if (s.phase === 'handshake') {
          flags.writeUInt32BE(s.clientFlags >>> 0);
          const bytes = Buffer.concat([flags, ...s.options, ...(s.garbage ? [Buffer.from(s.garbage)] : [])]);
          sendSplit(c, bytes, s.splits);
          if (s.abrupt) return;
          await drain(c, RUN_WAIT_MS);
          return;
        }
        // Transmission: a proper handshake into a fuzz export, then the frames.
        flags.writeUInt32BE(3);
        c.write(flags);
        if (s.structured) {
          c.sendOption(C.OPT_STRUCTURED_REPLY);
          await optionReplies(c);
          c.sendOption(C.OPT_SET_META_CONTEXT, metaContextData(s.exportName, ['base:allocation']));
          await optionReplies(c);
        }
        await c.go(s.exportName);
        const cookies = new Set(s.requests.map((r) => r.cookie));
        const bytes = Buffer.concat([
          ...s.requests.map((r) => r.bytes),
          ...(s.garbage ? [Buffer.from(s.garbage)] : []),
        ]);
        sendSplit(c, bytes, s.splits);
        if (s.abrupt) return;
        const replies = await drain(c, RUN_WAIT_MS);
        if (s.structured) {
          const problem = checkReplies(replies, cookies);
          assert.equal(problem, undefined, problem);
        }
      } finally {
        c.destroy();
      }
    }),
    { interruptAfterTimeLimit: FUZZ_MS, numRuns: 1_000_000 },
  );
  fuzzing = false;
  await goodLoop;

  assert.ok(runs > 50, `only ${runs} fuzz runs`);
  assert.ok(goodOps > 50, `only ${goodOps} good operations`);
  // The good client's export holds exactly its model, seen directly and through a new connection.
  const small = dir.exports.get('small');
  assert.ok(small);
  assert.ok(Buffer.from(small.data.buffer, 0, GOOD_REGION_BYTES).equals(model));
  const { client: check } = await RawClient.open(port, 'small');
  t.after(() => check.destroy());
  assert.ok((await check.pread(0, GOOD_REGION_BYTES)).equals(model));
  assert.ok(
    small.data.subarray(GOOD_REGION_BYTES).every((b) => b === 0),
    'nothing outside the region changed',
  );
  t.diagnostic(`${runs} fuzz runs, ${goodOps} good ops, stats ${JSON.stringify(server.stats())}`);
});

test('an abrupt disconnect in the middle of a WRITE payload writes nothing', async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const { client: c } = await RawClient.open(port, 'small');
  const header = Buffer.alloc(28);
  header.writeUInt32BE(C.REQUEST_MAGIC, 0);
  header.writeUInt16BE(C.CMD_WRITE, 6);
  header.writeUInt32BE(65_536, 24);
  c.write(Buffer.concat([header, Buffer.alloc(30_000, 0xab)]));
  await new Promise((r) => setTimeout(r, 50));
  c.destroy();
  for (let i = 0; i < 100 && server.stats().connectionsOpen > 0; i++)
    await new Promise((r) => setTimeout(r, 10));
  assert.equal(server.stats().connectionsOpen, 0);
  assert.ok(dir.exports.get('small')?.data.every((b) => b === 0));
  const { client: d } = await RawClient.open(port, 'small');
  t.after(() => d.destroy());
  assert.equal(await d.pwrite(0, Buffer.from('alive')), 0);
});
