/**
 * Live migration of an address space over real TCP (127.0.0.1) within one process: every byte
 * checked after migration while a writer dirties pages during the copy (pre-copy and
 * auto-converge), the handover's effects on both sides, and the failures before it (refused,
 * cancelled, listener gone) leaving the source with all its data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { AddressSpace, ErrorCodes, FramePool, MemfabricError } from '../../src/index.js';
import { MigrationListener, migrateSpace, type Migration } from '../../src/migrate/index.js';
import { RUNS, checkPattern, fillPage } from './pattern.js';

const PAGE = 4096;
const migrating = (error: unknown): boolean =>
  error instanceof MemfabricError && error.code === ErrorCodes.MIGRATING;

function source(pages: number): { space: AddressSpace; counters: Uint32Array } {
  const pool = new FramePool({ pageSize: PAGE, capacity: pages * PAGE + PAGE * 64 });
  const space = new AddressSpace(pool, { size: pages * PAGE });
  const counters = new Uint32Array(pages);
  const buf = new Uint8Array(PAGE);
  // Three quarters written, the rest holes; a few zero pages.
  for (let p = 0; p < pages; p++) {
    if (p % 4 === 3) continue;
    counters[p] = 1;
    space.write(p * PAGE, fillPage(buf, p, 1));
  }
  return { space, counters };
}

/**
 * The program: writes whole pages (random ones, each with its next counter) until the space
 * refuses (moved) or `stop`; awaits migration.writable() each turn (async writer) or not.
 */
async function writer(
  space: AddressSpace,
  counters: Uint32Array,
  migration: Migration,
  options: { awaitWritable: boolean; pagesPerTurn: number; seed: number },
): Promise<{ writes: number; refused: number }> {
  const buf = new Uint8Array(PAGE);
  let x = options.seed | 1;
  let writes = 0;
  let refused = 0;
  for (;;) {
    if (options.awaitWritable) {
      try {
        await migration.writable();
      } catch (error) {
        if (migrating(error)) return { writes, refused };
        throw error;
      }
    }
    for (let k = 0; k < options.pagesPerTurn; k++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const p = (x >>> 0) % counters.length;
      const next = counters[p]! + 1;
      try {
        space.write(p * PAGE, fillPage(buf, p, next));
        counters[p] = next; // acknowledged: the write returned
        writes++;
      } catch (error) {
        if (!migrating(error)) throw error;
        refused++;
        if (migration.progress().phase === 'done') return { writes, refused };
      }
    }
    await yieldNow();
  }
}

for (const mode of ['pre-copy', 'auto-converge'] as const) {
  test(`${mode}: every byte arrives while a writer dirties pages during the copy (${RUNS} runs)`, async () => {
    const listener = await MigrationListener.listen({ host: '127.0.0.1', port: 0 });
    try {
      for (let run = 0; run < RUNS; run++) {
        const { space, counters } = source(2048);
        const migration = migrateSpace(space, {
          host: '127.0.0.1',
          port: listener.port,
          autoConverge: mode === 'auto-converge',
          // Auto-converge must act: a target no copy can meet until the writer is slowed or stops.
          ...(mode === 'auto-converge' ? { maxDowntimeMs: 0, maxRounds: 12 } : {}),
        });
        const incoming = await listener.accept();
        assert.equal(incoming.id, migration.id);
        assert.equal(incoming.size, space.size);
        const received = incoming.space();
        const writing = writer(space, counters, migration, {
          awaitWritable: run % 2 === 0,
          pagesPerTurn: mode === 'auto-converge' ? 32 : 8,
          seed: run + 1,
        });
        const report = await migration.done;
        const dest = await received;
        const { writes } = await writing;
        assert.ok(writes > 0, 'the writer ran during the migration');
        assert.equal(checkPattern(dest, counters), undefined);
        assert.equal(checkPattern(space, counters), undefined, 'the source still reads as at the handover');
        assert.equal(dest.size, space.size);
        assert.equal(dest.pageSize, space.pageSize);
        assert.ok(dest.epoch >= report.finalEpoch);
        assert.equal(
          dest.stats().dataPages + dest.stats().zeroPages,
          space.stats().dataPages + space.stats().zeroPages,
        );
        assert.ok(report.rounds.length >= 1);
        assert.equal(report.id, migration.id);
        if (mode === 'auto-converge')
          assert.ok(report.throttle.levelMax > 0, JSON.stringify(report.throttle));
        assert.throws(() => space.writeU32(0, 1), migrating);
        dest.writeU32(0, 7); // the destination owns it now
        assert.equal(dest.readU32(0), 7);
        dest.destroy();
        space.destroy();
      }
    } finally {
      await listener.close();
    }
  });
}

