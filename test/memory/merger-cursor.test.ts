/**
 * The merger's cursor: AddressSpace.nextLeafPage, which moves from leaf to leaf through the
 * interior levels of the page table. As a property over spaces of one to three interior levels:
 * stepping from page 0 finds exactly the leaves forEachLeaf walks, in the same order, and from
 * any page it finds the leaf holding that page or the first one after it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AddressSpace, FramePool } from '../../src/index.js';

const PAGE = 4096;
const LEAF_PAGES = 512;

test('property: nextLeafPage steps through exactly the leaves of the table, in page order', () => {
  const pool = new FramePool({ capacity: 4 * 1024 * 1024 });
  const bytes = Buffer.alloc(PAGE, 1);
  fc.assert(
    fc.property(
      // 1 GiB (one interior level), 1 TiB (two), 256 TiB (three), and an odd size.
      fc.constantFrom(2 ** 30, 2 ** 40, 2 ** 48, 3 * 2 ** 33 + 5 * PAGE),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), { maxLength: 40 }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), { maxLength: 10 }),
      (size, written, probes) => {
        const space = new AddressSpace(pool, { size });
        try {
          for (const at of written) space.write(Math.floor(at * space.pages) * PAGE, bytes);
          const walked: number[] = [];
          space.forEachLeaf((_leaf, firstPage) => walked.push(firstPage));
          const stepped: number[] = [];
          for (let page = space.nextLeafPage(0); page >= 0; page = space.nextLeafPage(page + LEAF_PAGES)) {
            stepped.push(page);
            assert.ok(stepped.length <= walked.length, 'no leaf found twice');
          }
          assert.deepEqual(stepped, walked);
          for (const at of probes) {
            const from = Math.floor(at * space.pages);
            const expected = walked.find((first) => first + LEAF_PAGES > from) ?? -1;
            assert.equal(space.nextLeafPage(from), expected, `from page ${from}`);
          }
          assert.equal(space.nextLeafPage(space.pages), -1, 'nothing at or past the end');
        } finally {
          space.destroy();
        }
      },
    ),
    { numRuns: 200 },
  );
});

test('nextLeafPage on a destroyed space finds nothing', () => {
  const pool = new FramePool({ capacity: 1024 * 1024 });
  const space = new AddressSpace(pool, { size: 2 ** 40 });
  space.write(5 * 2 ** 30, Buffer.alloc(PAGE, 1));
  assert.equal(space.nextLeafPage(0), (5 * 2 ** 30) / PAGE);
  space.destroy();
  assert.equal(space.nextLeafPage(0), -1);
});
