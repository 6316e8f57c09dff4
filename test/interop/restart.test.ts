/**
 * Appliance restarts with real processes, real signals and real NBD clients (issue 12):
 *
 *   - after run-time merging, a restart in the same small memory loads and serves the region
 *     (loading merges too);
 *   - many regions, merged pages, a corrupt metadata file and a sparse 1 TiB region: every
 *     good region serves its bytes, the corrupt one is reported (API, metric, NBD refusal) and
 *     can be deleted, and the 1 TiB one read only what its extent map names;
 *   - a final save that fails makes SIGTERM exit 1, naming the region;
 *   - a --data-dir with a file in the way fails the start, naming the path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NbdClient } from '../../src/nbd/index.js';
import { RawClient } from '../nbd/raw-client.js';
import {
  ApplianceProcess,
  MiB,
  assertQemuIoClean,
  missing,
  qemuIo,
  tempDir,
  waitFor,
} from './appliance-process.js';

interface RegionBody {
  name: string;
  state: string;
  error: { code: string; message: string } | null;
  load: { bytesRead: number; dataPages: number; sharedPages: number; extentMap: boolean } | null;
  stats: { residentBytes: number; sharedBytes: number };
}

interface StatsBody {
  memory: { usedBytes: number };
}

test(
  'an appliance that merged sixteen 8 MiB writes in 32 MiB restarts with the same arguments and serves them',
  { skip: missing('qemu-io') },
  async (t) => {
    const dataDir = tempDir(t);
    const first = await ApplianceProcess.start({ memory: '32MiB', dataDir, defaultSize: '1MiB' });
    t.after(() => first.stop());
    await first.createRegion('m', '256MiB', { file: true });
    for (let i = 0; i < 16; i++) {
      assertQemuIoClean(await qemuIo(first.uri('m'), [`write -P 0xab ${i * 16}M 8M`]), 1);
      // The merger runs in the background: wait until it has folded this write away, or the
      // next one would not fit in 32 MiB.
      await waitFor(
        `write ${i} to merge`,
        async () => (await first.api<StatsBody>('GET', '/v1/stats')).body.memory.usedBytes <= 4 * MiB,
        30_000,
      );
    }
    assertQemuIoClean(await qemuIo(first.uri('m'), ['flush']));
    assert.deepEqual(await first.stop(), { code: 0, signal: null }, first.stderr);

    const second = await ApplianceProcess.start({ memory: '32MiB', dataDir, defaultSize: '1MiB' });
    t.after(() => second.stop());
    const regions = await second.waitLoaded();
    assert.equal(regions.find((r) => r.name === 'm')?.state, 'ready', JSON.stringify(regions));
    const region = (await second.api<RegionBody>('GET', '/v1/regions/m')).body;
    assert.equal(region.load?.dataPages, (16 * 8 * MiB) / 4096);
    assert.ok(region.load!.sharedPages > region.load!.dataPages - 200, JSON.stringify(region.load));
    const verify: string[] = [];
    for (let i = 0; i < 16; i++) verify.push(`read -P 0xab ${i * 16}M 8M`, `read -P 0 ${i * 16 + 8}M 8M`);
    assertQemuIoClean(await qemuIo(second.uri('m'), verify), verify.length);
    assert.deepEqual(await second.stop(), { code: 0, signal: null }, second.stderr);
  },
);

test(
  'a restart with merged pages, a corrupt metadata file and a sparse 1 TiB region serves every good region',
  { skip: missing('qemu-io') },
  async (t) => {
    const dataDir = tempDir(t);
    const first = await ApplianceProcess.start({ memory: '64MiB', dataDir, defaultSize: '1MiB' });
    t.after(() => first.stop());
    await first.createRegion('twin-a', '8MiB', { file: true, tenant: 't1' });
    await first.createRegion('twin-b', '8MiB', { file: true, tenant: 't1' });
    await first.createRegion('plain', '16MiB', { file: true, tenant: 't2' });
    await first.createRegion('sparse', '1TiB', { file: true });
    await first.createRegion('broken', '4MiB', { file: true });
    const twin = ['write -P 0x11 0 4M', 'write -P 0x22 4M 1M'];
    assertQemuIoClean(await qemuIo(first.uri('twin-a'), twin), 2);
    assertQemuIoClean(await qemuIo(first.uri('twin-b'), twin), 2);
    const plain = ['write -P 0x31 0 1M', 'write -P 0x32 3M 64k', 'write -P 0x33 15M 1M'];
    assertQemuIoClean(await qemuIo(first.uri('plain'), plain), 3);
    assertQemuIoClean(await qemuIo(first.uri('sparse'), ['write -P 0x44 512G 4k']), 1);
    assertQemuIoClean(await qemuIo(first.uri('broken'), ['write -P 0x55 0 4k']), 1);
    assert.deepEqual(await first.stop(), { code: 0, signal: null }, first.stderr);
    writeFileSync(join(dataDir, 'broken.region.json'), '{ "magic": "memfabric-region", "version": 2, ');

    const second = await ApplianceProcess.start({ memory: '64MiB', dataDir, defaultSize: '1MiB' });
    t.after(() => second.stop());
    const states = Object.fromEntries((await second.waitLoaded()).map((r) => [r.name, r.state]));
    assert.deepEqual(states, {
      broken: 'corrupt',
      default: 'ready',
      plain: 'ready',
      sparse: 'ready',
      'twin-a': 'ready',
      'twin-b': 'ready',
    });
    // The corrupt one: its state and reason in the API, an error log line, a metric.
    const broken = (await second.api<RegionBody>('GET', '/v1/regions/broken')).body;
    assert.equal(broken.error?.code, 'MF_CORRUPT_FILE');
    assert.match(broken.error!.message, /broken\.region\.json is not readable JSON/);
    assert.ok(
      second.logs.some((l) => l.msg === 'region not loaded' && l.region === 'broken' && l.level === 50),
      'logged at error level',
    );
    const metrics = await (await fetch(new URL('/metrics', second.httpUrl))).text();
    assert.match(metrics, /memfabric_regions\{state="corrupt"\} 1/);
    assert.match(metrics, /memfabric_regions\{state="ready"\} 5/);
    await assert.rejects(
      NbdClient.connect({ port: second.nbdPort, exportName: 'broken' }),
      /broken is corrupt/,
    );

    // The good ones serve their bytes.
    const twinBack = ['read -P 0x11 0 4M', 'read -P 0x22 4M 1M', 'read -P 0 5M 3M'];
    assertQemuIoClean(await qemuIo(second.uri('twin-a'), twinBack), 3);
    assertQemuIoClean(await qemuIo(second.uri('twin-b'), twinBack), 3);
    const plainBack = ['read -P 0x31 0 1M', 'read -P 0 1M 2M', 'read -P 0x32 3M 64k', 'read -P 0x33 15M 1M'];
    assertQemuIoClean(await qemuIo(second.uri('plain'), plainBack), 4);
    assertQemuIoClean(await qemuIo(second.uri('sparse'), ['read -P 0x44 512G 4k', 'read -P 0 0 1M']), 2);
    // Loading shared the twins' identical pages, and read of the 1 TiB region only its page.
    // 2 × 1280 pages of two patterns; a frame takes at most 256 references (as in the merger),
    // so they need 8 + 2 frames, and every other page is shared.
    let shared = 0;
    for (const name of ['twin-a', 'twin-b']) {
      shared += (await second.api<RegionBody>('GET', `/v1/regions/${name}`)).body.load!.sharedPages;
    }
    assert.equal(shared, 2 * 1280 - 10);
    const sparse = (await second.api<RegionBody>('GET', '/v1/regions/sparse')).body;
    assert.deepEqual([sparse.load?.extentMap, sparse.load?.bytesRead], [true, 4096]);

    // Deleting the corrupt region removes its files and frees its name.
    assert.equal((await second.api('DELETE', '/v1/regions/broken')).status, 204);
    assert.deepEqual(
      readdirSync(dataDir).filter((f) => f.startsWith('broken')),
      [],
    );
    await second.createRegion('broken', '1MiB', { file: true });
    assert.deepEqual(await second.stop(), { code: 0, signal: null }, second.stderr);
  },
);

test('a final save that fails makes SIGTERM exit 1 and name the region; the others are saved', async (t) => {
  const dataDir = tempDir(t);
  const app = await ApplianceProcess.start({ memory: '64MiB', dataDir, defaultSize: '1MiB' });
  t.after(() => app.stop());
  await app.createRegion('doomed', '4MiB', { file: true });
  await app.createRegion('fine', '4MiB', { file: true });
  // Unflushed writes (a raw client, no FLUSH): only the final save can keep them.
  for (const name of ['doomed', 'fine']) {
    const { client } = await RawClient.open(app.nbdPort, name);
    assert.equal(await client.pwrite(MiB, Buffer.alloc(8192, 0x66)), 0);
    client.destroy();
  }
  // A directory where the save must write doomed's new extent map: deterministic, even as root.
  mkdirSync(join(dataDir, 'doomed.extents.tmp'));
  const exit = await app.stop();
  assert.deepEqual(exit, { code: 1, signal: null }, app.stderr);
  assert.match(app.stderr, /region doomed was NOT saved/);
  assert.doesNotMatch(app.stderr, /region fine was NOT saved/);
  assert.ok(app.logs.some((l) => l.msg === 'region not saved' && l.region === 'doomed' && l.level === 50));

  const again = await ApplianceProcess.start({ memory: '64MiB', dataDir, defaultSize: '1MiB' });
  t.after(() => again.stop());
  await again.waitLoaded();
  const client = await NbdClient.connect({ port: again.nbdPort, exportName: 'fine' });
  assert.ok(
    (await client.read(MiB, 8192)).every((b) => b === 0x66),
    'fine was saved',
  );
  await client.disconnect();
});

test('a --data-dir with a file in the way fails the start and names the path', async (t) => {
  const dir = tempDir(t);
  const blocked = join(dir, 'file', 'data');
  writeFileSync(join(dir, 'file'), 'in the way');
  await assert.rejects(ApplianceProcess.start({ dataDir: blocked }), (error: Error) => {
    assert.match(error.message, /exited \(2\) before listening/);
    assert.ok(error.message.includes(`--data-dir ${blocked} cannot be used`), error.message);
    return true;
  });
});
