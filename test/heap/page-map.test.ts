/**
 * The page map and the superblocks on their own (no pager, no worker): what a checkpoint
 * writes is what an open reads back, only changed map pages are rewritten, and every damaged
 * byte is caught by a checksum.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ErrorCodes } from '../../src/errors.js';
import { PageMap, SLOT_HOLE, SLOT_ZERO } from '../../src/heap/page-map.js';
import { xxh32 } from '@node-rs/xxhash';
import {
  BASE_PATH_MAX,
  HEAP_FORMAT_VERSION,
  PINS_MAX,
  chooseSuperblock,
  decodeSuperblock,
  encodeSuperblock,
  type Superblock,
} from '../../src/heap/superblock.js';
import { typedError } from '../typed-error.js';

const PAGE = 1024; // 128 entries per map page: deep trees from few pages

/** An in-memory image: slot -> bytes, with a counter of the pages written. */
function memoryImage(): {
  slots: Map<number, Uint8Array>;
  store: (bytes: Uint8Array) => Promise<number>;
  read: (slot: number, dst: Uint8Array) => Promise<void>;
} {
  const slots = new Map<number, Uint8Array>();
  let next = 2;
  return {
    slots,
    store: async (bytes) => {
      const slot = next++;
      slots.set(slot, new Uint8Array(bytes)); // a copy (Buffer#slice would share memory)
      return slot;
    },
    read: async (slot, dst) => {
      const bytes = slots.get(slot);
      if (bytes) dst.set(bytes);
      else dst.fill(0);
    },
  };
}

test('model: sets, writes and reads of the page map agree with a JS map; a write rewrites only changed map pages and their ancestors', async () => {
  const entry = fc.tuple(fc.nat(40_000), fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.nat(2 ** 32 - 1));
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.array(entry, { maxLength: 40 }), { minLength: 1, maxLength: 5 }),
      async (rounds) => {
        const image = memoryImage();
        const map = new PageMap(PAGE);
        const model = new Map<number, [number, number]>();
        let root = { slot: 0, checksum: 0, levels: 0 };
        for (const round of rounds) {
          const touched = new Set<number>();
          for (const [page, word, sum] of round) {
            map.set(page, word, sum);
            model.set(page, [word, sum]);
            touched.add(Math.floor(page / (PAGE / 8)));
          }
          const before = map.levels;
          const result = await map.write(image.store);
          root = result.root;
          assert.equal(root.levels, map.levelsFor(map.pages));
          // Level 1 pages written: exactly the touched ones (plus whole new upper levels).
          if (before === root.levels && round.length > 0) {
            assert.ok(result.written.length >= touched.size);
            assert.ok(result.written.length <= touched.size * root.levels);
            // A map page written before is replaced; one covering only new ground replaces nothing.
            assert.ok(result.replaced.length <= result.written.length);
            for (const slot of result.replaced)
              assert.ok(image.slots.has(slot), 'only written pages are replaced');
          }
          const back = await PageMap.read(PAGE, root, map.pages, image.read, 'test');
          for (let page = 0; page < map.pages; page++) {
            const want = model.get(page) ?? [SLOT_HOLE, 0];
            assert.equal(back.slotWord(page), want[0], `page ${page}`);
            assert.equal(back.checksum(page), want[1]);
          }
          let named = 0;
          back.forEachMapSlot(() => named++);
          let written = 0;
          map.forEachMapSlot(() => written++);
          assert.equal(named, written, 'the map read back names the map pages written');
        }
      },
    ),
    { numRuns: Number(process.env.MUTATION ? 20 : 40) },
  );
});

test('every flipped byte of every map page is caught by a checksum on read', async () => {
  const image = memoryImage();
  const map = new PageMap(PAGE);
  for (let page = 0; page < 1000; page += 3) map.set(page, 2 + page, page * 7);
  const { root } = await map.write(image.store);
  assert.equal(root.levels, 2);
  for (const [slot, bytes] of image.slots) {
    for (const at of [0, 1, 513, PAGE - 1]) {
      bytes[at]! ^= 0x10;
      await assert.rejects(
        PageMap.read(PAGE, root, map.pages, image.read, 'image'),
        typedError(ErrorCodes.HEAP_CORRUPT, 'image', `slot ${slot}`, 'checksum'),
      );
      bytes[at]! ^= 0x10;
    }
  }
  const sound = await PageMap.read(PAGE, root, map.pages, image.read, 'image');
  assert.equal(sound.slotWord(999), 2 + 999);
  assert.equal(sound.slotWord(998), SLOT_HOLE);
  // A superblock naming the wrong depth for its page count is refused too.
  await assert.rejects(
    PageMap.read(PAGE, { ...root, levels: 3 }, map.pages, image.read, 'image'),
    typedError(ErrorCodes.HEAP_CORRUPT, '3-level'),
  );
});

