/**
 * The appliance's background merger, with a real appliance process and a real NBD client
 * (issue 13): identical pages written one per leaf across a 1 TiB region merge at the share of
 * a core `--merge-cpu` sets; the admin API and /metrics report progress, the share and the
 * saving (gross, and net of the merger's tables); every page still reads its bytes; and a bad
 * `--merge-cpu` (or `merge` option) stops the start with a typed error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Appliance } from '../../src/index.js';
import { ErrorCodes } from '../../src/errors.js';
import {
  ApplianceProcess,
  assertQemuIoClean,
  missing,
  qemuIo,
  waitFor,
} from '../interop/appliance-process.js';

const PAGE = 4096;
const LEAF_BYTES = 512 * PAGE;

interface MergerBody {
  pagesSharing: number;
  zeroPages: number;
  fullScans: number;
  pagesVisited: number;
  scanSpaces: number;
  scanFraction: number;
  scanRegion: string | null;
  cpuShare: number;
  cpuShareTarget: number;
  metadataBytes: number;
  bytesSaved: number;
  bytesSavedNet: number;
}

interface StatsBody {
  memory: { usedBytes: number };
  merger: MergerBody;
}

/** Byte offset of scattered page `i`: one page per leaf, 16 GiB apart, across 1 TiB. */
function offset(i: number): number {
  return i * 16 * 1024 * 1024 * 1024 + ((i * 37) % 512) * PAGE;
}

test(
  'pages scattered one per leaf over a 1 TiB region merge at the --merge-cpu share; stats and metrics report it',
  { skip: missing('qemu-io') },
  async (t) => {
    const app = await ApplianceProcess.start({
      memory: '64MiB',
      defaultSize: '1TiB',
      args: ['--merge-cpu', '0.5'],
    });
    t.after(() => app.stop());
    // 48 copies of one page and 16 of another, each alone in its leaf (leaves are 2 MiB).
    const writes: string[] = [];
    for (let i = 0; i < 64; i++) writes.push(`write -P ${i < 48 ? '0xab' : '0xcd'} ${offset(i)} ${PAGE}`);
    assertQemuIoClean(await qemuIo(app.uri(), writes), writes.length);
    const stats = async () => (await app.api<StatsBody>('GET', '/v1/stats')).body;
    await waitFor(
      'the 64 pages to merge into two frames',
      async () => (await stats()).memory.usedBytes === 2 * PAGE,
      60_000,
    );
    const merged = await stats();
    assert.equal(merged.merger.pagesSharing, 62, '47 + 15 pages share their primary');
    assert.equal(merged.merger.cpuShareTarget, 0.5);
    assert.ok(merged.merger.cpuShare > 0, 'the merger measured the time it spent');
    assert.ok(merged.merger.scanFraction >= 0 && merged.merger.scanFraction <= 1);
    assert.ok(merged.merger.scanRegion === null || merged.merger.scanRegion === 'default');
    assert.equal(merged.merger.bytesSaved, 62 * PAGE, 'gross saving');
    assert.equal(merged.merger.bytesSavedNet, merged.merger.bytesSaved - merged.merger.metadataBytes);
    // The scan goes on over the settled region: its counters keep moving.
    await waitFor(
      'the scan to go on',
      async () => (await stats()).merger.pagesVisited > merged.merger.pagesVisited,
      60_000,
    );
    await waitFor(
      'another full scan',
      async () => (await stats()).merger.fullScans > merged.merger.fullScans,
      60_000,
    );

    const metrics = await fetch(new URL('/metrics', app.httpUrl), {
      headers: { authorization: `Bearer ${app.token}` },
    }).then((response) => response.text());
    assert.match(metrics, /^memfabric_merger_cpu_share_target 0\.5$/m);
    assert.match(metrics, new RegExp(`^memfabric_merger_saved_bytes ${62 * PAGE}$`, 'm'));
    const net = /^memfabric_merger_saved_net_bytes (-?\d+)$/m.exec(metrics);
    const tables = /^memfabric_merger_metadata_bytes (\d+)$/m.exec(metrics);
    assert.ok(net && tables, metrics);
    assert.equal(Number(net[1]), 62 * PAGE - Number(tables[1]));
    for (const name of [
      'memfabric_merger_pages_visited_total',
      'memfabric_merger_scan_seconds_total',
      'memfabric_merger_pages_visited_per_second',
      'memfabric_merger_scan_fraction',
      'memfabric_merger_last_full_scan_seconds',
      'memfabric_merger_cpu_share',
    ]) {
      assert.match(metrics, new RegExp(`^${name} [0-9.e+-]+$`, 'm'), name);
    }

    const dashboard = await fetch(new URL('/', app.httpUrl), {
      headers: { authorization: `Bearer ${app.token}` },
    }).then((response) => response.text());
    assert.match(dashboard, /saves 248 KiB\n\(-?[0-9.]+ [KMG]?i?B net of its [0-9.]+ [KMG]?i?B of tables\)/);
    assert.match(dashboard, /Scan: \d+% through the current full scan/);
    assert.match(dashboard, /% of a core \(set: 50\.0%\)/);

    // Every page reads what was written to it, and the leaves' other pages read zeros.
    const reads: string[] = [];
    for (let i = 0; i < 64; i++) {
      reads.push(`read -P ${i < 48 ? '0xab' : '0xcd'} ${offset(i)} ${PAGE}`);
      const other = offset(i) - (offset(i) % LEAF_BYTES) + (offset(i) % LEAF_BYTES === 0 ? PAGE : 0);
      reads.push(`read -P 0 ${other} ${PAGE}`);
    }
    assertQemuIoClean(await qemuIo(app.uri(), reads), reads.length);
    assert.deepEqual(await app.stop(), { code: 0, signal: null }, app.stderr);
  },
);

test('a --merge-cpu that is not a share of one core stops the start with MF_INVALID_ARGUMENT', async () => {
  for (const share of ['0', '1.5', 'lots', '']) {
    await assert.rejects(
      ApplianceProcess.start({ args: ['--merge-cpu', share] }),
      (error: Error) =>
        /exited \(2\) before listening/.test(error.message) &&
        error.message.includes(`--merge-cpu ${share} must be a share of one core`) &&
        error.message.includes('MF_INVALID_ARGUMENT'),
      `--merge-cpu ${JSON.stringify(share)}`,
    );
  }
});

test('Appliance.start refuses a merge share or slice out of range with MF_INVALID_ARGUMENT, before it listens', async () => {
  for (const merge of [{ cpuShare: 0 }, { cpuShare: 2 }, { cpuShare: Number.NaN }, { sliceMs: 0 }]) {
    await assert.rejects(
      Appliance.start({ nbd: { port: 0 }, http: { port: 0 }, defaultRegion: false, merge }),
      (error: Error & { code?: string }) =>
        error.code === ErrorCodes.INVALID_ARGUMENT && /merge\./.test(error.message),
      JSON.stringify(merge),
    );
  }
});
