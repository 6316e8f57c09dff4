/**
 * Bulk data through real clients: nbdcopy of a 64 MiB random file into a region and back out,
 * and fio's nbd engine writing random 4 KiB blocks from several jobs and verifying every one
 * (crc32c) against the appliance process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApplianceProcess, MiB, missing, runOk, tempDir, waitFor } from './appliance-process.js';

interface RegionBody {
  stats: { writes: number; reads: number; bytesWritten: number; residentBytes: number; zeroBytes: number };
}
interface StatsBody {
  nbd: { errors: number; protocolViolations: number; connectionsOpen: number };
}

test(
  'nbdcopy: a 64 MiB random file into a region and back, byte for byte',
  { skip: missing('nbdcopy') },
  async (t) => {
    const app = await ApplianceProcess.start({ memory: '192MiB' });
    t.after(() => app.stop());
    await app.createRegion('copy', '64MiB');
    const tmp = tempDir(t);
    const source = randomBytes(64 * MiB);
    // Zero stretches (one page-aligned, one not) let nbdcopy use its sparse paths too.
    source.fill(0, 8 * MiB, 12 * MiB);
    source.fill(0, 30 * MiB + 123, 31 * MiB + 4567);
    writeFileSync(join(tmp, 'in.bin'), source);

    await runOk('nbdcopy', ['--flush', join(tmp, 'in.bin'), app.uri('copy')], { timeoutMs: 60_000 });
    const region = (await app.api<RegionBody>('GET', '/v1/regions/copy')).body;
    // The zero stretch was not stored as data: at most the partial pages at its ends.
    assert.ok(
      region.stats.residentBytes <= 60 * MiB + 8 * 4096,
      `resident ${region.stats.residentBytes} bytes`,
    );

    await runOk('nbdcopy', [app.uri('copy'), join(tmp, 'out.bin')], { timeoutMs: 60_000 });
    const out = readFileSync(join(tmp, 'out.bin'));
    assert.equal(out.length, source.length);
    assert.ok(out.equals(source), 'copied back byte for byte');

    // Region to region through the appliance, from two connections at once (multi-conn).
    await app.createRegion('copy2', '64MiB');
    await runOk('nbdcopy', ['--connections=2', app.uri('copy'), app.uri('copy2')], { timeoutMs: 60_000 });
    await runOk('nbdcopy', [app.uri('copy2'), join(tmp, 'out2.bin')], { timeoutMs: 60_000 });
    assert.ok(readFileSync(join(tmp, 'out2.bin')).equals(source), 'region-to-region copy');

    const stats = (await app.api<StatsBody>('GET', '/v1/stats')).body;
    assert.equal(stats.nbd.errors, 0);
    assert.equal(stats.nbd.protocolViolations, 0);
  },
);

test('fio: random 4 KiB writes from 4 jobs, verified with crc32c', { skip: missing('fio') }, async (t) => {
  const app = await ApplianceProcess.start({ memory: '128MiB' });
  t.after(() => app.stop());
  await app.createRegion('fio', '32MiB');
  // fio writes verify state files into its working directory: keep them out of the repo.
  const cwd = tempDir(t);
  const r = await runOk(
    'fio',
    [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${app.uri('fio')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--numjobs=4',
      '--size=8M',
      '--offset_increment=8M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--runtime=20',
      '--group_reporting',
    ],
    { timeoutMs: 60_000, cwd },
  );
  assert.match(r.stdout, /err= 0/);
  assert.doesNotMatch(r.output, /verify: bad|crc32c: verify failed|fio: pid=\d+, err=/);
  assert.deepEqual(readdirSync(cwd), [], 'fio left no files behind');
  // Every block was written and read back through the appliance: 4 jobs x 2048 blocks.
  const region = (await app.api<RegionBody>('GET', '/v1/regions/fio')).body;
  assert.ok(region.stats.writes >= 4 * 2048, `writes ${region.stats.writes}`);
  assert.ok(region.stats.reads >= 4 * 2048, `reads ${region.stats.reads}`);
  assert.equal(region.stats.residentBytes, 32 * MiB);
  const stats = (await app.api<StatsBody>('GET', '/v1/stats')).body;
  assert.equal(stats.nbd.errors, 0);
  // fio's connections all end (the server notices each disconnect shortly after fio exits).
  await waitFor(
    'fio connections to close',
    async () => (await app.api<StatsBody>('GET', '/v1/stats')).body.nbd.connectionsOpen === 0,
  );
});
