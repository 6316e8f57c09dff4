/**
 * The CLI's progress line: the bar and its figures, the ETA from a measured rate, and that it
 * draws only on a terminal and erases itself before other output.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProgressLine, RateMeter, formatEta, renderProgress } from '../../src/cli/progress-line.js';

test('the bar, the counts, the rate and the ETA', () => {
  const line = renderProgress({ done: 250, total: 1000, ratePerSec: 50, label: 'round 2', unit: 'pages' }, 8);
  assert.equal(line, '[##------]   25%  round 2  250/1,000 pages  50 pages/s  ETA 15s');
  // No rate yet: no ETA; an overfull round is shown full.
  assert.equal(
    renderProgress({ done: 12, total: 10, ratePerSec: undefined, label: 'blackout', unit: 'pages' }, 4),
    '[####]  100%  blackout  12/10 pages',
  );
  assert.equal(formatEta(59.2), '60s');
  assert.equal(formatEta(61), '1m01s');
  assert.equal(formatEta(7260), '2h01m');
  assert.equal(formatEta(Number.POSITIVE_INFINITY), '?');
});

test('the rate is measured between samples and smoothed', () => {
  const meter = new RateMeter();
  assert.equal(meter.sample(0, 0), undefined);
  assert.equal(meter.sample(100, 1000), 100);
  assert.equal(meter.sample(100, 2000), 70); // a stalled poll moves it, gently
});

test('drawn only on a terminal, and erased before other lines', () => {
  const written: string[] = [];
  const fake = (isTTY: boolean) =>
    ({ isTTY, columns: 200, write: (chunk: string) => written.push(chunk) }) as unknown as NodeJS.WriteStream;
  const figures = { done: 1, total: 2, ratePerSec: undefined, label: 'round 1', unit: 'pages' };
  new ProgressLine(fake(false)).update(figures);
  assert.equal(written.length, 0);
  const line = new ProgressLine(fake(true));
  line.clear(); // nothing shown yet: nothing to erase
  assert.equal(written.length, 0);
  line.update(figures);
  assert.ok(written[0]!.startsWith('\r[#'), written[0]);
  assert.ok(written[0]!.endsWith('50%  round 1  1/2 pages\u001b[K'), written[0]);
  line.clear();
  assert.equal(written[1], '\r\u001b[K');
});
