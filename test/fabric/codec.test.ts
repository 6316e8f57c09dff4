import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { ReedSolomonCodec, StripeBatch } from '../../src/fabric/codec.js';
import { ErrorCodes } from '../../src/index.js';

test('any m lost shards of a k+m stripe batch are rebuilt exactly', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 16 }),
      fc.integer({ min: 0, max: 2 ** 30 }),
      async (k, m, stripes, seed) => {
        const codec = new ReedSolomonCodec(k, m);
        const shardBytes = stripes * 512;
        const data = randomBytes(k * shardBytes);
        const parity = Buffer.alloc(m * shardBytes);
        await codec.encode(data, parity, shardBytes);
        const original = Buffer.concat([data, parity]);
        // Lose up to m shards, chosen from the seed; scribble over them.
        let missing = 0;
        for (let i = 0, s = seed; i < m; i++, s = Math.floor(s / (k + m))) missing |= 1 << (s % (k + m));
        for (let shard = 0; shard < k + m; shard++) {
          if (!(missing & (1 << shard))) continue;
          const index = shard < k ? shard : shard - k;
          (shard < k ? data : parity).fill(0xa5, index * shardBytes, (index + 1) * shardBytes);
        }
        const all = (1 << (k + m)) - 1;
        await codec.reconstruct(data, parity, shardBytes, all & ~missing, missing);
        assert.ok(Buffer.concat([data, parity]).equals(original));
      },
    ),
    { numRuns: 60 },
  );
});

test('a stripe coded inside a batch gets the parity it gets coded alone', async () => {
  const codec = new ReedSolomonCodec(4, 2);
  const page = 4096;
  const stripes = Array.from({ length: 7 }, () => randomBytes(4 * page));
  const batch = new StripeBatch(codec, page, 16);
  batch.reset(stripes.length);
  stripes.forEach((stripe, s) => {
    for (let i = 0; i < 4; i++) batch.putPage(s, i, stripe, i * page);
  });
  await batch.encode();
  for (const [s, stripe] of stripes.entries()) {
    const alone = Buffer.alloc(2 * page);
    await codec.encode(stripe, alone, page);
    for (let j = 0; j < 2; j++) {
      const fromBatch = Buffer.alloc(page);
      batch.getPage(s, 4 + j, fromBatch);
      assert.ok(fromBatch.equals(alone.subarray(j * page, (j + 1) * page)), `stripe ${s} parity ${j}`);
    }
    const back = Buffer.alloc(page);
    batch.getPage(s, 2, back);
    assert.ok(back.equals(stripe.subarray(2 * page, 3 * page)), 'pages come back out as they went in');
  }
  // And a batch rebuilds lost pages of every stripe at once.
  for (let s = 0; s < stripes.length; s++) {
    batch.zeroPage(s, 1);
    batch.zeroPage(s, 4);
  }
  await batch.reconstruct(0b101101, 0b010010);
  const back = Buffer.alloc(page);
  batch.getPage(3, 1, back);
  assert.ok(back.equals(stripes[3]!.subarray(page, 2 * page)));
});

test('impossible geometries and too few shards are typed errors', async () => {
  assert.throws(() => new ReedSolomonCodec(0, 2), { code: ErrorCodes.INVALID_ARGUMENT });
  assert.throws(() => new ReedSolomonCodec(4, 0), { code: ErrorCodes.INVALID_ARGUMENT });
  assert.throws(() => new ReedSolomonCodec(40, 2), { code: ErrorCodes.INVALID_ARGUMENT });
  const codec = new ReedSolomonCodec(4, 2);
  await assert.rejects(
    codec.reconstruct(Buffer.alloc(4 * 64), Buffer.alloc(2 * 64), 64, 0b000111, 0b111000),
    {
      code: ErrorCodes.INVALID_ARGUMENT,
    },
  );
  await assert.rejects(codec.encode(Buffer.alloc(4 * 60), Buffer.alloc(2 * 60), 60), {
    code: ErrorCodes.INVALID_ARGUMENT,
  });
});