test('zero pages and holes are distinct entries; map pages covering only holes are never read', async () => {
  const image = memoryImage();
  const map = new PageMap(PAGE);
  map.set(0, SLOT_ZERO, 0);
  map.set(50_000, 77, 1);
  const { root } = await map.write(image.store);
  const reads: number[] = [];
  const back = await PageMap.read(
    PAGE,
    root,
    map.pages,
    async (slot, dst) => {
      reads.push(slot);
      await image.read(slot, dst);
    },
    'image',
  );
  assert.equal(back.slotWord(0), SLOT_ZERO);
  assert.equal(back.slotWord(1), SLOT_HOLE);
  assert.equal(back.slotWord(50_000), 77);
  assert.equal(reads.length, image.slots.size, 'only the pages written are read');
});

function block(overrides: Partial<Superblock> = {}): Superblock {
  return {
    pageSize: 4096,
    generation: 7,
    size: 2 ** 40,
    root: { slot: 9, checksum: 0xdeadbeef, levels: 2 },
    pages: 123_456,
    baseSlots: 0,
    basePath: '',
    baseGeneration: 0,
    time: 1_700_000_000_000,
    usedBytes: 5555,
    pins: [],
    ...overrides,
  };
}

test('superblocks: encode and decode round-trip; a flipped byte is damage; the newer valid one wins', () => {
  const pins = [{ slot: 3, checksum: 4, levels: 1, pages: 100, generation: 5 }];
  const original = block({ pins, baseSlots: 77, basePath: '/var/lib/päth.heap', baseGeneration: 6 });
  const bytes = encodeSuperblock(original, 4096);
  const read = decodeSuperblock(bytes);
  assert.deepEqual(read, { kind: 'valid', block: original });
  for (const at of [0, 8, 16, 40, 100, 600, 1019, 1022]) {
    const damaged = Buffer.from(bytes);
    damaged[at]! ^= 1;
    const kind = decodeSuperblock(damaged).kind;
    assert.ok(kind === 'damaged' || kind === 'foreign', `byte ${at}: ${kind}`);
  }
  assert.equal(decodeSuperblock(new Uint8Array(4096)).kind, 'empty');
  const newer = Buffer.from(bytes);
  newer.writeUInt32LE(HEAP_FORMAT_VERSION + 1, 8);
  assert.deepEqual(decodeSuperblock(newer), { kind: 'newer', version: HEAP_FORMAT_VERSION + 1 });

  const a = decodeSuperblock(encodeSuperblock(block({ generation: 8 }), 4096));
  const b = decodeSuperblock(encodeSuperblock(block({ generation: 9 }), 4096));
  assert.equal(chooseSuperblock('x', a, b).slot, 1);
  assert.equal(chooseSuperblock('x', b, a).slot, 0);
  assert.equal(chooseSuperblock('x', a, { kind: 'damaged', why: 'torn' }).block.generation, 8);
  assert.equal(chooseSuperblock('x', { kind: 'damaged', why: 'torn' }, b).block.generation, 9);
  assert.throws(
    () => chooseSuperblock('x', { kind: 'damaged', why: 'torn' }, { kind: 'empty' }),
    typedError(ErrorCodes.HEAP_CORRUPT, 'neither superblock', 'torn'),
  );
  assert.throws(() => chooseSuperblock('x', { kind: 'foreign' }, b), typedError(ErrorCodes.HEAP_FOREIGN));
  assert.throws(
    () => chooseSuperblock('x', a, { kind: 'newer', version: 2 }),
    typedError(ErrorCodes.HEAP_FOREIGN, 'version 2'),
  );
});

test('entries past the map read as holes; forEachEntry, forEachMapSlot and mapPages describe exactly what is stored', async () => {
  const image = memoryImage();
  const map = new PageMap(PAGE);
  assert.equal(map.slotWord(5), SLOT_HOLE);
  assert.equal(map.checksum(5), 0);
  map.set(3, 40, 41);
  map.set(200, SLOT_ZERO, 0);
  map.set(300, 50, 51);
  assert.equal(map.slotWord(301), SLOT_HOLE, 'past the last page');
  assert.equal(map.checksum(301), 0);
  assert.equal(map.slotWord(300), 50);
  assert.equal(map.checksum(300), 51);
  const seen: [number, number, number][] = [];
  map.forEachEntry((page, word, sum) => seen.push([page, word, sum]));
  assert.deepEqual(seen, [
    [3, 40, 41],
    [200, SLOT_ZERO, 0],
    [300, 50, 51],
  ]);
  assert.equal(map.mapPages, 3 + 1, 'three level-1 pages (128 entries each) and a root');
  const { root, written } = await map.write(image.store);
  const named: number[] = [];
  map.forEachMapSlot((slot) => named.push(slot));
  assert.deepEqual(named.sort(), [...written].sort(), 'every map page written is named, the hole page none');
  assert.equal(root.slot, named.at(-1));
  const words = map.entryWords();
  assert.equal(words.length, 2 * 301);
  assert.deepEqual([words[600], words[601]], [50, 51]);
});

