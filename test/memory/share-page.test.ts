/**
 * AddressSpace.sharePage: mapping a page to the frame of another page (same pool, same trust
 * domain), copy-on-write. Checked by examples and by a model-based property: random writes,
 * trims, forks and shares over a few spaces read back exactly as a plain byte-array model
 * says, and the pool's counters stay consistent with the page tables.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, ErrorCodes, FramePool } from '../../src/index.js';
import { checkPoolInvariants } from './invariants.js';

const PAGE = 4096;

test('a shared page reads the same bytes, costs no frame, and copies on the first write', () => {
  const pool = new FramePool({ capacity: 4 * PAGE });
  const a = new AddressSpace(pool, { size: 64 * PAGE, domain: 't' });
  const b = new AddressSpace(pool, { size: 64 * PAGE, domain: 't' });
  a.write(3 * PAGE, Buffer.alloc(PAGE, 0x5a));
  assert.equal(pool.used, 1);
  b.sharePage(10, a, 3);
  a.sharePage(7, a, 3);
  assert.equal(pool.used, 1, 'sharing takes no frame');
  const back = Buffer.alloc(PAGE);
  b.read(10 * PAGE, back);
  assert.ok(back.every((x) => x === 0x5a));
  a.read(7 * PAGE, back);
  assert.ok(back.every((x) => x === 0x5a));
  assert.equal(b.stats().sharedPages, 1);
  // The source had a writable translation cached for page 3: it must not write in place now.
  a.write(3 * PAGE, Buffer.alloc(1, 0x01));
  b.read(10 * PAGE, back);
  assert.ok(
    back.every((x) => x === 0x5a),
    'the sharer still sees the old bytes',
  );
  assert.equal(pool.used, 2, 'the write copied the frame');
  b.write(10 * PAGE + 5, Buffer.alloc(1, 0x02));
  a.read(7 * PAGE, back);
  assert.ok(back.every((x) => x === 0x5a));
  checkPoolInvariants(pool, [a, b]);
  a.destroy();
  b.destroy();
  assert.equal(pool.used, 0);
});

test('sharing works in a full pool and replaces whatever the page held', () => {
  const pool = new FramePool({ capacity: 2 * PAGE });
  const a = new AddressSpace(pool, { size: 8 * PAGE });
  a.write(0, Buffer.alloc(PAGE, 1));
  a.write(PAGE, Buffer.alloc(PAGE, 2));
  assert.equal(pool.free, 0);
  a.writeZeroes(4 * PAGE, PAGE, false); // the zero frame
  a.sharePage(2, a, 0);
  a.sharePage(4, a, 0); // over a zero page
  a.sharePage(1, a, 0); // over a private frame: it is freed
  assert.equal(pool.used, 1);
  assert.equal(pool.zeroEntries, 0);
  const back = Buffer.alloc(5 * PAGE);
  a.read(0, back);
  for (const page of [0, 1, 2, 4]) assert.equal(back[page * PAGE], 1, `page ${page}`);
  assert.equal(back[3 * PAGE], 0);
  checkPoolInvariants(pool, [a]);
  a.destroy();
});

test('sharing across trust domains, pools, or from a page without a frame is refused', () => {
  const pool = new FramePool({ capacity: 4 * PAGE });
  const other = new FramePool({ capacity: 4 * PAGE });
  const a = new AddressSpace(pool, { size: 8 * PAGE, domain: 'a' });
  const b = new AddressSpace(pool, { size: 8 * PAGE, domain: 'b' });
  const c = new AddressSpace(other, { size: 8 * PAGE, domain: 'a' });
  a.write(0, Buffer.alloc(PAGE, 1));
  assert.throws(() => b.sharePage(0, a, 0), { code: ErrorCodes.INVALID_ARGUMENT });
  assert.throws(() => c.sharePage(0, a, 0), { code: ErrorCodes.INVALID_ARGUMENT });
  assert.throws(() => a.sharePage(1, a, 2), { code: ErrorCodes.INVALID_ARGUMENT }, 'a hole');
  assert.throws(() => a.sharePage(8, a, 0), { code: ErrorCodes.OUT_OF_RANGE });
  assert.equal(pool.used, 1);
  checkPoolInvariants(pool, [a, b]);
});

type Op =
  | { kind: 'write'; space: number; page: number; fill: number }
  | { kind: 'trim'; space: number; page: number }
  | { kind: 'share'; space: number; page: number; from: number; fromPage: number }
  | { kind: 'fork'; space: number };

test('property: shares, writes, trims and forks read back as the model says', () => {
  const PAGES = 16;
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant('write' as const),
      space: fc.nat(3),
      page: fc.nat(PAGES - 1),
      fill: fc.integer({ min: 1, max: 3 }),
    }),
    fc.record({ kind: fc.constant('trim' as const), space: fc.nat(3), page: fc.nat(PAGES - 1) }),
    fc.record({
      kind: fc.constant('share' as const),
      space: fc.nat(3),
      page: fc.nat(PAGES - 1),
      from: fc.nat(3),
      fromPage: fc.nat(PAGES - 1),
    }),
    fc.record({ kind: fc.constant('fork' as const), space: fc.nat(3) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      const pool = new FramePool({ capacity: 256 * PAGE });
      const spaces = [new AddressSpace(pool, { size: PAGES * PAGE, domain: 'd' })];
      const models = [new Uint8Array(PAGES)]; // one fill byte per page (0: zeros)
      const page = Buffer.alloc(PAGE);
      for (const o of ops) {
        const i = o.space % spaces.length;
        const space = spaces[i]!;
        if (o.kind === 'write') {
          space.write(o.page * PAGE, page.fill(o.fill));
          models[i]![o.page] = o.fill;
        } else if (o.kind === 'trim') {
          space.trim(o.page * PAGE, PAGE);
          models[i]![o.page] = 0;
        } else if (o.kind === 'fork') {
          if (spaces.length < 4) {
            spaces.push(space.fork());
            models.push(models[i]!.slice());
          }
        } else {
          const j = o.from % spaces.length;
          if (models[j]![o.fromPage] === 0) continue; // only pages with frames can be shared
          space.sharePage(o.page, spaces[j]!, o.fromPage);
          models[i]![o.page] = models[j]![o.fromPage]!;
        }
        checkPoolInvariants(pool, spaces);
      }
      for (let s = 0; s < spaces.length; s++) {
        for (let p = 0; p < PAGES; p++) {
          spaces[s]!.read(p * PAGE, page);
          assert.ok(
            page.every((x) => x === models[s]![p]),
            `space ${s} page ${p} reads ${page[0]}, model ${models[s]![p]}`,
          );
        }
      }
      for (const space of spaces) space.destroy();
      assert.equal(pool.used, 0);
    }),
    { seed: 12_2026, numRuns: 200 },
  );
});
