/**
 * Loading file-backed regions at start reports bytes read of the bytes to read (the CLI draws
 * its progress bar from it): growing, and ending at the total once every region has loaded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Appliance } from '../../src/index.js';

const MiB = 1024 * 1024;

test('loading regions at start reports its progress up to the total', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'load-progress-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const first = await Appliance.start({ memory: '64MiB', nbd: { port: 0 }, http: { port: 0 }, dataDir });
  for (const name of ['a', 'b']) {
    const region = await first.registry.create({ name, size: 8 * MiB, file: true });
    const bytes = Buffer.alloc(3 * MiB);
    for (let i = 0; i < bytes.length; i += 4096) bytes.writeUInt32LE(i + 1, i);
    region.write(MiB, bytes);
  }
  await first.stop();

  const reports: [number, number][] = [];
  const again = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    dataDir,
    onLoadProgress: (done, total) => reports.push([done, total]),
  });
  t.after(() => again.stop());
  await again.loaded;
  assert.equal(again.registry.find('a')?.name, 'a');
  assert.equal(again.registry.find('b')?.name, 'b');
  assert.ok(reports.length >= 2, `${reports.length} reports`);
  const total = reports[0]![1];
  assert.ok(total >= 2 * 3 * MiB, `the total (${total}) covers both regions' data`);
  for (let i = 1; i < reports.length; i++) {
    assert.equal(reports[i]![1], total);
    assert.ok(reports[i]![0] > reports[i - 1]![0]);
  }
  assert.equal(reports.at(-1)![0], total, 'done reaches the total');
});
