import assert from 'node:assert/strict';
import {
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
  openSync,
  writeSync,
  closeSync,
  readSync,
  ftruncateSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import fc from 'fast-check';
import { ErrorCodes } from '../../src/errors.js';
import { HeapImage } from '../../src/heap/image.js';
import { decodeSuperblock } from '../../src/heap/superblock.js';
import { seededBytes } from '../fabric/seeded-bytes.js';
import { typedError } from '../typed-error.js';

const dir = mkdtempSync(join(tmpdir(), 'memfabric-image-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const fresh = (): string => join(dir, `heap-${counter++}.img`);
const PAGE = 4096;

test('create refuses a path that exists and leaves the file untouched', async () => {
  const path = fresh();
  writeFileSync(path, 'precious');
  await assert.rejects(HeapImage.create({ path }), typedError(ErrorCodes.HEAP_EXISTS, path, 'Heap.open'));
  assert.equal(readFileSync(path, 'utf8'), 'precious');
});

test('open refuses a foreign file, an empty one and a newer version, leaving each untouched; a missing one is NOT_FOUND', async () => {
  const foreign = fresh();
  const bytes = seededBytes(1, 3 * PAGE);
  writeFileSync(foreign, bytes);
  await assert.rejects(
    HeapImage.open({ path: foreign }),
    typedError(ErrorCodes.HEAP_FOREIGN, foreign, 'not a memfabric heap image'),
  );
  assert.deepEqual(readFileSync(foreign), bytes);

  const empty = fresh();
  writeFileSync(empty, '');
  await assert.rejects(HeapImage.open({ path: empty }), typedError(ErrorCodes.HEAP_FOREIGN, 'empty'));

  const newer = fresh();
  await (await HeapImage.create({ path: newer, size: '1MiB' })).close();
  const image = readFileSync(newer);
  image.writeUInt32LE(99, 8); // the format version
  writeFileSync(newer, image);
  await assert.rejects(
    HeapImage.open({ path: newer }),
    typedError(ErrorCodes.HEAP_FOREIGN, 'version 99', 'newer'),
  );
  assert.deepEqual(readFileSync(newer), image);

  await assert.rejects(
    HeapImage.open({ path: join(dir, 'nothing.img') }),
    typedError(ErrorCodes.NOT_FOUND, 'Heap.create'),
  );
});

test('checkpoint, close and reopen: the bytes come back, and pages fault in lazily (nothing read at open)', async () => {
  const path = fresh();
  const heap = await HeapImage.create({ path, budget: '256KiB', size: '64MiB' });
  const data = seededBytes(7, 200 * PAGE); // 800 KiB: more than the budget
  await heap.space.writeAsync(3 * PAGE + 5, data);
  const report = await heap.checkpoint();
  assert.equal(report.generation, 1);
  assert.equal(report.dirtyPages, 201);
  await heap.close();
  const again = await HeapImage.open({ path, budget: '256KiB' });
  assert.equal(again.generation, 1);
  assert.equal(again.stats().residentBytes, 0, 'opening reads no data page');
  const back = new Uint8Array(data.length);
  await again.space.readAsync(3 * PAGE + 5, back);
  assert.deepEqual(Buffer.from(back), data);
  assert.equal(again.space.readU8(0), 0);
  await again.close();
});

test('a checkpoint costs the pages dirtied since the last one, and the program may write while it runs', async () => {
  const path = fresh();
  const heap = await HeapImage.create({ path, budget: '1MiB', size: '64MiB' });
  for (let page = 0; page < 100; page++) heap.space.writeU32(page * PAGE, page + 1);
  await heap.checkpoint();
  heap.space.writeU32(10 * PAGE, 1000);
  heap.space.writeU32(20 * PAGE, 2000);
  const running = heap.checkpoint();
  // Written after the checkpoint began: not part of it.
  heap.space.writeU32(30 * PAGE, 3000);
  const report = await running;
  assert.equal(report.dirtyPages, 2);
  assert.equal(report.generation, 2);
  await heap.close({ checkpoint: false });
  const again = await HeapImage.open({ path });
  assert.equal(again.space.readU32(10 * PAGE), 1000);
  assert.equal(again.space.readU32(20 * PAGE), 2000);
  assert.equal(again.space.readU32(30 * PAGE), 31, 'the write after the call is not in the checkpoint');
  await again.close();
});

test('model: random writes, trims and checkpoints; reopening after a close without checkpoint gives the last checkpoint', async () => {
  const op = fc.oneof(
    fc.record({
      kind: fc.constant('write' as const),
      offset: fc.nat(63 * PAGE),
      length: fc.integer({ min: 1, max: 3 * PAGE }),
      seed: fc.integer(),
    }),
    fc.record({
      kind: fc.constant('trim' as const),
      page: fc.nat(60),
      count: fc.integer({ min: 1, max: 4 }),
    }),
    fc.record({ kind: fc.constant('checkpoint' as const) }),
    fc.record({ kind: fc.constant('reopen' as const) }),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 30 }), async (ops) => {
      const path = fresh();
      const size = 64 * PAGE;
      let heap = await HeapImage.create({ path, budget: '64KiB', size });
      const live = new Uint8Array(size);
      let committed = new Uint8Array(size);
      try {
        for (const o of ops) {
          if (o.kind === 'write') {
            const length = Math.min(o.length, size - o.offset);
            const bytes = seededBytes(o.seed, length);
            heap.space.write(o.offset, bytes);
            live.set(bytes, o.offset);
          } else if (o.kind === 'trim') {
            const count = Math.min(o.count, 64 - o.page);
            heap.space.trim(o.page * PAGE, count * PAGE);
            live.fill(0, o.page * PAGE, (o.page + count) * PAGE);
          } else if (o.kind === 'checkpoint') {
            await heap.checkpoint();
            committed = live.slice();
          } else {
            await heap.close({ checkpoint: false });
            heap = await HeapImage.open({ path, budget: '64KiB' });
            live.set(committed);
          }
        }
        const found = new Uint8Array(size);
        await heap.space.readAsync(0, found);
        assert.deepEqual(found, live);
        await heap.close({ checkpoint: false });
        heap = await HeapImage.open({ path, budget: '64KiB' });
        await heap.space.readAsync(0, found);
        assert.deepEqual(found, committed);
        assert.deepEqual(await heap.verify(), []);
      } finally {
        await heap.close({ checkpoint: false });
        rmSync(path, { force: true });
      }
    }),
    { numRuns: 15 },
  );
});

