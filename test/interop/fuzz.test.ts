/**
 * Hostile NBD traffic against a running appliance process, under a time budget: malformed
 * handshakes and request frames (nbd-fuzz.ts) thrown at its regions while well-behaved clients
 * keep writing and verifying their own. Properties:
 *   - the appliance process never dies and logs no internal error (a protocol violation is a
 *     warning about one connection, nothing more);
 *   - it keeps greeting new connections, and its structured replies always parse;
 *   - the good clients never see an error or a wrong byte, and their regions end exactly as
 *     their models say; the read-only region is untouched; every fuzz connection is released.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import * as C from '../../src/nbd/protocol/constants.js';
import { RawClient } from '../nbd/raw-client.js';
import {
  ApplianceProcess,
  KiB,
  MiB,
  assertQemuIoClean,
  missing,
  qemuIo,
  waitFor,
} from './appliance-process.js';
import { playScenario, scenarioArb } from '../nbd/fuzz-scenarios.js';

const FUZZ_MS = 8_000;
const GOOD_BYTES = MiB;
const QEMU_BLOCKS = 16;
const QEMU_BLOCK_BYTES = 64 * KiB;

interface StatsBody {
  nbd: {
    connectionsOpen: number;
    protocolViolations: number;
    errors: number;
    connectionsTotal: number;
    requests: { write: number };
  };
}
interface RegionBody {
  stats: { connections: number };
}

/** The raw good client: writes (some FUA), trims, zeroes, flushes; reads back after each. */
async function goodClientLoop(port: number, model: Buffer, running: () => boolean): Promise<number> {
  const { client } = await RawClient.open(port, 'good');
  let ops = 0;
  let seed = 7;
  const next = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  try {
    while (running()) {
      const length = 512 * (1 + (next() % 32));
      const offset = 512 * (next() % ((GOOD_BYTES - length) / 512));
      const kind = next() % 10;
      const cookie = BigInt(ops + 1);
      if (kind < 6) {
        const block = Buffer.alloc(length, next() & 0xff);
        block.writeUInt32BE(ops, 0);
        assert.equal(await client.pwrite(offset, block, kind === 0 ? C.CMD_FLAG_FUA : 0, cookie), 0);
        block.copy(model, offset);
      } else if (kind < 9) {
        const type = kind === 6 ? C.CMD_TRIM : C.CMD_WRITE_ZEROES;
        const flags = kind === 8 ? C.CMD_FLAG_NO_HOLE : 0;
        client.request(type, offset, length, { cookie, flags });
        const reply = await client.readReply();
        assert.equal(reply.error, 0, `command ${type} failed`);
        model.fill(0, offset, offset + length);
      } else {
        client.request(C.CMD_FLUSH, 0, 0, { cookie });
        assert.equal((await client.readReply()).error, 0, 'flush failed');
      }
      assert.ok(
        (await client.pread(offset, length, true, cookie)).equals(model.subarray(offset, offset + length)),
        `good client read back wrong bytes at ${offset}+${length} (op ${ops})`,
      );
      ops++;
    }
  } finally {
    client.destroy();
  }
  return ops;
}

/** A real client beside it: qemu-io writing a pattern to a block and reading it back, in turn. */
async function qemuLoop(app: ApplianceProcess, patterns: number[], running: () => boolean): Promise<number> {
  let runs = 0;
  while (running()) {
    const block = runs % QEMU_BLOCKS;
    const pattern = 1 + ((runs * 37) % 250);
    const at = block * QEMU_BLOCK_BYTES;
    assertQemuIoClean(
      await qemuIo(app.uri('good-q'), [
        `write -P ${pattern} ${at} ${QEMU_BLOCK_BYTES}`,
        `read -P ${pattern} ${at} ${QEMU_BLOCK_BYTES}`,
      ]),
      2,
    );
    patterns[block] = pattern;
    runs++;
  }
  return runs;
}

