/**
 * What a coded write sends to its shards (external-region.ts, "Writes (coded)"): stripes the
 * write covers whole are coded from the new bytes and never read; only the stripes at its ends
 * that it covers in part are read first; each data shard is written the columns the write
 * touched and no others, each parity shard every column of the batch. Counted on the appliances
 * themselves (each shard's region counts the bytes NBD read and wrote), against a model of the
 * layout, for writes fast-check draws and for the edges named below. The bytes read back are
 * checked too; fabric.test.ts checks every shard's contents and parity.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Appliance } from '../../src/index.js';
import { Fabric, ReedSolomonCodec, StripeBatch, type ExternalRegion } from '../../src/fabric/index.js';
import { BATCH_STRIPES } from '../../src/fabric/external-region.js';
import { TEST_TOKEN, testAuth } from '../appliance/harness.js';
import { seededBytes } from './seeded-bytes.js';

const K = 3;
const M = 1;
const PAGE = 4096;
const STRIPE = K * PAGE;
const SIZE = 3 * 1024 * 1024;

interface Io {
  bytesRead: number;
  bytesWritten: number;
}

/**
 * The bytes each shard (data 0..K-1, then parity) should read and write for one write, from
 * the layout alone: page p is column floor(p / K) of data shard p mod K; batches of `batch`
 * stripes from the write's first stripe; in each batch, the first stripe is read when the
 * write starts inside it and the last when the write ends inside it (one stripe read once).
 */
function expectedIo(offset: number, length: number, batch: number): Io[] {
  const io = Array.from({ length: K + M }, () => ({ bytesRead: 0, bytesWritten: 0 }));
  const end = offset + length;
  const firstPage = Math.floor(offset / PAGE);
  const lastPage = Math.floor((end - 1) / PAGE);
  const lastStripe = Math.floor(lastPage / K);
  for (let a = Math.floor(firstPage / K); a <= lastStripe; a += batch) {
    const b = Math.min(lastStripe, a + batch - 1);
    const loaded = new Set<number>();
    if (offset > a * STRIPE) loaded.add(a);
    if (end < (b + 1) * STRIPE) loaded.add(b);
    for (let shard = 0; shard < K; shard++) {
      io[shard]!.bytesRead += loaded.size * PAGE;
      for (let column = a; column <= b; column++) {
        const page = column * K + shard;
        if (page >= firstPage && page <= lastPage) io[shard]!.bytesWritten += PAGE;
      }
    }
    for (let parity = K; parity < K + M; parity++) io[parity]!.bytesWritten += (b - a + 1) * PAGE;
  }
  return io;
}

test('coded 3+1 writes: stripes covered whole are not read, data shards get only the pages written, parity every column', async (t) => {
  const list = await Promise.all(
    Array.from({ length: K + M }, () =>
      Appliance.start({
        memory: '64MiB',
        nbd: { port: 0 },
        http: { port: 0 },
        defaultRegion: false,
        merge: false,
        auth: testAuth,
      }),
    ),
  );
  t.after(() => Promise.all(list.map((appliance) => appliance.stop())));
  const urls = list.map((appliance) => `http://127.0.0.1:${appliance.httpAddress.port}`);
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls, requestTimeoutMs: 5000 });
  t.after(() => fabric.close());
  assert.equal(fabric.pageSize, PAGE);
  // Stripes per batch, as the region sizes them (the coder may hold fewer than BATCH_STRIPES).
  const batch = new StripeBatch(new ReedSolomonCodec(K, M), PAGE, BATCH_STRIPES).capacity;

  /** Each shard's I/O counters, read from the appliance that holds it. */
  const shardIo = (region: ExternalRegion): Io[] =>
    region.health().shards.map((shard) => {
      const appliance = list.find((a) => `http://127.0.0.1:${a.httpAddress.port}` === shard.appliance)!;
      const { bytesRead, bytesWritten } = appliance.registry.require(shard.region).stats();
      return { bytesRead, bytesWritten };
    });

  const write = fc.record({
    offset: fc.integer({ min: 0, max: SIZE - 1 }),
    length: fc.integer({ min: 1, max: (batch + 3) * STRIPE }),
    seed: fc.integer(),
  });
  await fc.assert(
    fc.asyncProperty(fc.array(write, { minLength: 1, maxLength: 4 }), async (writes) => {
      // Each run its own region and model; its bytes come from the generated seeds.
      const region = (await fabric.allocate({
        size: SIZE,
        redundancy: { data: K, parity: M },
      })) as ExternalRegion;
      try {
        const model = Buffer.alloc(SIZE);
        for (const { offset, length: wanted, seed } of writes) {
          const length = Math.min(wanted, SIZE - offset);
          const data = seededBytes(seed, length);
          const before = shardIo(region);
          await region.write(offset, data);
          data.copy(model, offset);
          const after = shardIo(region);
          const expected = expectedIo(offset, length, batch);
          for (let shard = 0; shard < K + M; shard++) {
            const what = `${shard < K ? 'data' : 'parity'} shard ${shard}, write at ${offset}+${length}`;
            assert.equal(
              after[shard]!.bytesRead - before[shard]!.bytesRead,
              expected[shard]!.bytesRead,
              `${what}: bytes read`,
            );
            assert.equal(
              after[shard]!.bytesWritten - before[shard]!.bytesWritten,
              expected[shard]!.bytesWritten,
              `${what}: bytes written`,
            );
          }
        }
        assert.ok((await region.read(0, SIZE)).equals(model), 'the region reads back the model');
      } finally {
        await region.close();
      }
    }),
    {
      numRuns: process.env.MUTATION === '1' ? 4 : 15,
      examples: [
        // Two whole stripes away from offset 0: nothing read, every shard written both columns.
        [[{ offset: STRIPE, length: 2 * STRIPE, seed: 1 }]],
        // Pages 3..7 whole: stripe 2 is read (page 8 is not written); data shard 2 gets column 1 only.
        [[{ offset: 3 * PAGE, length: 5 * PAGE, seed: 2 }]],
        // Inside one page: stripe 1 read once; data shard 0 gets that page, shards 1 and 2 nothing.
        [[{ offset: STRIPE + 100, length: 50, seed: 3 }]],
        // Across a batch boundary, starting and ending inside stripes: only the two end stripes read.
        [[{ offset: 5000, length: (batch + 2) * STRIPE, seed: 4 }]],
      ],
    },
  );
});
