/**
 * PageRuns (the extent map): union, difference, cover and the on-disk form agree with a plain
 * set of pages (fast-check, seeded), and a damaged map file is refused with a reason rather
 * than trusted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PageRuns } from '../../src/appliance/extent-map.js';

const PAGES = 200;
const pageSet = fc
  .uniqueArray(fc.nat(PAGES - 1), { maxLength: 80 })
  .map((pages) => pages.sort((a, b) => a - b));

function pagesOf(runs: PageRuns): number[] {
  const out: number[] = [];
  runs.forEach((first, count) => {
    for (let p = first; p < first + count; p++) out.push(p);
  });
  return out;
}

/** Canonical: ascending, disjoint, never adjacent (so equals() can compare run by run). */
function assertCanonical(runs: PageRuns): void {
  let end = -2;
  runs.forEach((first, count) => {
    assert.ok(count >= 1 && first > end, `run ${first}+${count} after ${end}`);
    end = first + count;
  });
}

test('property: union, difference and cover match a set of pages', () => {
  fc.assert(
    fc.property(pageSet, pageSet, pageSet, (a, b, probe) => {
      const runs = PageRuns.fromPages(a);
      assert.deepEqual(pagesOf(runs), a);
      const union = runs.withPages(b);
      assertCanonical(union);
      assert.deepEqual(
        pagesOf(union),
        [...new Set([...a, ...b])].sort((x, y) => x - y),
      );
      const difference = runs.withoutPages(b);
      assertCanonical(difference);
      assert.deepEqual(
        pagesOf(difference),
        a.filter((p) => !b.includes(p)),
      );
      assert.equal(
        runs.covers(probe),
        probe.every((p) => a.includes(p)),
      );
      assert.ok(union.covers(b) && union.covers(a));
      assert.equal(union.equals(PageRuns.fromPages(pagesOf(union))), true);
      assert.equal(runs.pageCount, a.length);
    }),
    { seed: 0xe47e, numRuns: 500 },
  );
});

test('property: a map survives encode and decode', () => {
  fc.assert(
    fc.property(pageSet, (pages) => {
      const runs = PageRuns.fromPages(pages);
      const back = PageRuns.decode(runs.encode(4096), 4096, PAGES);
      assert.ok(back instanceof PageRuns, String(back));
      assert.ok(back.equals(runs));
    }),
    { seed: 0xe47f, numRuns: 200 },
  );
});

test('a damaged map is refused with a reason', () => {
  const good = PageRuns.fromPages([1, 2, 3, 50, 199]).encode(4096);
  const flipped = Buffer.from(good);
  flipped[flipped.length - 3]! ^= 1;
  assert.match(String(PageRuns.decode(flipped, 4096, PAGES)), /checksum/);
  assert.match(String(PageRuns.decode(good.subarray(0, good.length - 1), 4096, PAGES)), /truncated/);
  assert.match(String(PageRuns.decode(good, 8192, PAGES)), /4096-byte pages/);
  assert.match(String(PageRuns.decode(good, 4096, 100)), /out of order or range/);
  assert.match(String(PageRuns.decode(Buffer.from('{"json": true}'), 4096, PAGES)), /magic/);
});
