import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { PageAlignedPieces } from '../../src/nbd/server/write-pieces.js';

/** A write of `length` bytes at `offset` into a `size`-byte target, cut into pieces at `cuts`. */
const scenario = fc
  .record({
    pageShift: fc.integer({ min: 0, max: 12 }),
    offset: fc.integer({ min: 0, max: 20_000 }),
    length: fc.integer({ min: 1, max: 30_000 }),
    cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 40 }),
  })
  .map(({ pageShift, offset, length, cuts }) => {
    const bounds = [...new Set(cuts.map((c) => Math.floor(c * length)))]
      .filter((b) => b > 0 && b < length)
      .sort((a, b) => a - b);
    return { pageSize: 1 << pageShift, offset, length, bounds: [0, ...bounds, length] };
  });

interface Written {
  offset: number;
  length: number;
}

function run(pageSize: number, offset: number, payload: Uint8Array, bounds: number[], stopAfter = Infinity) {
  const target = new Uint8Array(offset + payload.length + pageSize);
  const writes: Written[] = [];
  const pieces = new PageAlignedPieces(pageSize, (at, src) => {
    writes.push({ offset: at, length: src.length });
    target.set(src, at);
  });
  pieces.begin(offset, payload.length);
  for (let i = 0; i + 1 < bounds.length && i < stopAfter; i++) {
    // Copy the piece into a fresh buffer overwritten afterwards: a piece is valid only during push.
    const piece = Buffer.from(payload.subarray(bounds[i], bounds[i + 1]));
    pieces.push(piece);
    piece.fill(0xee);
  }
  return { target, writes };
}

test('pieces cut anywhere land every byte once, at its place, whole pages only except at the ends', () => {
  fc.assert(
    fc.property(scenario, ({ pageSize, offset, length, bounds }) => {
      const payload = new Uint8Array(length);
      for (let i = 0; i < length; i++) payload[i] = (i * 31 + 7) & 0xff || 1;
      const { target, writes } = run(pageSize, offset, payload, bounds);
      assert.deepEqual(target.subarray(offset, offset + length), payload);
      assert.ok(
        target.subarray(0, offset).every((b) => b === 0),
        'nothing before the write',
      );
      assert.ok(
        target.subarray(offset + length).every((b) => b === 0),
        'nothing after it',
      );
      // In order, without overlap or gaps: every byte written exactly once.
      let next = offset;
      for (const w of writes) {
        assert.equal(w.offset, next);
        assert.ok(w.length > 0);
        next += w.length;
      }
      assert.equal(next, offset + length);
      // A write starts and ends on a page boundary unless that end is the request's own.
      for (const w of writes) {
        assert.ok(w.offset === offset || w.offset % pageSize === 0, `starts at ${w.offset}`);
        const end = w.offset + w.length;
        assert.ok(end === offset + length || end % pageSize === 0, `ends at ${end}`);
      }
    }),
    { numRuns: 500 },
  );
});

test('a write abandoned part-way has written whole pages only, a prefix of what arrived', () => {
  fc.assert(
    fc.property(scenario, fc.nat(), ({ pageSize, offset, length, bounds }, k) => {
      const stopAfter = k % bounds.length;
      const payload = new Uint8Array(length).fill(0xab);
      const { target, writes } = run(pageSize, offset, payload, bounds, stopAfter);
      const arrived = bounds[Math.min(stopAfter, bounds.length - 1)]!;
      const written = writes.reduce((n, w) => n + w.length, 0);
      assert.ok(written <= arrived, 'nothing that did not arrive');
      assert.ok(target.subarray(offset, offset + written).every((b) => b === 0xab));
      assert.ok(target.subarray(offset + written).every((b) => b === 0));
      if (written < length) {
        assert.ok((offset + written) % pageSize === 0 || written === 0, 'stopped on a page boundary');
        // Only the partial page at the cut is held back.
        assert.ok(arrived - written < pageSize, `${arrived - written} bytes held back`);
      }
    }),
    { numRuns: 500 },
  );
});

test('begin() drops what an abandoned write carried', () => {
  const seen: Written[] = [];
  const pieces = new PageAlignedPieces(8, (at, src) => seen.push({ offset: at, length: src.length }));
  pieces.begin(0, 16);
  pieces.push(Buffer.alloc(5)); // carried: 5 bytes of the first page
  pieces.begin(100, 4);
  pieces.push(Buffer.alloc(4));
  assert.deepEqual(seen, [{ offset: 100, length: 4 }]);
});