test('freed slots are reused: rewriting the same pages over many checkpoints does not grow the image', async () => {
  const path = fresh();
  const heap = await HeapImage.create({ path, budget: '128KiB', size: '16MiB' });
  const sizes: number[] = [];
  for (let round = 0; round < 30; round++) {
    await heap.space.writeAsync(0, seededBytes(round, 64 * PAGE));
    await heap.checkpoint();
    sizes.push(heap.stats().imageBytes);
  }
  await heap.close();
  // 64 data pages, twice over (committed + new), plus map and superblock pages.
  assert.ok(sizes.at(-1)! <= (2 * 64 + 8) * PAGE, `image grew to ${sizes.at(-1)} bytes`);
  assert.equal(sizes.at(-1), sizes[10], 'steady state reached');
  assert.ok(statSync(path).size <= (2 * 64 + 8) * PAGE);
});

function superblockOf(path: string, slot: 0 | 1): ReturnType<typeof decodeSuperblock> {
  const fd = openSync(path, 'r');
  const bytes = Buffer.alloc(PAGE);
  readSync(fd, bytes, 0, PAGE, slot * PAGE);
  closeSync(fd);
  return decodeSuperblock(bytes);
}

function flipByte(path: string, position: number): void {
  const fd = openSync(path, 'r+');
  const one = Buffer.alloc(1);
  readSync(fd, one, 0, 1, position);
  one[0] ^= 0x40;
  writeSync(fd, one, 0, 1, position);
  closeSync(fd);
}