test('snapshotNodes/restoreNodes undo a write that never committed; cloneForWrite writes a whole copy', async () => {
  const image = memoryImage();
  const map = new PageMap(PAGE);
  for (let page = 0; page < 400; page += 50) map.set(page, 100 + page, page);
  const first = await map.write(image.store);
  const saved = map.snapshotNodes();
  map.set(60, 999, 1);
  const second = await map.write(image.store);
  assert.notEqual(second.root.slot, first.root.slot);
  map.restoreNodes(saved);
  map.set(60, SLOT_HOLE, 0);
  const named: number[] = [];
  map.forEachMapSlot((slot) => named.push(slot));
  assert.ok(named.includes(first.root.slot), 'the restored tree names the committed root again');
  assert.ok(!named.includes(second.root.slot));
  // Pages dirty before the failed write are dirty again afterwards: the next write redoes them.
  map.set(60, 777, 2);
  const third = await map.write(image.store);
  const back = await PageMap.read(PAGE, third.root, map.pages, image.read, 'image');
  assert.equal(back.slotWord(60), 777);
  assert.equal(back.slotWord(350), 450);

  const copy = map.cloneForWrite();
  const before = image.slots.size;
  const copied = await copy.write(image.store);
  assert.equal(copied.replaced.length, 0, 'a clone replaces nothing of the original');
  assert.equal(image.slots.size - before, map.mapPages, 'a clone writes every map page anew');
  const fromCopy = await PageMap.read(PAGE, copied.root, copy.pages, image.read, 'image');
  for (let page = 0; page < 400; page++) assert.equal(fromCopy.slotWord(page), back.slotWord(page));
  // The original is untouched by the clone's write.
  const again = await map.write(image.store);
  assert.equal(again.written.length, 0, 'nothing of the original was dirtied');
});

test('superblocks with the most pins and the longest base path round-trip; more are refused; impossible counts are damage', () => {
  const pins = Array.from({ length: PINS_MAX }, (_, i) => ({
    slot: 10 + i,
    checksum: 1000 + i,
    levels: 1 + (i % 3),
    pages: 2 ** 33 + i,
    generation: 50 + i,
  }));
  const longest = 'é'.repeat(BASE_PATH_MAX / 2);
  const full = block({ pins, basePath: longest, baseSlots: 9, baseGeneration: 3 });
  assert.deepEqual(decodeSuperblock(encodeSuperblock(full, 4096)), { kind: 'valid', block: full });
  assert.throws(() => encodeSuperblock(block({ pins: [...pins, pins[0]!] }), 4096), /at most/);
  assert.throws(() => encodeSuperblock(block({ basePath: `${longest}x` }), 4096), /longer than/);
  // A count past the maximum, with a valid checksum, is still refused.
  const bytes = Buffer.from(encodeSuperblock(block(), 4096));
  bytes.writeUInt32LE(PINS_MAX + 1, 72);
  bytes.writeUInt32LE(xxh32(bytes.subarray(0, 1020), 0) >>> 0, 1020);
  assert.deepEqual(decodeSuperblock(bytes), { kind: 'damaged', why: 'impossible field values' });
  const path = Buffer.from(encodeSuperblock(block(), 4096));
  path.writeUInt16LE(BASE_PATH_MAX + 1, 592);
  path.writeUInt32LE(xxh32(path.subarray(0, 1020), 0) >>> 0, 1020);
  assert.equal(decodeSuperblock(path).kind, 'damaged');
  assert.deepEqual(decodeSuperblock(new Uint8Array(512)), {
    kind: 'damaged',
    why: 'shorter than a superblock',
  });
  // A file that starts with zeros and continues with something else is not a heap either.
  assert.throws(
    () => chooseSuperblock('x', { kind: 'empty' }, { kind: 'foreign' }),
    typedError(ErrorCodes.HEAP_FOREIGN),
  );
  const valid = decodeSuperblock(encodeSuperblock(block({ generation: 4 }), 4096));
  assert.equal(chooseSuperblock('x', { kind: 'empty' }, valid).block.generation, 4);
});
