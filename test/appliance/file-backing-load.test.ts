/**
 * Loading file-backed regions (in-process; the restart tests with real processes are in
 * test/interop/restart.test.ts): merging while loading, extent maps and their migration from
 * version 1, load order, failures that stay with their region, creates the file system
 * refuses, final saves that fail, and the `loading` state as NBD and the API show it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { readdirSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegionRegistry, type Region } from '../../src/appliance/index.js';
import { nodeFileLayer } from '../../src/appliance/file-layer.js';
import type { MemfabricError } from '../../src/index.js';
import { ErrorCodes, FramePool, SamePageMerger } from '../../src/index.js';
import { NbdClient } from '../../src/nbd/index.js';
import { errno, hookedLayer, SparseLayer } from './file-layers.js';
import { startAppliance } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const PAGE = 4096;

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'memfabric-load-'));
  try {
    await body(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function pattern(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4)
    out.writeUInt32LE((Math.imul(seed, 2654435761) ^ Math.imul(i + 1, 40503)) >>> 0, i);
  return out;
}

/** This process's open file descriptors on files under `dir` (Linux: /proc/self/fd links). */
function openFds(dir: string): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir)) count++;
    } catch {
      // closed meanwhile (the directory's own descriptor from readdirSync)
    }
  }
  return count;
}

test('an image whose pages merged at run time loads back into the same small pool', async () => {
  await withDir(async (dir) => {
    // First life: 32 MiB of memory, sixteen 8 MiB writes of one pattern, merged as they land.
    const pool = new FramePool({ capacity: 32 * MiB });
    const merger = new SamePageMerger(pool, { quietEpochs: 0 });
    const registry = new RegionRegistry({ pool, merger, dataDir: dir });
    const region = await registry.create({ name: 'merged', size: 256 * MiB, file: true, tenant: 't' });
    const chunk = Buffer.alloc(8 * MiB, 0xab);
    for (let i = 0; i < 16; i++) {
      region.write(i * 16 * MiB, chunk);
      merger.scan();
      merger.scan();
    }
    assert.ok(pool.used < (8 * MiB) / PAGE, `merged at run time (${pool.used} frames)`);
    await region.flush();
    assert.deepEqual(await registry.close(), []);
    merger.destroy();

    // Second life, same budget, no merger at all: loading alone must share the pages.
    const pool2 = new FramePool({ capacity: 32 * MiB });
    const registry2 = new RegionRegistry({ pool: pool2, dataDir: dir });
    const [loaded] = await registry2.loadFromDataDir();
    assert.ok(loaded, JSON.stringify(registry2.pendingRegions()));
    assert.ok(pool2.used <= 129, `identical pages share frames (${pool2.used} frames used)`);
    assert.equal(loaded.backing!.loadReport!.dataPages, (16 * 8 * MiB) / PAGE);
    const back = Buffer.alloc(8 * MiB);
    for (let i = 0; i < 16; i++) {
      loaded.read(i * 16 * MiB, back);
      assert.ok(back.equals(chunk), `write ${i} reads back`);
    }
    loaded.read(8 * MiB, back);
    assert.ok(
      back.every((b) => b === 0),
      'between the writes: zeros',
    );
    // Copy-on-write: writing one shared page changes only that page.
    loaded.write(0, Buffer.alloc(1, 1));
    loaded.read(16 * MiB, back.subarray(0, PAGE));
    assert.equal(back[0], 0xab);
    assert.deepEqual(await registry2.close(), []);
    assert.equal(pool2.used, 0);
  });
});

test('pages are shared while loading within a tenant, never across tenants', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const page = pattern(1, PAGE);
    for (const [name, tenant] of [
      ['a1', 'a'],
      ['a2', 'a'],
      ['b1', 'b'],
    ] as const) {
      const region = await registry.create({ name, size: MiB, file: true, tenant });
      for (let p = 0; p < 4; p++) region.write(p * PAGE, page);
    }
    assert.deepEqual(await registry.close(), []);
    const pool2 = new FramePool({ capacity: 16 * MiB });
    const registry2 = new RegionRegistry({ pool: pool2, dataDir: dir });
    assert.equal((await registry2.loadFromDataDir()).length, 3);
    assert.equal(pool2.used, 2, 'one frame for tenant a (8 pages), one for tenant b (4 pages)');
    await registry2.close();
  });
});

