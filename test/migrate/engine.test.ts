/**
 * The pre-copy engine against an in-memory sink: what it sends (holes free, zero pages as
 * zero runs), the stop rule with synthetic rates, the gate (writes refused in the blackout and
 * after the move, the source whole and writable again after a failure or a cancel),
 * auto-converge slowing a writer, and the invariant as a property: after the handover the
 * sink equals the source as it was at the blackout, whatever the writes in between.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, ErrorCodes, FramePool, MemfabricError } from '../../src/index.js';
import {
  MAX_DOWNTIME_DEFAULT_MS,
  NOT_CONVERGING_ROUNDS,
  PreCopyEngine,
  decideRound,
  expectedDowntimeMs,
  type Handover,
  type RoundState,
} from '../../src/migrate/engine.js';
import { LEVEL_MAX, Throttle, throttleDelayMs } from '../../src/migrate/throttle.js';
import { MemorySink, spacesEqual } from './memory-sink.js';

const PAGE = 4096;

function space(size: number | string = '4MiB'): AddressSpace {
  const pool = new FramePool({ pageSize: PAGE, capacity: '1MiB', maxCapacity: '256MiB' });
  return new AddressSpace(pool, { size });
}

function handover(onHandover?: () => void | Promise<void>): Handover & { committed: boolean; epoch: number } {
  const h = {
    destination: 'the test sink',
    committed: false,
    epoch: 0,
    async handover(finalEpoch: number): Promise<void> {
      h.epoch = finalEpoch;
      await onHandover?.();
    },
    commit(): void {
      h.committed = true;
    },
  };
  return h;
}

const migrating = (error: unknown): boolean =>
  error instanceof MemfabricError && error.code === ErrorCodes.MIGRATING;

const base: RoundState = {
  dirtyPages: 1000,
  previousPages: 10_000,
  roundsSinceSmallest: 0,
  pageSize: PAGE,
  bandwidthBytesPerSec: 100e6,
  rttMs: 0,
  maxDowntimeMs: 30,
  round: 2,
  maxRounds: 30,
  autoConverge: true,
  throttleLevel: 0,
};

test('the stop rule: blackout once the bandwidth sends the dirty set within the target', () => {
  // 1000 pages = 4.096 MB at 100 MB/s = 41 ms: over 30 ms, another round.
  assert.deepEqual(decideRound(base), { action: 'round', shrinking: true });
  // 700 pages = 28.7 ms: under 30 ms.
  assert.deepEqual(decideRound({ ...base, dirtyPages: 700 }), { action: 'blackout', reason: 'converged' });
  // The handover's round trips count: 2 × 1 ms more and 700 pages no longer fit.
  assert.equal(decideRound({ ...base, dirtyPages: 700, rttMs: 1 }).action, 'round');
  // Twice the bandwidth, twice the pages.
  assert.equal(decideRound({ ...base, dirtyPages: 1400, bandwidthBytesPerSec: 200e6 }).action, 'blackout');
  assert.equal(expectedDowntimeMs(1000, PAGE, 0, 0), Number.POSITIVE_INFINITY);
  assert.equal(decideRound({ ...base, bandwidthBytesPerSec: 0 }).action, 'round');
  // Nothing dirty: only the handover is left, waiting cannot shorten it; but a target of 0 is never met.
  assert.deepEqual(decideRound({ ...base, dirtyPages: 0, rttMs: 20 }), {
    action: 'blackout',
    reason: 'converged',
  });
  assert.equal(decideRound({ ...base, dirtyPages: 0, rttMs: 20, maxDowntimeMs: 0 }).action, 'round');
  assert.equal(MAX_DOWNTIME_DEFAULT_MS, 30);
});

test('the stop rule: shrinking, max rounds, and not converging only once nothing is left to try', () => {
  assert.deepEqual(decideRound({ ...base, previousPages: 1500 }), { action: 'round', shrinking: false });
  assert.deepEqual(decideRound({ ...base, round: 30 }), { action: 'blackout', reason: 'max-rounds' });
  const stuck = { ...base, roundsSinceSmallest: NOT_CONVERGING_ROUNDS, previousPages: 1000 };
  // Auto-converge still has room to slow the writer: keep going.
  assert.equal(decideRound({ ...stuck, throttleLevel: 0.5 }).action, 'round');
  assert.deepEqual(decideRound({ ...stuck, throttleLevel: LEVEL_MAX }), {
    action: 'blackout',
    reason: 'not-converging',
  });
  assert.deepEqual(decideRound({ ...stuck, autoConverge: false }), {
    action: 'blackout',
    reason: 'not-converging',
  });
  assert.equal(
    decideRound({ ...stuck, autoConverge: false, roundsSinceSmallest: NOT_CONVERGING_ROUNDS - 1 }).action,
    'round',
  );
});

test('the throttle delay: a share of the writer own time (QEMU), or down to (1 - level) of the bandwidth', () => {
  const close = (a: number, b: number): boolean => Math.abs(a - b) < 1e-9;
  // Writer: 10 000 pages/s unthrottled (0.1 ms a page). Bandwidth 5 000 pages/s, level 0.2:
  // target 4 000 pages/s = 0.25 ms a page, so 0.15 ms of delay (more than 0.1 · 0.2/0.8).
  assert.ok(close(throttleDelayMs(0.2, 5000, 10_000, 0), 0.15));
  // Measured under that delay the writer does 4 000 pages/s: the same delay comes out.
  assert.ok(close(throttleDelayMs(0.2, 5000, 4000, 0.15), 0.15));
  // A writer already below the bandwidth still loses its share: 1 ms a page, level 0.5: 1 ms more.
  assert.ok(close(throttleDelayMs(0.5, 5000, 1000, 0), 1));
  assert.ok(close(throttleDelayMs(0.2, 5000, 1000, 0), 0.25));
  assert.ok(close(throttleDelayMs(0.2, 0, 1000, 0), 0.25)); // bandwidth unknown: the share alone
  assert.equal(throttleDelayMs(0, 5000, 10_000, 0), 0);
  assert.equal(throttleDelayMs(0.99, 1, 1e6, 0), 1); // bounded
});

test('round 1 sends present pages only: holes cost nothing, zero pages go as zero runs', async () => {
  const src = space('8MiB');
  src.write(0, new Uint8Array(PAGE * 3).fill(7));
  src.writeZeroes(PAGE * 100, PAGE * 50);
  src.write(PAGE * 1000, new Uint8Array(PAGE)); // data that reads as zeros
  src.writeU32(PAGE * 2047 + 12, 99);
  const sink = new MemorySink(src, { batchPages: 64 });
  const h = handover();
  const engine = new PreCopyEngine(src, sink, {});
  const report = await engine.run(h);
  assert.equal(spacesEqual(src, sink.target), undefined);
  assert.equal(sink.dataPages, 4);
  assert.equal(report.stopReason, 'converged');
  assert.equal(report.pagesSent, 3 + 50 + 1 + 1);
  // 4 data pages, a few runs and frame headers.
  assert.ok(report.bytesSent < 5 * PAGE, `${report.bytesSent} bytes sent`);
  assert.equal(sink.target.stats().zeroPages, 51);
  assert.ok(h.committed);
  assert.equal(report.finalEpoch, h.epoch);
  assert.ok(report.finalEpoch <= src.epoch);
});

test('writes during the copy reach the sink; the blackout refuses writes; a moved space refuses them for good and still reads', async () => {
  const src = space('4MiB');
  for (let p = 0; p < src.pages; p++) src.writeU32(p * PAGE, p);
  let writes = 0;
  let refusedInBlackout = 0;
  const sink: MemorySink = new MemorySink(src, {
    onSend: () => {
      if (engine.progress().phase === 'blackout') {
        assert.throws(() => src.writeU32(0, 1), migrating);
        refusedInBlackout++;
        return;
      }
      // The program: a few pages rewritten per batch, for a while.
      if (writes < 2000) {
        for (let k = 0; k < 4; k++, writes++) src.writeU32(((writes * 37) % src.pages) * PAGE + 8, writes);
      }
    },
  });
  // A zero downtime target: rounds go on until the writer stops and nothing is dirty.
  const engine: PreCopyEngine = new PreCopyEngine(src, sink, { maxDowntimeMs: 0 });
  const h = handover(() => {
    assert.throws(() => src.write(0, new Uint8Array(10)), migrating);
    assert.equal(spacesEqual(src, sink.target), undefined);
  });
  const report = await engine.run(h);
  assert.ok(report.rounds.length >= 2, 'writes during round 1 make a second round');
  assert.ok(refusedInBlackout > 0);
  assert.equal(spacesEqual(src, sink.target), undefined);
  assert.throws(
    () => src.writeU32(4, 1),
    (error: MemfabricError) => migrating(error) && /has moved to the test sink/.test(error.message),
  );
  assert.throws(() => src.trim(0, PAGE), migrating);
  assert.equal(src.readU32(PAGE * 5), 5);
  await assert.rejects(engine.gate.writable(), migrating);
});

test('a failed handover reopens the gate: the source keeps every byte and goes on writing', async () => {
  const src = space('1MiB');
  for (let p = 0; p < src.pages; p++) src.writeU32(p * PAGE, p + 1);
  const sink = new MemorySink(src);
  const engine = new PreCopyEngine(src, sink, {});
  const companion: string[] = [];
  const h = Object.assign(
    handover(() => {
      throw new MemfabricError(ErrorCodes.CONNECTION_CLOSED, 'the destination died');
    }),
    {
      // A transport's own gate follows the space's: closed with it, reopened with it.
      gateClosed: () => companion.push(`closed, gate ${src.writeGate === undefined ? 'off' : 'on'}`),
      gateReopened: () => companion.push('reopened'),
    },
  );
  await assert.rejects(engine.run(h), (error: MemfabricError) => error.code === ErrorCodes.CONNECTION_CLOSED);
  assert.equal(src.writeGate, undefined);
  assert.equal(h.committed, false);
  assert.deepEqual(companion, ['closed, gate on', 'reopened']);
  assert.equal(engine.progress().phase, 'failed');
  for (let p = 0; p < src.pages; p++) assert.equal(src.readU32(p * PAGE), p + 1);
  src.writeU32(0, 42);
  assert.equal(src.readU32(0), 42);
  await engine.gate.writable();
});

test('a transport failure mid-round and a cancel both leave the source writable with all its data', async () => {
  const src = space('2MiB');
  for (let p = 0; p < src.pages; p++) src.writeU32(p * PAGE, p + 1);
  const failing = new PreCopyEngine(src, new MemorySink(src, { failAt: { sends: 10 } }), {});
  await assert.rejects(failing.run(handover()), /transport failed/);
  assert.equal(src.writeGate, undefined);
  const controller = new AbortController();
  let sends = 0;
  const cancelled = new PreCopyEngine(
    src,
    new MemorySink(src, { onSend: () => ++sends === 5 && controller.abort() }),
    { signal: controller.signal },
  );
  await assert.rejects(cancelled.run(handover()), migrating);
  assert.equal(src.writeGate, undefined);
  src.writeU32(8, 1);
  for (let p = 1; p < src.pages; p++) assert.equal(src.readU32(p * PAGE), p + 1);
});

test('a space already migrating refuses a second migration', async () => {
  const src = space('1MiB');
  src.writeU32(0, 1);
  let second: Promise<unknown> | undefined;
  const sink = new MemorySink(src, {
    onSend: () => {
      second ??= new PreCopyEngine(src, new MemorySink(src), {}).run(handover()).then(
        () => undefined,
        (error: unknown) => error,
      );
    },
  });
  await new PreCopyEngine(src, sink, {}).run(handover());
  assert.ok(migrating(await second!));
});

test('auto-converge slows a writer that outruns the sink, and reports it', async () => {
  const src = space('1MiB');
  for (let p = 0; p < src.pages; p++) src.writeU32(p * PAGE, p);
  let n = 0;
  // A slow sink (synthetic 40 KB/ms: 10 pages per ms) and a writer dirtying 16 fresh pages per batch.
  const writer = (s: AddressSpace, e: () => PreCopyEngine) => (): void => {
    if (e().progress().phase !== 'copying') return;
    for (let k = 0; k < 16; k++, n++) s.writeU32((n % s.pages) * PAGE + 4, n);
  };
  const engine: PreCopyEngine = new PreCopyEngine(
    src,
    new MemorySink(src, { batchPages: 32, bytesPerMs: 40_960, onSend: writer(src, () => engine) }),
    { maxRounds: 8, maxDowntimeMs: 1 },
  );
  const report = await engine.run(handover());
  assert.ok(report.throttle.levelMax > 0, JSON.stringify(report.throttle));
  assert.ok(report.throttle.pagesDelayed > 0);
  assert.ok(report.throttle.parkedMs > 0);
  // Without auto-converge the same writer is never slowed.
  const plain = space('1MiB');
  const sink2 = new MemorySink(plain, {
    batchPages: 32,
    bytesPerMs: 40_960,
    onSend: writer(plain, () => plainEngine),
  });
  const plainEngine: PreCopyEngine = new PreCopyEngine(plain, sink2, {
    maxRounds: 8,
    maxDowntimeMs: 1,
    autoConverge: false,
  });
  const report2 = await plainEngine.run(handover());
  assert.equal(report2.throttle.pagesDelayed, 0);
  assert.equal(report2.throttle.levelMax, 0);
  assert.equal(spacesEqual(plain, sink2.target), undefined);
});

test('an async writer serves its delay in writable() instead of being parked', async () => {
  const src = space('1MiB');
  for (let p = 0; p < src.pages; p++) src.writeU32(p * PAGE, p);
  const engine = new PreCopyEngine(src, new MemorySink(src, { batchPages: 32, bytesPerMs: 40_960 }), {
    maxRounds: 10,
    maxDowntimeMs: 0,
  });
  let stop = false;
  let n = 0;
  const writer = (async () => {
    while (!stop) {
      try {
        await engine.gate.writable();
        // Two pages a turn: at most 2 ms owed between two writable() calls, under the 4 ms park.
        for (let k = 0; k < 2; k++) src.writeU32((n++ % src.pages) * PAGE + 8, n);
        await new Promise((resolve) => setImmediate(resolve));
      } catch (error) {
        if (!migrating(error)) throw error;
        return;
      }
    }
  })();
  const report = await engine.run(handover());
  stop = true;
  await writer;
  assert.ok(report.throttle.pagesDelayed > 0, JSON.stringify(report));
  assert.equal(report.throttle.parkedMs, 0);
  assert.ok(n > 0);
});

test('the throttle: async writers sleep their debt in served(), sync writers in debt are parked, both bounded', async () => {
  const throttle = new Throttle(true);
  throttle.delayPerPageMs = 0.5;
  throttle.charge();
  await throttle.served(); // 0.5 ms owed: less than a timer can sleep, nothing served
  assert.equal(throttle.snapshot().awaitedMs, 0);
  throttle.charge();
  throttle.charge();
  await throttle.served();
  const afterAsync = throttle.snapshot();
  assert.ok(afterAsync.awaitedMs > 0);
  assert.equal(afterAsync.parkedMs, 0);
  for (let i = 0; i < 8; i++) throttle.charge(); // 4 ms owed: parked
  const afterSync = throttle.snapshot();
  assert.ok(afterSync.parkedMs > 0);
  assert.equal(afterSync.pagesDelayed, 11);
  // Each figure is rounded to a microsecond on its own.
  assert.ok(Math.abs(afterSync.delayMs - (afterSync.parkedMs + afterSync.awaitedMs)) <= 0.002);
  const off = new Throttle(false);
  off.adjust({ bandwidthPagesPerSec: 1, shrinking: false }, 1e6);
  assert.equal(off.level, 0);
  assert.equal(off.delayPerPageMs, 0);
});

test('property: after the handover the sink equals the source at the blackout, whatever the writes', async () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('write' as const), page: fc.nat(63), value: fc.nat() }),
    fc.record({
      kind: fc.constant('zero' as const),
      page: fc.nat(63),
      pages: fc.integer({ min: 1, max: 4 }),
    }),
    fc.record({
      kind: fc.constant('trim' as const),
      page: fc.nat(63),
      pages: fc.integer({ min: 1, max: 4 }),
    }),
    fc.record({
      kind: fc.constant('bytes' as const),
      offset: fc.nat(64 * PAGE - 1),
      length: fc.integer({ min: 1, max: 3 * PAGE }),
    }),
  );
  await fc.assert(
    fc.asyncProperty(
      fc.array(op, { maxLength: 30 }),
      fc.array(fc.array(op, { maxLength: 6 }), { maxLength: 40 }),
      fc.integer({ min: 1, max: 6 }),
      fc.boolean(),
      async (initial, steps, batchPages, autoConverge) => {
        const pool = new FramePool({ pageSize: PAGE, capacity: '64KiB', maxCapacity: '16MiB' });
        const src = new AddressSpace(pool, { size: 64 * PAGE - 100 });
        const apply = (o: (typeof initial)[number]): void => {
          try {
            if (o.kind === 'write') src.writeU32(Math.min(o.page * PAGE, src.size - 4), o.value);
            else if (o.kind === 'zero')
              src.writeZeroes(o.page * PAGE, Math.min(o.pages * PAGE, src.size - o.page * PAGE));
            else if (o.kind === 'trim')
              src.trim(o.page * PAGE, Math.min(o.pages * PAGE, src.size - o.page * PAGE));
            else {
              const offset = o.offset % (src.size - 1);
              const length = Math.min(o.length, src.size - offset);
              src.write(offset, new Uint8Array(length).fill((offset % 251) + 1));
            }
          } catch (error) {
            if (!migrating(error)) throw error;
          }
        };
        initial.forEach(apply);
        let step = 0;
        const sink = new MemorySink(src, {
          batchPages,
          onSend: () => (steps[step++] ?? []).forEach(apply),
          onSync: () => (steps[step++] ?? []).forEach(apply),
        });
        let atBlackout: AddressSpace | undefined;
        const engine = new PreCopyEngine(src, sink, { autoConverge, maxDowntimeMs: 0, maxRounds: 6 });
        await engine.run(
          handover(() => {
            atBlackout = src.fork();
          }),
        );
        assert.equal(spacesEqual(atBlackout!, sink.target), undefined);
        assert.equal(spacesEqual(src, sink.target), undefined);
        src.destroy();
      },
    ),
    { numRuns: 150 },
  );
});

test('a sink that stops answering in the blackout is abandoned after blackoutTimeoutMs: writes go on', async () => {
  const src = space('1MiB');
  for (let p = 0; p < src.pages; p++) src.writeU32(p * PAGE, p + 1);
  const engine = new PreCopyEngine(src, new MemorySink(src), { blackoutTimeoutMs: 50 });
  const never = handover(() => new Promise<void>(() => undefined));
  await assert.rejects(engine.run(never), (error: MemfabricError) => error.code === ErrorCodes.TIMEOUT);
  assert.equal(never.committed, false);
  assert.equal(src.writeGate, undefined);
  src.writeU32(0, 9);
  assert.equal(src.readU32(0), 9);
  assert.throws(
    () => new PreCopyEngine(src, new MemorySink(src), { blackoutTimeoutMs: 0 }),
    (error: MemfabricError) => error.code === ErrorCodes.INVALID_ARGUMENT,
  );
});

test('a page written again during its round is skipped there and sent by the next one', async () => {
  const src = space('256KiB'); // 64 pages
  for (let p = 0; p < 64; p++) src.writeU32(p * PAGE, p + 1);
  let sends = 0;
  const sink = new MemorySink(src, {
    batchPages: 4,
    // At the first batch of round 1, the program rewrites page 60, not yet sent.
    onSend: () => ++sends === 1 && src.writeU32(60 * PAGE, 6000),
  });
  const report = await new PreCopyEngine(src, sink, {}).run(handover());
  assert.equal(report.rounds[0]!.skipped, 1);
  assert.equal(report.rounds[0]!.pages, 63);
  assert.equal(report.rounds[0]!.dirtyAfter, 1);
  assert.equal(report.pagesSkipped, 1);
  assert.equal(sink.dataPages, 64, 'every page went exactly once');
  assert.equal(sink.target.readU32(60 * PAGE), 6000);
  assert.equal(spacesEqual(src, sink.target), undefined);
});
