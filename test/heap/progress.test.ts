/**
 * `heap check` and `heap compact` report how far they are (for the CLI's progress bars): bytes
 * done of a fixed total, growing, from 0, every 256 pages.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Heap } from '../../src/index.js';

const PAGE = 4096;
const PAGES = 1000;

async function makeHeap(t: { after: (fn: () => void) => void }): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'heap-progress-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'h.heap');
  const heap = await Heap.create({ path, size: '64MiB', checkpointIntervalMs: 0 });
  const at = heap.alloc(PAGES * PAGE);
  const page = Buffer.alloc(PAGE);
  for (let p = 0; p < PAGES; p++) heap.space.write(at + p * PAGE, page.fill((p % 250) + 1));
  await heap.close();
  return path;
}

function checkReports(reports: [number, number][]): void {
  assert.ok(reports.length >= Math.floor(PAGES / 256), `${reports.length} reports`);
  const total = reports[0]![1];
  assert.ok(total >= PAGES * PAGE, `total ${total} covers the ${PAGES} pages written`);
  assert.equal(reports[0]![0], 0);
  for (let i = 1; i < reports.length; i++) {
    assert.equal(reports[i]![1], total, 'the total stays the same');
    assert.ok(reports[i]![0] > reports[i - 1]![0], 'bytes done grow');
    assert.ok(reports[i]![0] < total);
  }
}

test('check reports its progress over the stored pages', async (t) => {
  const path = await makeHeap(t);
  const heap = await Heap.open({ path, readOnly: true, checkpointIntervalMs: 0 });
  const reports: [number, number][] = [];
  const result = await heap.check({ onProgress: (done, total) => reports.push([done, total]) });
  await heap.close({ checkpoint: false });
  assert.equal(result.ok, true, result.problems.join('; '));
  checkReports(reports);
});

test('compact reports its progress over the pages it copies', async (t) => {
  const path = await makeHeap(t);
  const reports: [number, number][] = [];
  const report = await Heap.compact({ path, onProgress: (done, total) => reports.push([done, total]) });
  checkReports(reports);
  assert.equal(reports[0]![1], report.pages * PAGE);
});
