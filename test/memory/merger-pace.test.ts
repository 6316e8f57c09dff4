/**
 * Pacing of the background merger (src/memory/merger-pace.ts): the sleep that keeps a slice to
 * its share of a core, the checks on the settings, and the rate meter (with a clock the test
 * drives, so nothing here depends on timing).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  CPU_SHARE_MIN,
  RATE_WINDOW_MS,
  RateMeter,
  checkCpuShare,
  checkSliceMs,
  sleepAfterMs,
} from '../../src/memory/merger-pace.js';
import { ErrorCodes } from '../../src/errors.js';

test('property: a slice and the sleep after it use the share asked for', () => {
  fc.assert(
    fc.property(
      fc.double({ min: 0.001, max: 1000, noNaN: true }),
      fc.double({ min: CPU_SHARE_MIN, max: 1, noNaN: true }),
      (workMs, share) => {
        const sleep = sleepAfterMs(workMs, share);
        assert.ok(sleep >= 0);
        assert.ok(Math.abs(workMs / (workMs + sleep) - share) < 1e-9, `work ${workMs}, share ${share}`);
      },
    ),
  );
  assert.equal(sleepAfterMs(5, 1), 0, 'a whole core: no sleep');
  assert.equal(sleepAfterMs(5, 0.1), 45);
});

test('the share and the slice are checked, naming the setting, with MF_INVALID_ARGUMENT', () => {
  for (const good of [CPU_SHARE_MIN, 0.1, 1]) assert.equal(checkCpuShare(good), good);
  for (const bad of [0, CPU_SHARE_MIN / 2, 1.0001, -1, Number.NaN, '0.5', undefined, null]) {
    assert.throws(
      () => checkCpuShare(bad, '--merge-cpu'),
      (error: Error & { code?: string }) =>
        error.code === ErrorCodes.INVALID_ARGUMENT &&
        error.message.startsWith(`--merge-cpu ${String(bad)} `) &&
        /--no-merge/.test(error.message),
    );
  }
  for (const good of [0.1, 5, 1000]) assert.equal(checkSliceMs(good), good);
  for (const bad of [0, 0.05, 1001, Number.NaN, '5']) {
    assert.throws(() => checkSliceMs(bad), { code: ErrorCodes.INVALID_ARGUMENT });
  }
});

test('the rate meter reports pages per second and the share of a core over its window', () => {
  const meter = new RateMeter(1000, 0);
  assert.equal(meter.pagesPerSecond(0), 0);
  assert.equal(meter.cpuShare(0), 0);
  // 10 ms of work visiting 5000 pages every 100 ms, for 3 s.
  for (let t = 100; t <= 3000; t += 100) meter.record(10, 5000, t);
  // The window is now [2000, 3000]: the ten slices ending at 2000 to 2900, plus the one ending
  // at 3000 (a slice counts whole in the bucket where it ends): 110 ms and 55,000 pages.
  assert.ok(Math.abs(meter.cpuShare(3000) - 0.11) < 1e-9, `share ${meter.cpuShare(3000)}`);
  assert.ok(Math.abs(meter.pagesPerSecond(3000) - 55_000) < 1e-6, `rate ${meter.pagesPerSecond(3000)}`);
  // Halfway through the next window: [2000, 3500].
  assert.ok(Math.abs(meter.cpuShare(3500) - 0.11 / 1.5) < 1e-9);
  // Idle for more than two windows: nothing left in the window.
  assert.equal(meter.cpuShare(6000), 0);
  assert.equal(meter.pagesPerSecond(6000), 0);
  // Work again: the old work does not come back.
  meter.record(50, 1000, 6500);
  assert.ok(meter.cpuShare(6500) <= 50 / 1000 + 1e-9);
});

test('property: the meter never reports more work than wall time (beyond one slice), nor a negative rate', () => {
  const sliceMaxMs = 50;
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          sleepMs: fc.double({ min: 0, max: 3000, noNaN: true }),
          workMs: fc.double({ min: 0, max: sliceMaxMs, noNaN: true }),
          pages: fc.nat(10_000),
        }),
        { maxLength: 50 },
      ),
      (slices) => {
        const meter = new RateMeter(RATE_WINDOW_MS, 0);
        let now = 0;
        for (const { sleepMs, workMs, pages } of slices) {
          // A sleep, then a slice recorded when it ends: a slice that began before the window
          // counts whole, so the share may exceed the truth by one slice over the window.
          now += sleepMs + workMs;
          meter.record(workMs, pages, now);
          const used = meter.cpuShare(now);
          assert.ok(used >= 0 && used <= 1 + sliceMaxMs / RATE_WINDOW_MS + 1e-9, `share ${used}`);
          assert.ok(meter.pagesPerSecond(now) >= 0);
        }
      },
    ),
  );
});
