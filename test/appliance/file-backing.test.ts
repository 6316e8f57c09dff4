import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegionRegistry } from '../../src/appliance/index.js';
import { ErrorCodes, FramePool } from '../../src/index.js';

const MiB = 1024 * 1024;

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'memfabric-files-'));
  try {
    await body(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Holds every FileHandle.datasync() until release(); `reached` resolves at the first call.
 * Restores datasync on release. FileBacking syncs its image through fs.promises' FileHandle.
 */
async function gateDatasync(dir: string): Promise<{ reached: Promise<void>; release(): void }> {
  const probe = await open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { datasync(): Promise<void> };
  await probe.close();
  await rm(join(dir, 'probe'));
  const original = proto.datasync;
  let onReached!: () => void;
  const reached = new Promise<void>((resolve) => (onReached = resolve));
  let onRelease!: () => void;
  const released = new Promise<void>((resolve) => (onRelease = resolve));
  proto.datasync = async function (this: unknown) {
    onReached();
    await released;
    return original.call(this);
  };
  return {
    reached,
    release() {
      proto.datasync = original;
      onRelease();
    },
  };
}

test('a file-backed region saves on flush and on close, and loads back with holes kept', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 64 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const region = await registry.create({ name: 'disk', size: 8 * MiB + 100, file: true, tenant: 't1' });
    region.write(MiB, Buffer.alloc(4096, 7));
    region.write(8 * MiB, Buffer.alloc(100, 9)); // the partial last page
    // flush() must not resolve before the save's final datasync: hold every datasync at a gate
    // and check flush() is still pending once the save reached it. A flush that returns before
    // the save resolves in a microtask, long before the save's writes get there.
    const gate = await gateDatasync(dir);
    let flushed = false;
    const flushing = region.flush().then(() => {
      flushed = true;
    });
    try {
      await gate.reached;
      assert.equal(flushed, false, 'flush() resolved before the save synced the image');
    } finally {
      gate.release();
    }
    await flushing;
    const image = await readFile(join(dir, 'disk.img'));
    assert.equal(image.length, 8 * MiB + 100);
    assert.ok(image.subarray(MiB, MiB + 4096).every((b) => b === 7));
    assert.ok(image.subarray(8 * MiB).every((b) => b === 9));
    region.write(2 * MiB, Buffer.alloc(10, 5)); // saved by close, not flush
    await registry.close();
    assert.equal(pool.used, 0);

    const pool2 = new FramePool({ capacity: 64 * MiB });
    const registry2 = new RegionRegistry({ pool: pool2, dataDir: dir });
    const [loaded] = await registry2.loadFromDataDir();
    assert.equal(loaded!.name, 'disk');
    assert.equal(loaded!.tenant, 't1');
    assert.equal(loaded!.size, 8 * MiB + 100);
    assert.equal(pool2.used, 3, 'only the three written pages take frames; zeros stay holes');
    const back = Buffer.alloc(10);
    loaded!.read(2 * MiB, back);
    assert.ok(back.every((b) => b === 5));
    await registry2.delete('disk');
    await assert.rejects(readFile(join(dir, 'disk.img')), { code: 'ENOENT' });
    await assert.rejects(readFile(join(dir, 'disk.region.json')), { code: 'ENOENT' });
  });
});

test('a save writes only the pages dirtied since the last save', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const region = await registry.create({ name: 'r', size: MiB, file: true });
    region.write(0, Buffer.alloc(8192, 1));
    await region.flush();
    // Change page 1 behind the region's back: a save that rewrote clean pages would undo it.
    const handle = await open(join(dir, 'r.img'), 'r+');
    await handle.write(Buffer.alloc(4096, 0xee), 0, 4096, 4096);
    await handle.close();
    region.write(0, Buffer.alloc(16, 2));
    await region.flush();
    const image = await readFile(join(dir, 'r.img'));
    assert.equal(image[0], 2, 'the dirty page was written');
    assert.equal(image[4096], 0xee, 'the clean page was not');
    await registry.close();
  });
});

