import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { ReedSolomonCodec, StripeBatch } from '../../src/fabric/codec.js';
import { ErrorCodes } from '../../src/index.js';
import { seededBytes } from './seeded-bytes.js';

test('any m lost shards of a k+m stripe batch are rebuilt exactly', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 8 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 16 }),
      fc.integer({ min: 0, max: 2 ** 30 }),
      fc.integer(),
      async (k, m, stripes, seed, bytesSeed) => {
        const codec = new ReedSolomonCodec(k, m);
        const shardBytes = stripes * 512;
        // Bytes from a generated seed, not randomBytes: a shrunk counterexample replays.
        const data = seededBytes(bytesSeed, k * shardBytes);
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

for (const [k, m] of [
  [4, 2],
  [2, 1],
  [8, 2],
  [12, 6],
] as const) {
  test(`a stripe coded inside a batch of any size gets the parity it gets coded alone (${k}+${m})`, async () => {
    const codec = new ReedSolomonCodec(k, m);
    const page = 4096;
    const most = codec.maxStripesPerCall(page);
    assert.ok(most >= 8);
    // One group (most), two groups (most + 1, padded to even), four groups with padding.
    for (const count of [most, most + 1, 3 * most + 1]) {
      const batch = new StripeBatch(codec, page, count);
      assert.equal(batch.capacity, count);
      const stripes = Array.from({ length: count }, () => randomBytes(k * page));
      batch.reset(stripes.length);
      stripes.forEach((stripe, s) => {
        for (let i = 0; i < k; i++) batch.putPage(s, i, stripe, i * page);
      });
      await batch.encode();
      const fromBatch = Buffer.alloc(page);
      for (const [s, stripe] of stripes.entries()) {
        const alone = Buffer.alloc(m * page);
        await codec.encode(stripe, alone, page);
        for (let j = 0; j < m; j++) {
          batch.getPage(s, k + j, fromBatch);
          assert.ok(fromBatch.equals(alone.subarray(j * page, (j + 1) * page)), `stripe ${s} parity ${j}`);
        }
        batch.getPage(s, k - 1, fromBatch);
        assert.ok(
          fromBatch.equals(stripe.subarray((k - 1) * page, k * page)),
          'pages come back out as they went in',
        );
      }
      // A batch rebuilds the same lost pages of every stripe at once: lose data shard 0 and, when
      // there is parity to spare, parity shard k too.
      const missing = m >= 2 ? 1 | (1 << k) : 1;
      const zeros = Buffer.alloc(page);
      for (let s = 0; s < stripes.length; s++) {
        batch.putPage(s, 0, zeros);
        if (m >= 2) batch.putPage(s, k, zeros);
      }
      const all = (1 << (k + m)) - 1;
      await batch.reconstruct(all & ~missing, missing);
      for (const [s, stripe] of stripes.entries()) {
        batch.getPage(s, 0, fromBatch);
        assert.ok(fromBatch.equals(stripe.subarray(0, page)), `stripe ${s} data shard 0 rebuilt`);
      }
    }
  });
}

test('the synchronous coders give the parity ronomon encode gives, byte for byte, in every geometry', async () => {
  // encodeSync and encodeStripes replay ronomon's bitmatrix with its XOR on this thread; the
  // write path sends what they produce, and degraded reads and scrub decode it with ronomon.
  // Every k+m it accepts, at a small shard size and at one where ronomon halves its packets.
  const RS = createRequire(import.meta.url)('@ronomon/reed-solomon') as { MAX_K: number; MAX_M: number };
  for (let k = 1; k <= RS.MAX_K; k++) {
    for (let m = 1; m <= RS.MAX_M; m++) {
      const codec = new ReedSolomonCodec(k, m);
      for (const shardBytes of [8 * codec.w, 64 * 1024]) {
        const data = seededBytes(k * 1000 + m * 10 + shardBytes, k * shardBytes);
        const want = Buffer.alloc(m * shardBytes);
        await codec.encode(data, want, shardBytes);
        const got = Buffer.alloc(m * shardBytes, 0x5a); // stale bytes must not survive
        codec.encodeSync(data, got, shardBytes);
        assert.ok(got.equals(want), `encodeSync ${k}+${m}, ${shardBytes}-byte shards`);
      }
    }
  }
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 6 }),
      fc.constantFrom(512, 4096, 16_384),
      fc.integer({ min: 0, max: 40 }),
      fc.integer({ min: 0, max: 3 }),
      fc.integer(),
      async (k, m, stripes, pageSize, srcOffset, slackPages, seed) => {
        const codec = new ReedSolomonCodec(k, m);
        const stripeBytes = k * pageSize;
        // The stripes somewhere inside a larger buffer (aligned to 8 or not: slow, still right).
        const src = seededBytes(seed, srcOffset + stripes * stripeBytes + 9);
        const runBytes = (stripes + slackPages) * pageSize;
        const parity = Buffer.alloc(m * runBytes, 0x5a);
        codec.encodeStripes(src, srcOffset, stripes, pageSize, parity, runBytes);
        const alone = Buffer.alloc(m * pageSize);
        for (let s = 0; s < stripes; s++) {
          const at = srcOffset + s * stripeBytes;
          await codec.encode(Buffer.from(src.subarray(at, at + stripeBytes)), alone, pageSize);
          for (let j = 0; j < m; j++) {
            const run = parity.subarray(j * runBytes + s * pageSize, j * runBytes + (s + 1) * pageSize);
            assert.ok(
              run.equals(alone.subarray(j * pageSize, (j + 1) * pageSize)),
              `stripe ${s} parity ${j}`,
            );
          }
        }
        // Nothing past each run's stripes is written.
        for (let j = 0; j < m; j++) {
          const rest = parity.subarray(j * runBytes + stripes * pageSize, (j + 1) * runBytes);
          assert.ok(
            rest.every((byte) => byte === 0x5a),
            `parity ${j} past its stripes`,
          );
        }
      },
    ),
    { numRuns: 60 },
  );
  const codec = new ReedSolomonCodec(4, 2);
  assert.throws(
    () => codec.encodeStripes(Buffer.alloc(4 * 4096), 8, 1, 4096, Buffer.alloc(2 * 4096), 4096),
    (error: unknown) => (error as { code?: string }).code === ErrorCodes.INVALID_ARGUMENT,
  );
});