test('a sparse 1 TiB region loads by its extent map: it reads the 4 KiB it holds', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const region = await registry.create({ name: 'huge', size: TiB, file: true });
    region.write(TiB / 2 + 12 * PAGE, pattern(2, PAGE));
    region.write(TiB - 100, Buffer.alloc(100, 7)); // the last page
    await region.flush();
    // Trimmed pages leave the map once their zeros are synced.
    region.write(5 * GiB, pattern(3, PAGE));
    await region.flush();
    region.trim(5 * GiB, PAGE);
    await region.flush();
    assert.deepEqual(await registry.close(), []);

    const registry2 = new RegionRegistry({ pool, dataDir: dir });
    const [loaded] = await registry2.loadFromDataDir();
    const report = loaded!.backing!.loadReport!;
    assert.equal(report.extentMap, true);
    assert.equal(report.bytesRead, 2 * PAGE, 'only the two pages in the map were read');
    assert.equal(report.dataPages, 2);
    const back = Buffer.alloc(PAGE);
    loaded!.read(TiB / 2 + 12 * PAGE, back);
    assert.ok(back.equals(pattern(2, PAGE)));
    loaded!.read(TiB - PAGE, back);
    assert.ok(back.subarray(PAGE - 100).every((b) => b === 7));
    assert.equal(loaded!.info().load?.bytesRead, 2 * PAGE, 'the API shows it');
    await registry2.close();
  });
});

test('a 1 PiB file-backed region is allowed and loads by its extent map (on a file system that holds it)', async () => {
  const PiB = 1024 * TiB;
  const layer = new SparseLayer(); // no disk here holds a 1 PiB file; this layer does
  const pool = new FramePool({ capacity: 16 * MiB });
  const registry = new RegionRegistry({ pool, dataDir: '/data', layer });
  const region = await registry.create({ name: 'vast', size: '1PiB', file: true });
  region.write(0, pattern(8, PAGE));
  region.write(PiB - PAGE, pattern(9, PAGE));
  assert.deepEqual(await registry.close(), []);
  const registry2 = new RegionRegistry({ pool, dataDir: '/data', layer });
  const [loaded] = await registry2.loadFromDataDir();
  assert.equal(loaded!.size, PiB);
  assert.equal(loaded!.backing!.loadReport!.bytesRead, 2 * PAGE);
  const back = Buffer.alloc(PAGE);
  loaded!.read(PiB - PAGE, back);
  assert.ok(back.equals(pattern(9, PAGE)));
  await registry2.close();
});

test('version 1 metadata (no extent map) loads by a full read and is migrated to version 2', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const region = await registry.create({ name: 'old', size: 4 * MiB, file: true });
    region.write(MiB, pattern(4, 3 * PAGE));
    await registry.close();
    // What an older appliance wrote: version 1 metadata and no map.
    const meta = JSON.parse(await readFile(join(dir, 'old.region.json'), 'utf8'));
    await writeFile(join(dir, 'old.region.json'), JSON.stringify({ ...meta, version: 1 }));
    await rm(join(dir, 'old.extents'));

    const registry2 = new RegionRegistry({ pool, dataDir: dir });
    const [loaded] = await registry2.loadFromDataDir();
    assert.equal(loaded!.backing!.loadReport!.extentMap, false);
    assert.equal(loaded!.backing!.loadReport!.bytesRead, 4 * MiB, 'the whole image was read');
    const back = Buffer.alloc(3 * PAGE);
    loaded!.read(MiB, back);
    assert.ok(back.equals(pattern(4, 3 * PAGE)));
    await registry2.close();
    assert.equal(JSON.parse(await readFile(join(dir, 'old.region.json'), 'utf8')).version, 2);

    const registry3 = new RegionRegistry({ pool, dataDir: dir });
    const [again] = await registry3.loadFromDataDir();
    assert.equal(again!.backing!.loadReport!.extentMap, true);
    assert.equal(again!.backing!.loadReport!.bytesRead, 3 * PAGE);
    await registry3.close();
  });
});

