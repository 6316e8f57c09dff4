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
import * as C from '../../src/nbd/protocol/constants.js';
import { startServer } from './helpers.js';
import { RawClient } from './raw-client.js';
import { playScenario, scenarioArb } from './fuzz-scenarios.js';

const FUZZ_MS = 8_000;
const RUN_WAIT_MS = 25;
const GOOD_REGION_BYTES = 256 * 1024;

// ---- generators ----------------------------------------------------------------------------

/** Scenarios on the test exports '' and 'ro'; 'small' belongs to the good client. */
const scenario = scenarioArb(['', 'ro'], ['small']);

// ---- the test ------------------------------------------------------------------------------

test('fuzzed handshakes and requests never hurt the server or a good client', async (t) => {
  const { server, port, dir } = await startServer(undefined, { handshakeTimeoutMs: 2_000 });
  t.after(() => server.close());

  // The fuzzer targets the read-only export too: nothing may change it.
  const roBefore = Buffer.from(dir.exports.get('ro')!.data);

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
      await playScenario(port, s, RUN_WAIT_MS);
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
  assert.equal(Buffer.compare(dir.exports.get('ro')!.data, roBefore), 0, 'the read-only export is unchanged');
  t.diagnostic(`${runs} fuzz runs, ${goodOps} good ops, stats ${JSON.stringify(server.stats())}`);
});

/** Waits (a macrotask at a time) until `done()` holds; fails naming `what` after `deadlineMs`. */
async function until(what: string, done: () => boolean, deadlineMs = 10_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!done()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

test('an abrupt disconnect in the middle of a WRITE payload writes only whole pages that arrived', async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const small = dir.exports.get('small')!;
  const { client: before } = await RawClient.open(port, 'small');
  assert.equal(await before.pwrite(0, Buffer.alloc(128 * 1024, 0x5a)), 0);
  before.destroy();
  await until('the first connection to close', () => server.stats().connectionsOpen === 0);

  // A 64 KiB WRITE over that data, of which only 30,000 bytes arrive before the hang-up. The
  // server counts a request when its header is parsed: wait for that, then hang up.
  const writesBefore = server.stats().requests.write;
  const { client: c } = await RawClient.open(port, 'small');
  const header = Buffer.alloc(28);
  header.writeUInt32BE(C.REQUEST_MAGIC, 0);
  header.writeUInt16BE(C.CMD_WRITE, 6);
  header.writeBigUInt64BE(4096n, 16);
  header.writeUInt32BE(65_536, 24);
  c.write(Buffer.concat([header, Buffer.alloc(30_000, 0xab)]));
  await until('the partial WRITE to reach the server', () => server.stats().requests.write > writesBefore);
  c.destroy();
  await until('the connection to close', () => server.stats().connectionsOpen === 0);
  // Pieces are written as they arrive, so some of the payload may be in place; but never a
  // torn page: each page of the range is wholly old or wholly new, the new ones are a prefix
  // of what arrived, and the page the payload stopped in (its bytes carried, not written) is old.
  const page = small.blockSize; // the server carries partial blocks of the export's block size
  const arrived = 30_000;
  const first = 4096 / page;
  const last = first + 65_536 / page - 1;
  let newPages = 0;
  for (let p = first; p <= last; p++) {
    const bytes = small.data.subarray(p * page, (p + 1) * page);
    const isNew = bytes.every((b) => b === 0xab);
    assert.ok(isNew || bytes.every((b) => b === 0x5a), `page ${p} is wholly old or wholly new`);
    if (isNew) {
      assert.equal(newPages, p - first, 'the new pages are a prefix of the write');
      newPages++;
    }
  }
  assert.ok(newPages <= Math.floor(arrived / page), 'only pages that arrived whole are written');
  assert.ok(
    small.data.subarray(0, page).every((b) => b === 0x5a) &&
      small.data.subarray((last + 1) * page, 128 * 1024).every((b) => b === 0x5a),
    'the data around the write is intact',
  );
  assert.ok(
    small.data.subarray(128 * 1024).every((b) => b === 0),
    'nothing else was written',
  );
  const { client: d } = await RawClient.open(port, 'small');
  t.after(() => d.destroy());
  assert.equal(await d.pwrite(0, Buffer.from('alive')), 0);
});