test('holes cost nothing on the wire and zero pages almost nothing', async () => {
  const listener = await MigrationListener.listen();
  const pool = new FramePool({ pageSize: PAGE, capacity: '4MiB' });
  const space = new AddressSpace(pool, { size: '64GiB' });
  space.writeZeroes(0, 256 * PAGE);
  space.writeU32(32 * 1024 * 1024 * 1024, 42);
  const phases: string[] = [];
  const callbacks: number[] = [];
  const migration = migrateSpace(space, {
    host: '127.0.0.1',
    port: listener.port,
    onProgress: (status) => callbacks.push(status.round),
  });
  migration.on('progress', (status) => {
    assert.equal(status.id, migration.id);
    if (phases.at(-1) !== status.phase) phases.push(status.phase);
  });
  const incoming = await listener.accept();
  const [report, dest] = await Promise.all([migration.done, incoming.space()]);
  assert.deepEqual(phases, ['copying', 'blackout', 'done']);
  assert.ok(callbacks.length >= 3);
  assert.ok(report.bytesSent < 2 * PAGE + 4096, `${report.bytesSent} bytes for one data page`);
  assert.equal(dest.readU32(32 * 1024 * 1024 * 1024), 42);
  assert.equal(dest.stats().zeroPages, 256);
  assert.equal(dest.stats().dataPages, 1);
  await listener.close();
});

test('a refused or cancelled migration, or a listener that goes away, leaves the source with everything', async () => {
  const listener = await MigrationListener.listen();
  const { space, counters } = source(512);
  // Refused by the destination.
  const refused = migrateSpace(space, { host: '127.0.0.1', port: listener.port });
  (await listener.accept()).reject('not today');
  await assert.rejects(refused.done, /not today/);
  assert.equal(space.writeGate, undefined);
  // Cancelled during the copy.
  const cancelled = migrateSpace(space, { host: '127.0.0.1', port: listener.port, maxDowntimeMs: 0 });
  const incoming = await listener.accept();
  const receiving = incoming.space().then(
    () => undefined,
    (error: unknown) => error,
  );
  const writing = writer(space, counters, cancelled, { awaitWritable: true, pagesPerTurn: 4, seed: 9 });
  while (cancelled.progress().round < 2) await yieldNow();
  cancelled.cancel('changed my mind');
  await assert.rejects(
    cancelled.done,
    (error: MemfabricError) => migrating(error) && /changed my mind/.test(error.message),
  );
  // The destination discards its partial copy, with the source's reason.
  const discarded = await receiving;
  assert.ok(discarded instanceof MemfabricError && /changed my mind/.test(discarded.message));
  assert.equal(space.writeGate, undefined);
  const buf = new Uint8Array(PAGE);
  space.write(0, fillPage(buf, 0, counters[0]! + 1));
  counters[0]!++;
  assert.equal(checkPattern(space, counters), undefined);
  void writing.catch(() => undefined);
  // Nobody listening any more.
  await listener.close();
  const orphan = migrateSpace(space, { host: '127.0.0.1', port: listener.port });
  await assert.rejects(orphan.done, (error: MemfabricError) => error.code === ErrorCodes.CONNECTION_CLOSED);
  assert.equal(space.writeGate, undefined);
  assert.equal(checkPattern(space, counters), undefined);
});

test('bad options and a second migration are refused', async () => {
  const { space } = source(16);
  assert.throws(
    () => migrateSpace(space, { host: '', port: 1 }),
    (e: MemfabricError) => e.code === ErrorCodes.INVALID_ARGUMENT,
  );
  assert.throws(
    () => migrateSpace(space, { host: 'x', port: 0 }),
    (e: MemfabricError) => e.code === ErrorCodes.INVALID_ARGUMENT,
  );
  assert.throws(
    () => migrateSpace(space, { host: 'x', port: 1, maxDowntimeMs: -1 }),
    (e: MemfabricError) => e.code === ErrorCodes.INVALID_ARGUMENT,
  );
  assert.throws(
    () => migrateSpace(space, { host: 'x', port: 1, mode: 'sideways' as never }),
    (e: MemfabricError) =>
      e.code === ErrorCodes.INVALID_ARGUMENT && /"precopy" or "postcopy"/.test(e.message),
  );
  const listener = await MigrationListener.listen();
  const first = migrateSpace(space, { host: '127.0.0.1', port: listener.port });
  const incoming = await listener.accept();
  const received = incoming.space();
  while (first.progress().phase === 'connecting') await yieldNow();
  assert.throws(() => migrateSpace(space, { host: '127.0.0.1', port: listener.port }), migrating);
  await first.done;
  (await received).destroy();
  assert.throws(() => migrateSpace(space, { host: '127.0.0.1', port: listener.port }), migrating);
  await listener.close();
});