test('a damaged extent map is not trusted: the image is read in full and the map rewritten', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const region = await registry.create({ name: 'r', size: 2 * MiB, file: true });
    region.write(MiB, pattern(5, PAGE));
    await registry.close();
    const map = await readFile(join(dir, 'r.extents'));
    map[map.length - 1]! ^= 0xff; // a flipped bit in the runs
    await writeFile(join(dir, 'r.extents'), map);
    const registry2 = new RegionRegistry({ pool, dataDir: dir });
    const [loaded] = await registry2.loadFromDataDir();
    const report = loaded!.backing!.loadReport!;
    assert.equal(report.extentMap, false);
    assert.match(report.extentMapProblem!, /checksum|range/);
    assert.equal(report.dataPages, 1);
    await registry2.close();
  });
});

test('regions load cheapest first, and one that does not fit fails alone, leaving no frame behind', async () => {
  await withDir(async (dir) => {
    const big = new FramePool({ capacity: 64 * MiB });
    const registry = new RegionRegistry({ pool: big, dataDir: dir });
    const sizes: Array<[string, number]> = [
      ['a-large', 8 * MiB],
      ['b-small', PAGE],
      ['c-medium', MiB],
      ['d-huge', 20 * MiB],
    ];
    for (const [name, bytes] of sizes) {
      const region = await registry.create({ name, size: 32 * MiB, file: true });
      for (let at = 0; at < bytes; at += PAGE)
        region.write(at, pattern(at / PAGE + name.charCodeAt(0) * 100003, PAGE));
    }
    await registry.close();

    const pool = new FramePool({ capacity: 12 * MiB }); // room for all but d-huge
    const registry2 = new RegionRegistry({ pool, dataDir: dir });
    await registry2.scanDataDir();
    assert.deepEqual(
      registry2.pendingRegions().map((r) => r.state),
      ['loading', 'loading', 'loading', 'loading'],
    );
    const order: string[] = [];
    const failed: string[] = [];
    await registry2.loadPending({
      loaded: (region: Region) => order.push(region.name),
      failed: (region) => failed.push(region.name),
    });
    assert.deepEqual(order, ['b-small', 'c-medium', 'a-large']);
    assert.deepEqual(failed, ['d-huge']);
    const huge = registry2.pendingRegion('d-huge')!;
    assert.equal(huge.state, 'failed');
    assert.equal(huge.error?.code, ErrorCodes.POOL_EXHAUSTED);
    assert.equal(pool.used, (PAGE + MiB + 8 * MiB) / PAGE, 'the failed load returned its frames');
    const back = Buffer.alloc(PAGE);
    registry2.require('c-medium').read(MiB - PAGE, back);
    assert.ok(back.equals(pattern(MiB / PAGE - 1 + 'c'.charCodeAt(0) * 100003, PAGE)));
    // Its files are intact: a larger appliance loads it.
    assert.deepEqual(await registry2.close(), []);
    const registry3 = new RegionRegistry({ pool: big, dataDir: dir });
    assert.equal((await registry3.loadFromDataDir()).length, 4);
    await registry3.close();
  });
});

test('a create the file system refuses answers MF_FILE_REFUSED, leaves nothing and leaks no descriptor', async () => {
  await withDir(async (dir) => {
    const limit = 64 * GiB;
    // An injected file system that allows files of at most 64 GiB, like a real one's EFBIG.
    const layer = hookedLayer((op, _path, detail) => {
      if (op === 'truncate' && detail!.size! > limit) throw errno('EFBIG', 'File too large');
    });
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir, layer });
    for (let i = 0; i < 20; i++) {
      await assert.rejects(
        registry.create({ name: 'big', size: '1PiB', file: true }),
        (error: MemfabricError) => {
          assert.equal(error.code, ErrorCodes.FILE_REFUSED);
          assert.match(error.message, /at most 64 GiB/);
          return true;
        },
      );
    }
    assert.equal(openFds(dir), 0, 'no descriptor leaked');
    assert.deepEqual(await readdir(dir), [], 'no file left behind');
    assert.equal(pool.spaceCount, 0);
    const region = await registry.create({ name: 'big', size: limit, file: true });
    assert.equal(region.size, limit, 'the name is free again');
    await registry.close();
  });
});

