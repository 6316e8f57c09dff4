/**
 * The pager's checksums (the heap turns them on): every page eviction writes to the store gets
 * the xxh32 of its bytes, whatever the dedup setting or hash; a page whose stored bytes were
 * changed behind the pager's back fails its fault with HEAP_CORRUPT naming the slot, every
 * other page reads back exactly, and nothing wrong is ever handed out. The stored bytes are
 * flipped in the swap file itself, where slot s lies at byte (s + 1) · pageSize (file-store.ts).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { xxh32 } from '@node-rs/xxhash';
import { ErrorCodes } from '../../src/errors.js';
import { Pager, type PagerOptions } from '../../src/tier/pager.js';
import type { AddressSpace } from '../../src/memory/address-space.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
/** Pages with bytes of their own, then one page that repeats page 0's bytes. */
const PAGES = 12;
const TWIN = 20;
/** The page whose stored bytes get flipped, and the byte of it. */
const VICTIM = 5;
const FLIPPED_BYTE = 100;

let dir: string;
const pagers: Pager[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'memfabric-pager-sums-'));
});

after(async () => {
  for (const pager of pagers) await pager.close();
  await rm(dir, { recursive: true, force: true });
});

async function openPager(options: Partial<PagerOptions>): Promise<{ pager: Pager; file: string }> {
  const file = join(dir, `p${pagers.length}.swap`);
  const pager = await Pager.open({
    budget: 1 * MiB,
    prefetch: 0,
    store: { kind: 'file', path: file },
    ...options,
  });
  pagers.push(pager);
  return { pager, file };
}

/** A page's bytes: its number and version up front, then a filler that differs per page. */
function pattern(page: number, version: number): Buffer {
  const bytes = Buffer.alloc(PAGE, (page * 31 + version * 7 + 1) & 0xff);
  bytes.writeUInt32LE(page, 0);
  bytes.writeUInt32LE(version, 4);
  return bytes;
}

/** What each written page should hold: pages 0..PAGES-1 their own bytes, TWIN page 0's. */
function contents(): Map<number, Buffer> {
  const model = new Map<number, Buffer>();
  for (let page = 0; page < PAGES; page++) model.set(page, pattern(page, 1));
  model.set(TWIN, pattern(0, 1));
  return model;
}

/** The store slot a swapped page names (fails when the page is resident). */
function slotOf(space: AddressSpace, page: number): number {
  const entry = space.frameAt(page);
  assert.ok(entry < 0, `page ${page} is swapped out (entry ${entry})`);
  return -1 - entry;
}

function readPage(space: AddressSpace, page: number): Buffer {
  const bytes = Buffer.alloc(PAGE);
  space.read(page * PAGE, bytes);
  return bytes;
}

/** Flips one byte of slot `slot` in the swap file (the destager has written it: flush first). */
async function flipStored(file: string, slot: number, byte: number): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    const position = (slot + 1) * PAGE + byte;
    const one = Buffer.alloc(1);
    assert.equal((await handle.read(one, 0, 1, position)).bytesRead, 1);
    one[0] = one[0]! ^ 0xff;
    await handle.write(one, 0, 1, position);
  } finally {
    await handle.close();
  }
}

const variants: Array<[string, Partial<PagerOptions>]> = [
  ['dedup with the default hash', {}],
  ['no dedup', { dedup: false }],
  // Dedup keyed on another hash: the checksum must still be xxh32, not the dedup hash.
  ['dedup with another hash', { hash: (page) => xxh32(page, 7) }],
];

