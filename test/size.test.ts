import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError, formatSize, parseSize } from '../src/index.js';

test('sizes parse from bytes and unit strings', () => {
  assert.equal(parseSize(4096), 4096);
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('512MiB'), 512 * 1024 ** 2);
  assert.equal(parseSize('1GiB'), 1024 ** 3);
  assert.equal(parseSize('2g'), 2 * 1024 ** 3);
  assert.equal(parseSize('1.5GB'), 1.5e9);
  assert.equal(parseSize(' 256 TiB '), 256 * 1024 ** 4);
});

test('bad sizes raise MF_INVALID_SIZE', () => {
  for (const bad of ['', 'lots', '12 parsecs', '-1', '1e3', -5, 1.5, Number.NaN, 2 ** 60, '99999PiB']) {
    assert.throws(
      () => parseSize(bad as number | string),
      (error: unknown) => error instanceof MemfabricError && error.code === ErrorCodes.INVALID_SIZE,
      String(bad),
    );
  }
});

test('formatSize output parses back to within rounding', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 50 }), (bytes) => {
      const back = parseSize(formatSize(bytes).replace(' ', ''));
      assert.ok(Math.abs(back - bytes) <= bytes * 0.01 + 1, `${bytes} -> ${formatSize(bytes)} -> ${back}`);
    }),
  );
});