test('ENOSPC, EACCES and a failed metadata write leave nothing behind either', async () => {
  await withDir(async (dir) => {
    let fail: { op: string; code: string } | undefined;
    const layer = hookedLayer((op) => {
      if (fail && op === fail.op) throw errno(fail.code);
    });
    const registry = new RegionRegistry({ pool: new FramePool({ capacity: 16 * MiB }), dataDir: dir, layer });
    for (const [op, code, expected] of [
      ['truncate', 'ENOSPC', ErrorCodes.FILE_REFUSED],
      ['open', 'EACCES', ErrorCodes.FILE_REFUSED],
      ['rename', 'EIO', undefined],
      ['sync', 'EIO', undefined],
    ] as const) {
      fail = { op, code };
      await assert.rejects(
        registry.create({ name: 'r', size: MiB, file: true }),
        (error: NodeJS.ErrnoException) => {
          assert.equal(error.code, expected ?? code, `${op} ${code}`);
          return true;
        },
      );
      assert.deepEqual(await readdir(dir), [], `${op} ${code}: nothing left`);
    }
    assert.equal(openFds(dir), 0, 'no descriptor leaked');
    fail = undefined;
    await registry.create({ name: 'r', size: MiB, file: true });
    await registry.close();
  });
});

test('an image the appliance may not open at load fails alone with MF_FILE_REFUSED naming it', async () => {
  await withDir(async (dir) => {
    const registry = new RegionRegistry({ pool: new FramePool({ capacity: 16 * MiB }), dataDir: dir });
    for (const name of ['locked', 'open']) {
      const region = await registry.create({ name, size: MiB, file: true });
      region.write(0, pattern(7, PAGE));
    }
    await registry.close();
    const layer = hookedLayer((op, path) => {
      if (op === 'open' && path.endsWith('locked.img')) throw errno('EACCES');
    });
    const registry2 = new RegionRegistry({
      pool: new FramePool({ capacity: 16 * MiB }),
      dataDir: dir,
      layer,
    });
    await registry2.scanDataDir();
    await registry2.loadPending({});
    const locked = registry2.pendingRegion('locked')!;
    assert.equal(locked.state, 'failed');
    assert.equal(locked.error?.code, ErrorCodes.FILE_REFUSED);
    assert.match(locked.error?.message ?? '', /locked\.img of region locked cannot be opened \(EACCES\)/);
    const back = Buffer.alloc(PAGE);
    registry2.require('open').read(0, back);
    assert.ok(back.equals(pattern(7, PAGE)), 'the other region loads');
    await registry2.close();
  });
});

test('a real file system that refuses 1 PiB (EFBIG) gives 400 MF_FILE_REFUSED over HTTP, and the name stays free', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'memfabric-load-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // Does this file system refuse a 1 PiB file? (ext4 does; tmpfs and xfs do not.)
  const probe = await nodeFileLayer.open(join(dir, 'probe'), 'w');
  const refuses = await probe.truncate(2 ** 50).then(
    () => false,
    (error: NodeJS.ErrnoException) => error.code === 'EFBIG',
  );
  await probe.close();
  await rm(join(dir, 'probe'));
  if (!refuses) {
    t.skip('this file system holds 1 PiB files; the injected-layer test covers EFBIG');
    return;
  }
  const { appliance, call } = await startAppliance({ dataDir: dir, defaultRegion: false });
  t.after(() => appliance.stop());
  for (let i = 0; i < 5; i++) {
    const answer = await call('POST', '/v1/regions', { name: 'huge', size: '1PiB', file: true });
    assert.equal(answer.status, 400, answer.text);
    assert.equal(answer.json.error.code, ErrorCodes.FILE_REFUSED);
    assert.match(answer.json.error.message, /allows files of at most \d/);
  }
  assert.equal(openFds(dir), 0, 'no descriptor leaked');
  assert.deepEqual(await readdir(dir), ['admin.token'], 'nothing but the admin token');
  assert.equal((await call('GET', '/v1/regions/huge')).status, 404);
  assert.equal((await call('POST', '/v1/regions', { name: 'huge', size: '1TiB', file: true })).status, 201);
});