describe('pager checksums', () => {
  for (const [label, options] of variants) {
    it(`checksums (${label}): evicted pages read back exactly; a page flipped in the store fails with HEAP_CORRUPT naming its slot`, async () => {
      const { pager, file } = await openPager({ ...options, checksums: true });
      const dedup = options.dedup ?? true;
      const space = pager.createSpace({ size: 16 * MiB });
      const model = contents();
      for (const [page, bytes] of model) space.write(page * PAGE, bytes);

      // Written back by eviction: each slot's checksum is the xxh32 of the page's bytes.
      pager.shrink(0);
      assert.equal(pager.stats().writeBacks, dedup ? PAGES : PAGES + 1);
      const slots = new Map<number, number>();
      for (const [page, bytes] of model) {
        const slot = slotOf(space, page);
        slots.set(page, slot);
        assert.equal(pager.slotChecksum(slot), xxh32(bytes, 0) >>> 0, `checksum of page ${page}`);
      }
      if (dedup) assert.equal(slots.get(TWIN), slots.get(0), 'identical pages share a slot');
      else assert.notEqual(slots.get(TWIN), slots.get(0), 'without dedup each page has its own slot');

      // Faulted back (each one verified against its checksum), then dropped clean: same slots.
      for (const [page, bytes] of model) assert.ok(readPage(space, page).equals(bytes), `page ${page}`);
      pager.shrink(0);
      assert.equal(pager.stats().cleanDrops, model.size, 'faulted-in pages go back to their slots');
      for (const [page, slot] of slots) assert.equal(slotOf(space, page), slot, `page ${page}'s slot`);

      // Flip one byte of the victim's stored page.
      await pager.flush();
      const victimSlot = slots.get(VICTIM)!;
      await flipStored(file, victimSlot, FLIPPED_BYTE);
      const corrupt = (error: unknown): boolean => {
        assert.equal((error as { code?: string }).code, ErrorCodes.HEAP_CORRUPT);
        assert.match((error as Error).message, new RegExp(`slot ${victimSlot} \\(`));
        return true;
      };
      assert.throws(() => readPage(space, VICTIM), corrupt);
      assert.throws(() => readPage(space, VICTIM), corrupt, 'the bad bytes were never installed');
      assert.ok(space.frameAt(VICTIM) < 0, 'the victim stays swapped');
      for (const [page, bytes] of model) {
        if (page !== VICTIM) assert.ok(readPage(space, page).equals(bytes), `untouched page ${page}`);
      }

      // A whole-page write replaces the victim without reading it; evicted again, it reads back.
      const fresh = pattern(VICTIM, 2);
      space.write(VICTIM * PAGE, fresh);
      pager.shrink(0);
      const freshSlot = slotOf(space, VICTIM);
      assert.equal(pager.slotChecksum(freshSlot), xxh32(fresh, 0) >>> 0);
      assert.ok(readPage(space, VICTIM).equals(fresh), 'the rewritten victim reads back');
      space.destroy();
    });
  }

  it('HEAP_CORRUPT names the byte of the swap file where the damaged page really lies', async () => {
    const { pager, file } = await openPager({ checksums: true, dedup: false });
    const space = pager.createSpace({ size: 16 * MiB });
    const model = contents();
    for (const [page, bytes] of model) space.write(page * PAGE, bytes);
    pager.shrink(0);
    await pager.flush();
    const victimSlot = slotOf(space, VICTIM);
    await flipStored(file, victimSlot, FLIPPED_BYTE);
    let message = '';
    assert.throws(
      () => readPage(space, VICTIM),
      (error: unknown) => {
        assert.equal((error as { code?: string }).code, ErrorCodes.HEAP_CORRUPT);
        message = (error as Error).message;
        return true;
      },
    );
    const reported = /slot (\d+) \(byte (\d+)\)/.exec(message);
    assert.ok(reported, `the message names a slot and a byte: ${message}`);
    assert.equal(Number(reported[1]), victimSlot);
    // Read the file where the message points: the victim's stored bytes, with the flipped byte.
    const handle = await open(file, 'r');
    const found = Buffer.alloc(PAGE);
    try {
      assert.equal((await handle.read(found, 0, PAGE, Number(reported[2]))).bytesRead, PAGE);
    } finally {
      await handle.close();
    }
    const damaged = Buffer.from(model.get(VICTIM)!);
    damaged[FLIPPED_BYTE] = damaged[FLIPPED_BYTE]! ^ 0xff;
    assert.ok(found.equals(damaged), `byte ${reported[2]} of the file starts the damaged page`);
    space.destroy();
  });

  it('checksums with read-ahead: a damaged page read ahead is dropped; the page asked for is handed out', async () => {
    const { pager, file } = await openPager({ checksums: true, prefetch: 8, dedup: false });
    const space = pager.createSpace({ size: 16 * MiB });
    const model = contents();
    for (const [page, bytes] of model) space.write(page * PAGE, bytes);
    pager.shrink(0);
    await pager.flush();
    const victimSlot = slotOf(space, VICTIM);
    await flipStored(file, victimSlot, FLIPPED_BYTE);
    // Sequential faults from page 0: the faults before the victim read it ahead; each of them
    // must still hand out its own intact page.
    for (let page = 0; page < VICTIM; page++) {
      assert.ok(readPage(space, page).equals(model.get(page)!), `page ${page} before the victim`);
    }
    assert.ok(pager.stats().prefetched > 0, 'pages were read ahead');
    assert.ok(space.frameAt(VICTIM) < 0, 'the damaged page read ahead was not installed');
    assert.throws(
      () => readPage(space, VICTIM),
      (error: unknown) => (error as { code?: string }).code === ErrorCodes.HEAP_CORRUPT,
    );
    for (let page = VICTIM + 1; page < PAGES; page++) {
      assert.ok(readPage(space, page).equals(model.get(page)!), `page ${page} after the victim`);
    }
    space.destroy();
  });

  it('no checksums (swap, the default): none is recorded, and a flipped stored byte is not caught', async () => {
    const { pager, file } = await openPager({});
    const space = pager.createSpace({ size: 16 * MiB });
    const model = contents();
    for (const [page, bytes] of model) space.write(page * PAGE, bytes);
    pager.shrink(0);
    for (const page of model.keys()) assert.equal(pager.slotChecksum(slotOf(space, page)), undefined);
    await pager.flush();
    await flipStored(file, slotOf(space, VICTIM), FLIPPED_BYTE);
    // The control for the tests above: the flip reached the store, and only a checksum finds it.
    const expected = Buffer.from(model.get(VICTIM)!);
    expected[FLIPPED_BYTE] = expected[FLIPPED_BYTE]! ^ 0xff;
    assert.ok(readPage(space, VICTIM).equals(expected), 'the stored (flipped) bytes come back');
    space.destroy();
  });
});