test('writes racing a save are never lost: the next save carries them', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 64 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    const region = await registry.create({ name: 'busy', size: 16 * MiB, file: true });
    const saves: Array<Promise<void>> = [];
    for (let round = 0; round < 40; round++) {
      const page = (round * 37) % 4096;
      region.write(page * 4096, Buffer.alloc(4096, round + 1));
      if (round % 3 === 0) saves.push(region.flush());
      await new Promise((resolve) => setImmediate(resolve));
    }
    await Promise.all(saves);
    await region.flush();
    const image = await readFile(join(dir, 'busy.img'));
    const expected = Buffer.alloc(16 * MiB);
    region.read(0, expected);
    assert.ok(image.equals(expected), 'after the last flush the file equals the region');
    await registry.close();
  });
});

test('a truncated image, or metadata that is bad JSON, of another version or lacking fields, makes only that region corrupt', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    const registry = new RegionRegistry({ pool, dataDir: dir });
    await registry.create({ name: 'ok', size: MiB, file: true });
    const good = await registry.create({ name: 'good', size: MiB, file: true });
    good.write(4096, Buffer.alloc(4096, 0x42));
    assert.deepEqual(await registry.close(), []);
    const meta = JSON.parse(await readFile(join(dir, 'ok.region.json'), 'utf8'));

    const damage: Array<[string, () => Promise<void>, RegExp]> = [
      ['truncated image', () => truncate(join(dir, 'ok.img'), 1000), /truncated/],
      [
        'other version',
        () => writeFile(join(dir, 'ok.region.json'), JSON.stringify({ ...meta, version: 99 })),
        /version/,
      ],
      ['bad JSON', () => writeFile(join(dir, 'ok.region.json'), '{ not json'), /not readable JSON/],
      [
        'wrong magic',
        () => writeFile(join(dir, 'ok.region.json'), JSON.stringify({ ...meta, magic: 'x' })),
        /magic/,
      ],
      [
        'missing field',
        () => writeFile(join(dir, 'ok.region.json'), JSON.stringify({ ...meta, size: undefined })),
        /lacks/,
      ],
      [
        'page size',
        () => writeFile(join(dir, 'ok.region.json'), JSON.stringify({ ...meta, pageSize: 8192 })),
        /8192-byte pages/,
      ],
      ['missing image', () => rm(join(dir, 'ok.img')), /missing/],
    ];
    for (const [what, harm, reason] of damage) {
      await harm();
      const again = new RegionRegistry({ pool, dataDir: dir });
      const loaded = await again.loadFromDataDir();
      assert.deepEqual(
        loaded.map((r) => r.name),
        ['good'],
        `${what}: the good region still loads`,
      );
      const back = Buffer.alloc(4096);
      loaded[0]!.read(4096, back);
      assert.ok(back.every((b) => b === 0x42));
      const ok = again.pendingRegion('ok');
      assert.equal(ok?.state, 'corrupt', what);
      assert.equal(ok?.error?.code, ErrorCodes.CORRUPT_FILE, what);
      assert.match(ok!.error!.message, reason, what);
      assert.throws(() => again.require('ok'), { code: ErrorCodes.REGION_FAILED });
      await assert.rejects(again.create({ name: 'ok', size: MiB, file: true }), {
        code: ErrorCodes.ALREADY_EXISTS,
      });
      assert.deepEqual(await again.close(), []);
      // Put it back for the next kind of damage.
      await writeFile(join(dir, 'ok.region.json'), JSON.stringify(meta));
      await writeFile(join(dir, 'ok.img'), '', { flag: 'a' });
      await truncate(join(dir, 'ok.img'), MiB);
    }
    assert.equal(pool.used, 0);

    // Deleting a corrupt region removes its files and frees its name.
    await writeFile(join(dir, 'ok.region.json'), '{ not json');
    const last = new RegionRegistry({ pool, dataDir: dir });
    await last.loadFromDataDir();
    await last.delete('ok');
    assert.deepEqual((await readdir(dir)).sort(), ['good.extents', 'good.img', 'good.region.json']);
    await last.create({ name: 'ok', size: MiB, file: true });
    assert.deepEqual(await last.close(), []);
  });
});

test('creating a file-backed region over existing files is refused', async () => {
  await withDir(async (dir) => {
    const pool = new FramePool({ capacity: 16 * MiB });
    await writeFile(join(dir, 'taken.img'), 'x');
    const registry = new RegionRegistry({ pool, dataDir: dir });
    await assert.rejects(registry.create({ name: 'taken', size: MiB, file: true }), {
      code: ErrorCodes.ALREADY_EXISTS,
    });
    assert.equal(registry.size, 0);
    assert.equal(pool.spaceCount, 0, 'the half-made region left no address space behind');
  });
});