test('registry.close saves every region and reports each final save that failed', async () => {
  await withDir(async (dir) => {
    const layer = hookedLayer((op, path) => {
      if (op === 'datasync' && path.endsWith('bad.img')) throw errno('EIO', 'injected');
    });
    const registry = new RegionRegistry({ pool: new FramePool({ capacity: 16 * MiB }), dataDir: dir, layer });
    const good = await registry.create({ name: 'good', size: MiB, file: true });
    const bad = await registry.create({ name: 'bad', size: MiB, file: true });
    const after = await registry.create({ name: 'later', size: MiB, file: true });
    for (const region of [good, bad, after]) region.write(0, Buffer.alloc(PAGE, 9));
    assert.equal(openFds(dir), 3, 'one image descriptor per region');
    const unsaved = await registry.close();
    assert.deepEqual(
      unsaved.map((u) => [u.name, (u.error as NodeJS.ErrnoException).code]),
      [['bad', 'EIO']],
    );
    assert.equal(openFds(dir), 0, 'every image was closed, the failed one too');
    for (const name of ['good', 'later']) {
      assert.equal((await readFile(join(dir, `${name}.img`)))[0], 9, `${name} was saved`);
    }
  });
});

test('a region that is loading is listed as loading, refused over NBD and the API with a retryable error, then served', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'memfabric-load-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  {
    const registry = new RegionRegistry({ pool: new FramePool({ capacity: 16 * MiB }), dataDir: dir });
    const slow = await registry.create({ name: 'slow', size: MiB, file: true });
    slow.write(0, pattern(6, PAGE));
    const quick = await registry.create({ name: 'quick', size: MiB, file: true });
    quick.write(0, pattern(7, PAGE));
    await registry.close();
  }
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const layer = hookedLayer(async (op, path) => {
    if (op === 'read' && path.endsWith('slow.img')) await gate;
  });
  const { appliance, call } = await startAppliance({ dataDir: dir, defaultRegion: false, fileLayer: layer });
  t.after(async () => {
    release(); // stop() waits for loading to end
    await appliance.stop();
  });
  const port = appliance.nbdAddress.port;
  // "quick" is not held back by "slow" (same cost: names break the tie, and slow is blocked).
  const listed = async () =>
    Object.fromEntries(
      ((await call('GET', '/v1/regions')).json.regions as Array<{ name: string; state: string }>).map((r) => [
        r.name,
        r.state,
      ]),
    );
  const waitState = async (name: string, state: string) => {
    for (let i = 0; i < 500 && (await listed())[name] !== state; i++)
      await new Promise((r) => setTimeout(r, 10));
  };
  await waitState('quick', 'ready');
  assert.deepEqual(await listed(), { quick: 'ready', slow: 'loading' });
  const one = await call('GET', '/v1/regions/slow');
  assert.equal(one.json.state, 'loading');
  assert.equal(
    (await call('POST', '/v1/regions/slow/clone', { name: 'c' })).json.error.code,
    ErrorCodes.LOADING,
  );
  const del = await call('DELETE', '/v1/regions/slow');
  assert.equal(del.status, 503);
  assert.equal(del.json.error.code, ErrorCodes.LOADING);
  await assert.rejects(NbdClient.connect({ port, exportName: 'slow' }), (error: Error) => {
    assert.match(error.message, /slow is still loading.*retry/);
    return true;
  });
  const metrics = (await call('GET', '/metrics')).text;
  assert.match(metrics, /memfabric_regions\{state="loading"\} 1/);
  assert.match(
    (await call('GET', '/')).text,
    /slow<\/td>[^]*?<strong>loading<\/strong>/,
    'the dashboard shows it',
  );
  release();
  await appliance.loaded;
  const client = await NbdClient.connect({ port, exportName: 'slow' });
  assert.ok((await client.read(0, PAGE)).equals(pattern(6, PAGE)));
  await client.disconnect();
  assert.equal((await call('GET', '/v1/regions/slow')).json.state, 'ready');
});

test('--data-dir: a missing one is created; a file in the way fails the start naming the path', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'memfabric-load-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const nested = join(dir, 'a', 'b', 'data');
  const { appliance } = await startAppliance({ dataDir: nested, defaultRegion: false });
  await appliance.registry.create({ name: 'r', size: MiB, file: true });
  await appliance.stop();
  assert.ok((await readdir(nested)).includes('r.img'));

  await writeFile(join(dir, 'file'), 'x');
  for (const bad of [join(dir, 'file'), join(dir, 'file', 'below')]) {
    await assert.rejects(startAppliance({ dataDir: bad }), (error: MemfabricError) => {
      assert.equal(error.code, ErrorCodes.INVALID_ARGUMENT);
      assert.ok(error.message.includes(bad), error.message);
      assert.match(error.message, /not a directory|in the way/);
      return true;
    });
  }
});