test('the synchronous coders are checked against ronomon once per geometry; one that differs is refused', async () => {
  // They replay ronomon's context, a layout its API does not promise: a version that lays it
  // out otherwise must stop coded writes, not feed them wrong parity.
  const codec = new ReedSolomonCodec(4, 2);
  const check = codec.checkSyncCoder();
  await check;
  assert.equal(new ReedSolomonCodec(4, 2).checkSyncCoder(), check, 'checked once per geometry');
  // A program one XOR short (what a changed layout would read), checked afresh.
  const wrong = new ReedSolomonCodec(4, 2) as unknown as {
    rows: Int32Array[];
    pagewise: boolean[];
    compareCoders(): Promise<void>;
  };
  wrong.pagewise[1] = false;
  wrong.rows[wrong.rows.length - 1] = wrong.rows[wrong.rows.length - 1]!.subarray(1);
  await assert.rejects(
    wrong.compareCoders(),
    (error: unknown) =>
      (error as { code?: string }).code === ErrorCodes.INTERNAL &&
      /@ronomon\/reed-solomon@6\.0\.0/.test((error as Error).message),
  );
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

test("ronomon's first parity shard is the XOR of the data shards, so one lost data shard rebuilds by XOR", async () => {
  for (const [k, m] of [
    [1, 1],
    [2, 1],
    [4, 2],
    [8, 2],
    [12, 6],
  ] as const) {
    const codec = new ReedSolomonCodec(k, m);
    const page = 4096;
    const batch = new StripeBatch(codec, page, 8);
    batch.reset(5);
    const stripes = Array.from({ length: 5 }, () => randomBytes(k * page));
    stripes.forEach((stripe, s) => {
      for (let i = 0; i < k; i++) batch.putPage(s, i, stripe, i * page);
    });
    await batch.encode();
    const lost = k - 1;
    for (let s = 0; s < 5; s++) batch.putPage(s, lost, Buffer.alloc(page));
    const present = (((1 << k) - 1) & ~(1 << lost)) | (1 << k);
    assert.equal(batch.rebuildByXor(present, 1 << lost), true);
    const back = Buffer.alloc(page);
    for (const [s, stripe] of stripes.entries()) {
      batch.getPage(s, lost, back);
      assert.ok(back.equals(stripe.subarray(lost * page, (lost + 1) * page)), `${k}+${m} stripe ${s}`);
    }
    assert.equal(
      batch.rebuildByXor(present | (1 << (k + m - 1)), 1 << lost),
      m === 1,
      'only from exactly those shards',
    );
  }
});

test('a batch takes 1 to capacity stripes, and rebuildByXor refuses anything but one lost data shard', async () => {
  const k = 4;
  const page = 512;
  const codec = new ReedSolomonCodec(k, 2);
  const batch = new StripeBatch(codec, page, 6);
  assert.equal(batch.capacity, 6);
  assert.throws(() => batch.reset(0), { code: ErrorCodes.INVALID_ARGUMENT });
  assert.throws(() => batch.reset(7), { code: ErrorCodes.INVALID_ARGUMENT });
  batch.reset(6);
  batch.reset(1);
  assert.equal(batch.count, 1);
  const parityK = 1 << k;
  const dataAll = (1 << k) - 1;
  // Not one data shard: a parity shard, two data shards. (Nothing lost at all is the caller's to
  // avoid: loadColumns never asks.)
  assert.equal(batch.rebuildByXor(dataAll | (1 << (k + 1)), parityK), false, 'a lost parity shard');
  assert.equal(batch.rebuildByXor(dataAll | parityK, parityK), false, 'parity k itself');
  assert.equal(batch.rebuildByXor((dataAll & ~0b11) | parityK, 0b11), false, 'two lost data shards');
  // Present must be exactly the other data shards and parity k.
  assert.equal(batch.rebuildByXor((dataAll & ~0b10) | (1 << (k + 1)), 0b10), false, 'without parity k');
  assert.equal(batch.rebuildByXor(dataAll & ~0b1110 & ~0b10, 0b10), false, 'too few data shards');

  // Pages at offsets inside larger buffers, in a batch of fewer stripes than its capacity: every
  // lost data shard rebuilds by XOR to exactly its bytes, and the refusals above changed nothing.
  batch.reset(3);
  const stripes = Array.from({ length: 3 }, (_, s) => seededBytes(s + 1, k * page + 7));
  stripes.forEach((stripe, s) => {
    for (let i = 0; i < k; i++) batch.putPage(s, i, stripe, 7 + i * page);
  });
  await batch.encode();
  for (let lost = 0; lost < k; lost++) {
    for (let s = 0; s < 3; s++) batch.putPage(s, lost, Buffer.alloc(page));
    assert.equal(batch.rebuildByXor((dataAll & ~(1 << lost)) | parityK, 1 << lost), true);
    const back = Buffer.alloc(page + 3, 0xee);
    for (const [s, stripe] of stripes.entries()) {
      batch.getPage(s, lost, back, 3);
      assert.ok(
        back.subarray(3).equals(stripe.subarray(7 + lost * page, 7 + (lost + 1) * page)),
        `stripe ${s} shard ${lost}`,
      );
      assert.ok(
        back.subarray(0, 3).every((b) => b === 0xee),
        'getPage writes only at its offset',
      );
    }
  }
});

test('putRange and getRange move exactly the bytes asked for, across packet rows and groups', () => {
  const k = 4;
  const m = 2;
  const page = 4096;
  const codec = new ReedSolomonCodec(k, m);
  const most = codec.maxStripesPerCall(page);
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2 * most + 3 }),
      fc.nat(),
      fc.nat(),
      fc.nat({ max: page - 1 }),
      fc.nat({ max: page }),
      fc.integer(),
      (count, stripeDraw, shardDraw, pageOffset, lengthDraw, seed) => {
        const batch = new StripeBatch(codec, page, count);
        batch.reset(count);
        const stripe = stripeDraw % count;
        const shard = shardDraw % (k + m);
        const length = Math.min(lengthDraw, page - pageOffset);
        // Every page of the batch distinct; then one range of one page overwritten.
        const pages = new Map<string, Buffer>();
        for (let s = 0; s < count; s++) {
          for (let i = 0; i < k + m; i++) {
            const bytes = seededBytes(seed ^ (s * 8 + i + 1), page);
            batch.putPage(s, i, bytes);
            pages.set(`${s}/${i}`, bytes);
          }
        }
        const src = seededBytes(seed + 1, length + 5);
        batch.putRange(stripe, shard, pageOffset, src, 5, length);
        src.copy(pages.get(`${stripe}/${shard}`)!, pageOffset, 5, 5 + length);
        const back = Buffer.alloc(page);
        for (let s = 0; s < count; s++) {
          for (let i = 0; i < k + m; i++) {
            batch.getPage(s, i, back);
            assert.ok(back.equals(pages.get(`${s}/${i}`)!), `stripe ${s} shard ${i}`);
          }
        }
        const out = Buffer.alloc(length + 6, 0xee);
        batch.getRange(stripe, shard, pageOffset, out, 3, length);
        assert.ok(out.subarray(3, 3 + length).equals(src.subarray(5, 5 + length)));
        assert.ok(
          out.subarray(0, 3).every((b) => b === 0xee) && out.subarray(3 + length).every((b) => b === 0xee),
        );
        assert.throws(() => batch.putPage(count, 0, back), { code: ErrorCodes.INVALID_ARGUMENT });
        assert.throws(() => batch.getPage(0, k + m, back), { code: ErrorCodes.INVALID_ARGUMENT });
      },
    ),
    { numRuns: 60 },
  );
});
