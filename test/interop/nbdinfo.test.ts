/**
 * libnbd's nbdinfo against a running appliance process: export size and flags as the regions
 * were created (through the `memfabric region` CLI), `--list` naming every region, and
 * `--map` reporting holes, zeroes and data as qemu-io wrote, discarded and zeroed them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ApplianceProcess,
  KiB,
  MiB,
  assertQemuIoClean,
  missing,
  qemuIo,
  runOk,
} from './appliance-process.js';

interface ExportInfo {
  'export-name': string;
  'export-size': number;
  description: string;
  contexts: string[];
  is_read_only: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
  block_size_maximum: number;
  [flag: string]: unknown;
}

async function info(uri: string): Promise<ExportInfo> {
  const parsed = JSON.parse((await runOk('nbdinfo', ['--json', uri])).stdout) as {
    protocol: string;
    structured: boolean;
    exports: ExportInfo[];
  };
  assert.equal(parsed.protocol, 'newstyle-fixed');
  assert.equal(parsed.structured, true);
  assert.equal(parsed.exports.length, 1);
  return parsed.exports[0]!;
}

const WRITABLE_FLAGS = [
  'can_flush',
  'can_fua',
  'can_trim',
  'can_zero',
  'can_fast_zero',
  'can_cache',
  'can_df',
  'can_multi_conn',
];

test(
  'nbdinfo: sizes, flags, read-only, --list of every region, --map after discard and zeroing',
  { skip: missing('nbdinfo', 'qemu-io') },
  async (t) => {
    const app = await ApplianceProcess.start({ memory: '64MiB', defaultSize: '2MiB' });
    t.after(() => app.stop());

    // Regions through the real CLI (and the API, which is faster where the CLI is not the
    // point), including an unaligned size, a tenant and a clone.
    await app.region('create', 'rw', '--size', '16MiB');
    await app.region('create', 'ro', '--size', '4MiB', '--read-only');
    await app.createRegion('odd', 1_000_001, { tenant: 'blue' });
    await app.createRegion('map', '1MiB');
    await runOk('qemu-io', ['-f', 'raw', app.uri('rw'), '-c', 'write -P 0x77 0 1M']);
    await app.region('clone', 'rw', 'rw-clone');

    const rw = await info(app.uri('rw'));
    assert.equal(rw['export-size'], 16 * MiB);
    assert.equal(rw.is_read_only, false);
    for (const flag of WRITABLE_FLAGS) assert.equal(rw[flag], true, flag);
    assert.deepEqual(rw.contexts, ['base:allocation']);
    assert.equal(rw.block_size_minimum, 1);
    assert.equal(rw.block_size_preferred, 4096, 'the page size');
    assert.equal(rw.block_size_maximum, 32 * MiB);
    assert.match(rw.description, /region rw/);

    const ro = await info(app.uri('ro'));
    assert.equal(ro['export-size'], 4 * MiB);
    assert.equal(ro.is_read_only, true);
    assert.equal(ro.can_trim, false);
    assert.equal(ro.can_zero, false);

    const odd = await info(app.uri('odd'));
    assert.equal(odd['export-size'], 1_000_001);
    assert.match(odd.description, /tenant blue/);

    const clone = await info(app.uri('rw-clone'));
    assert.equal(clone['export-size'], 16 * MiB);
    assert.equal(clone.is_read_only, false);

    // The empty export name is the default region.
    assert.equal((await info(app.uri(''))).description, (await info(app.uri('default'))).description);

    // --list: every region, in name order, and nothing else.
    const listed = JSON.parse((await runOk('nbdinfo', ['--list', '--json', app.uri()])).stdout) as {
      exports: ExportInfo[];
    };
    assert.deepEqual(
      listed.exports.map((e) => [e['export-name'], e['export-size'], e.is_read_only]),
      [
        ['default', 2 * MiB, false],
        ['map', MiB, false],
        ['odd', 1_000_001, false],
        ['ro', 4 * MiB, true],
        ['rw', 16 * MiB, false],
        ['rw-clone', 16 * MiB, false],
      ],
    );
    // The CLI sees the same set.
    const ls = JSON.parse((await app.region('ls', '--json')).stdout) as Array<{
      name: string;
      clonedFrom: string | null;
    }>;
    assert.deepEqual(
      ls.map((r) => r.name),
      ['default', 'map', 'odd', 'ro', 'rw', 'rw-clone'],
    );
    assert.equal(ls.find((r) => r.name === 'rw-clone')?.clonedFrom, 'rw');

    // --map: a fresh region is one hole; then data, a discarded hole, allocated zeroes
    // (write -z keeps the pages: NO_HOLE) and punched zeroes (write -z -u).
    const fresh = JSON.parse((await runOk('nbdinfo', ['--map', '--json', app.uri('map')])).stdout);
    assert.deepEqual(fresh, [{ offset: 0, length: MiB, type: 3, description: 'hole,zero' }]);
    const r = await qemuIo(app.uri('map'), [
      'write -P 0x5a 0 256k',
      'discard 64k 64k',
      'write -z 512k 64k',
      'write -P 0x11 640k 128k',
      'write -z -u 640k 64k',
      'read -P 0x5a 0 64k',
      'read -P 0 64k 64k',
      'read -P 0x5a 128k 128k',
      'read -P 0 512k 64k',
      'read -P 0 640k 64k',
      'read -P 0x11 704k 64k',
    ]);
    assertQemuIoClean(r, 11);
    const map = JSON.parse((await runOk('nbdinfo', ['--map', '--json', app.uri('map')])).stdout) as Array<{
      offset: number;
      length: number;
      type: number;
    }>;
    assert.deepEqual(
      map.map((e) => [e.offset / KiB, e.length / KiB, e.type]),
      [
        [0, 64, 0], // data
        [64, 64, 3], // discarded: a hole again
        [128, 128, 0],
        [256, 256, 3], // never written
        [512, 64, 2], // write -z: zeroes, still allocated
        [576, 128, 3], // never written, then punched zeroes (write -z -u)
        [704, 64, 0],
        [768, 256, 3],
      ],
    );
    // A discard in the clone makes a hole there only; the original keeps its data.
    const before = JSON.parse((await runOk('nbdinfo', ['--map', '--json', app.uri('rw-clone')])).stdout);
    assert.deepEqual(before[0], { offset: 0, length: MiB, type: 0, description: 'data' });
    await runOk('qemu-io', ['-f', 'raw', app.uri('rw-clone'), '-c', 'discard 0 1M']);
    const rwMap = JSON.parse((await runOk('nbdinfo', ['--map', '--json', app.uri('rw')])).stdout);
    assert.deepEqual(rwMap[0], { offset: 0, length: MiB, type: 0, description: 'data' });
    const cloneMap = JSON.parse((await runOk('nbdinfo', ['--map', '--json', app.uri('rw-clone')])).stdout);
    assert.deepEqual(cloneMap, [{ offset: 0, length: 16 * MiB, type: 3, description: 'hole,zero' }]);

    assert.ok(app.alive);
  },
);