test('the appliance survives fuzzed handshakes and requests, and good clients keep their data', async (t) => {
  const app = await ApplianceProcess.start({ memory: '64MiB', defaultSize: '1MiB' });
  t.after(() => app.stop());
  await app.createRegion('good', GOOD_BYTES);
  await app.createRegion('good-q', QEMU_BLOCKS * QEMU_BLOCK_BYTES);
  await app.createRegion('fuzz', '4MiB');
  await app.createRegion('odd', 100_001, { tenant: 'other' });
  await app.createRegion('ro', '1MiB', { readOnly: true });
  // A clone of the good region: fuzz writes into it must never show through to the original.
  const { client: seeder } = await RawClient.open(app.nbdPort, 'good');
  const model = Buffer.alloc(GOOD_BYTES);
  for (let i = 0; i < GOOD_BYTES; i++) model[i] = (i * 31) & 0xff;
  assert.equal(await seeder.pwrite(0, model), 0);
  seeder.destroy();
  assert.equal((await app.api('POST', '/v1/regions/good/clone', { name: 'snap' })).status, 201);

  let fuzzing = true;
  const running = () => fuzzing;
  const qemuPatterns = new Array<number>(QEMU_BLOCKS).fill(0);
  const good = goodClientLoop(app.nbdPort, model, running);
  // qemu-io is part of the test (scripts/setup.sh installs it): missing, it fails, never skips silently.
  const qemuMissing = missing('qemu-io');
  assert.equal(qemuMissing, false, `the qemu-io loop cannot run: ${qemuMissing}`);
  const qemu = qemuLoop(app, qemuPatterns, running);
  // Stop the good loops even if the fuzz fails, so the failure is reported and nothing hangs.
  let runs = 0;
  try {
    await fc.assert(
      fc.asyncProperty(scenarioArb(['', 'fuzz', 'snap', 'odd', 'ro'], ['good', 'good-q']), async (s) => {
        runs++;
        await playScenario(app.nbdPort, s);
      }),
      { interruptAfterTimeLimit: FUZZ_MS, numRuns: 1_000_000 },
    );
  } finally {
    fuzzing = false;
  }
  const [goodOps, qemuRuns] = await Promise.all([good, qemu]);

  assert.ok(app.alive, `the appliance died; stderr:\n${app.stderr}`);
  // Not a performance check: only that the fuzzer and the good client really ran.
  assert.ok(runs > 20, `only ${runs} fuzz runs`);
  assert.ok(goodOps > 20, `only ${goodOps} good operations`);

  // The good region holds exactly the model, through a new connection.
  const { client: check } = await RawClient.open(app.nbdPort, 'good');
  t.after(() => check.destroy());
  for (let at = 0; at < GOOD_BYTES; at += 256 * KiB) {
    assert.ok(
      (await check.pread(at, 256 * KiB)).equals(model.subarray(at, at + 256 * KiB)),
      `good region differs from its model in [${at}, ${at + 256 * KiB})`,
    );
  }
  // The read-only region is still all zeros.
  const { client: ro } = await RawClient.open(app.nbdPort, 'ro');
  t.after(() => ro.destroy());
  assert.ok(
    (await ro.pread(0, MiB)).every((b) => b === 0),
    'the read-only region changed',
  );
  // qemu-io ran, and its blocks hold their last patterns.
  assert.ok(qemuRuns > 0, 'the qemu-io loop never completed a run');
  const commands = qemuPatterns.map(
    (p, block) => `read -P ${p} ${block * QEMU_BLOCK_BYTES} ${QEMU_BLOCK_BYTES}`,
  );
  assertQemuIoClean(await qemuIo(app.uri('good-q'), commands), QEMU_BLOCKS);
  check.destroy();
  ro.destroy();

  // Every fuzz connection is released, violations were seen and only warned about.
  await waitFor(
    'every connection to close',
    async () => (await app.api<StatsBody>('GET', '/v1/stats')).body.nbd.connectionsOpen === 0,
  );
  const stats = (await app.api<StatsBody>('GET', '/v1/stats')).body;
  assert.ok(stats.nbd.protocolViolations > 0, 'the fuzz never broke the protocol: it is not fuzzing');
  const errors = app.logs.filter((line) => typeof line.level === 'number' && line.level >= 50);
  assert.deepEqual(errors, [], 'the appliance logged errors');
  t.diagnostic(
    `${runs} fuzz runs, ${goodOps} good ops, ${qemuRuns} qemu-io runs, ${stats.nbd.connectionsTotal} connections, ` +
      `${stats.nbd.protocolViolations} violations, ${stats.nbd.errors} error replies`,
  );
});

test('an abrupt disconnect in the middle of a WRITE payload writes only whole pages that arrived', async (t) => {
  const app = await ApplianceProcess.start({ memory: '16MiB', defaultSize: '1MiB' });
  t.after(() => app.stop());
  await app.createRegion('w', '1MiB');
  const { client: before } = await RawClient.open(app.nbdPort, 'w');
  assert.equal(await before.pwrite(0, Buffer.alloc(128 * KiB, 0x5a)), 0);
  before.destroy();

  // A 64 KiB WRITE over that data, of which only 30,000 bytes arrive before the hang-up. The
  // appliance counts a request when its header is parsed: wait for that, then hang up.
  const writesSeen = async () => (await app.api<StatsBody>('GET', '/v1/stats')).body.nbd.requests.write;
  const writesBefore = await writesSeen();
  const { client: c } = await RawClient.open(app.nbdPort, 'w');
  const header = Buffer.alloc(C.REQUEST_HEADER_BYTES);
  header.writeUInt32BE(C.REQUEST_MAGIC, 0);
  header.writeUInt16BE(C.CMD_WRITE, 6);
  header.writeBigUInt64BE(4096n, 16);
  header.writeUInt32BE(64 * KiB, 24);
  c.write(Buffer.concat([header, Buffer.alloc(30_000, 0xab)]));
  await waitFor('the partial WRITE to reach the appliance', async () => (await writesSeen()) > writesBefore);
  c.destroy();
  await waitFor(
    'the connection to close',
    async () => (await app.api<RegionBody>('GET', '/v1/regions/w')).body.stats.connections === 0,
  );
  const { client: d } = await RawClient.open(app.nbdPort, 'w');
  t.after(() => d.destroy());
  const bytes = await d.pread(0, 256 * KiB);
  // Pieces are written as they arrive: some whole pages of the write may be in place, never a
  // torn one, never the page it stopped in, and always a prefix (see test/nbd/fuzz.test.ts).
  const page = 4096;
  let newPages = 0;
  for (let p = 1; p <= 16; p++) {
    const inPage = bytes.subarray(p * page, (p + 1) * page);
    const isNew = inPage.every((b) => b === 0xab);
    assert.ok(isNew || inPage.every((b) => b === 0x5a), `page ${p} is wholly old or wholly new`);
    if (isNew) {
      assert.equal(newPages, p - 1, 'the new pages are a prefix of the write');
      newPages++;
    }
  }
  assert.ok(newPages <= Math.floor(30_000 / page), 'only pages that arrived whole are written');
  assert.ok(
    bytes.subarray(0, page).every((b) => b === 0x5a) &&
      bytes.subarray(17 * page, 128 * KiB).every((b) => b === 0x5a),
    'the data around the write is intact',
  );
  assert.ok(
    bytes.subarray(128 * KiB).every((b) => b === 0),
    'nothing else was written',
  );
  assert.equal(await d.pwrite(0, Buffer.from('alive')), 0);
  assert.ok(app.alive);
});