test('a flipped byte in a data page fails the read of that page with HEAP_CORRUPT, and verify() names it', async () => {
  const path = fresh();
  const heap = await HeapImage.create({ path, budget: '64KiB', size: '1MiB' });
  const marker = Buffer.from('a page whose bytes will be damaged on disk');
  heap.space.write(5 * PAGE, marker);
  heap.space.write(6 * PAGE, Buffer.from('an intact page'));
  await heap.close();
  const image = readFileSync(path);
  flipByte(path, image.indexOf(marker) + 3);
  const again = await HeapImage.open({ path, budget: '64KiB' });
  assert.equal(again.space.readU8(6 * PAGE), 'a'.charCodeAt(0), 'other pages read fine');
  assert.throws(
    () => again.space.readU8(5 * PAGE),
    typedError(ErrorCodes.HEAP_CORRUPT, 'checksum', 'heap check'),
  );
  const problems = await again.verify();
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /page 5 \(address 20480\)/);
  await again.close({ checkpoint: false });
});

test('a flipped byte in the page map, a truncated image, or both superblocks damaged: open says HEAP_CORRUPT', async () => {
  const path = fresh();
  const heap = await HeapImage.create({ path, budget: '64KiB', size: '8MiB' });
  await heap.space.writeAsync(0, seededBytes(3, 40 * PAGE));
  await heap.close();
  const pristine = readFileSync(path);
  const sb = superblockOf(path, 1);
  assert.equal(sb.kind, 'valid');
  const root = sb.kind === 'valid' ? sb.block.root.slot : 0;
  flipByte(path, root * PAGE + 12);
  await assert.rejects(HeapImage.open({ path }), typedError(ErrorCodes.HEAP_CORRUPT, 'map page', 'checksum'));

  writeFileSync(path, pristine);
  const fd = openSync(path, 'r+');
  ftruncateSync(fd, 4 * PAGE);
  closeSync(fd);
  await assert.rejects(HeapImage.open({ path }), typedError(ErrorCodes.HEAP_CORRUPT));

  writeFileSync(path, pristine);
  flipByte(path, 100);
  flipByte(path, PAGE + 100);
  await assert.rejects(HeapImage.open({ path }), typedError(ErrorCodes.HEAP_CORRUPT, 'neither superblock'));

  // One damaged superblock is survivable: the other names a whole checkpoint.
  writeFileSync(path, pristine);
  flipByte(path, PAGE + 100); // the newer one (generation 1 lives in slot 1)
  const older = await HeapImage.open({ path });
  assert.equal(older.generation, 0);
  await older.close({ checkpoint: false });
});

test('a checkpoint that fails on a dying disk rejects with CHECKPOINT_FAILED; reopening gives the previous checkpoint', async () => {
  const path = fresh();
  const first = await HeapImage.create({ path, budget: '1MiB', size: '8MiB' });
  first.space.write(0, seededBytes(1, 10 * PAGE));
  await first.close();
  // Three writes succeed, the rest of the checkpoint's fail.
  const heap = await HeapImage.open({ path, budget: '1MiB', failWritesAfter: 3 });
  heap.space.write(0, seededBytes(2, 10 * PAGE));
  await assert.rejects(
    heap.checkpoint(),
    typedError(ErrorCodes.CHECKPOINT_FAILED, 'generation 1 is still the recoverable state'),
  );
  assert.equal(heap.generation, 1);
  // The heap's memory still answers.
  const resident = new Uint8Array(10 * PAGE);
  heap.space.read(0, resident);
  assert.deepEqual(Buffer.from(resident), seededBytes(2, 10 * PAGE));
  await heap.close({ checkpoint: false }).catch(() => undefined);
  const again = await HeapImage.open({ path });
  const back = new Uint8Array(10 * PAGE);
  await again.space.readAsync(0, back);
  assert.deepEqual(Buffer.from(back), seededBytes(1, 10 * PAGE));
  await again.close();
});

test('a sparse heap (map pages that cover only holes) reopens', async () => {
  const path = fresh();
  const heap = await HeapImage.create({ path, budget: '256KiB', size: '1GiB' });
  heap.space.writeU32(0, 11);
  heap.space.writeU32(5000 * PAGE, 22); // map pages 1 to 8 cover nothing but holes
  heap.space.writeU32(200_000 * PAGE, 33);
  await heap.close();
  const again = await HeapImage.open({ path, budget: '256KiB' });
  assert.equal(again.space.readU32(0), 11);
  assert.equal(again.space.readU32(5000 * PAGE), 22);
  assert.equal(again.space.readU32(200_000 * PAGE), 33);
  assert.equal(again.space.readU32(3000 * PAGE), 0);
  await again.close();
});
