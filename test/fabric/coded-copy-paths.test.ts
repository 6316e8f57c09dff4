/**
 * The copy paths of a coded region (external-region.ts): a write sends whole data pages from
 * the caller's buffer, merges the pages at its ends with loaded bytes inside the coding batch,
 * and copies parity out of the batch; a degraded read reads only the pages it needs and rebuilds
 * only the lost ones (by XOR, or by the coder on those columns). Any of these could put a byte
 * in the wrong page, packet row, stripe or shard. fast-check draws unaligned writes and reads —
 * inside a page, across pages, stripes, shards and the 1 MiB coding batch — and any one or two
 * shards to lose; every read must return exactly the bytes of a model, healthy, degraded, and
 * after writes made while degraded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Appliance } from '../../src/index.js';
import { Fabric, type ExternalRegion } from '../../src/fabric/index.js';
import { TEST_TOKEN, testAuth } from '../appliance/harness.js';
import { seededBytes } from './seeded-bytes.js';

const K = 4;
const M = 2;
const PAGE = 4096;
const MiB = 1024 * 1024;
/** More than two coding batches of 64 stripes (1 MiB each), and not a whole stripe. */
const SIZE = 2 * MiB + 3 * PAGE + 123;

interface Range {
  at: number;
  length: number;
  seed: number;
}

const range: fc.Arbitrary<Range> = fc.record({
  at: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
  // Mostly short (inside a page or a stripe), sometimes past a whole batch.
  length: fc.oneof(
    fc.integer({ min: 1, max: 2 * PAGE }),
    fc.integer({ min: 1, max: 3 * K * PAGE }),
    fc.integer({ min: MiB - PAGE, max: MiB + 3 * K * PAGE }),
  ),
  seed: fc.integer(),
});

/** [offset, length] of a drawn range, inside the region. */
function place({ at, length }: { at: number; length: number }): [number, number] {
  const clipped = Math.min(length, SIZE);
  return [Math.floor(at * (SIZE - clipped + 1)), clipped];
}

/**
 * A coded region over in-process appliances of its own (one per shard: losing shards means
 * stopping their appliances); `close` stops them all.
 */
async function codedRegion(): Promise<{
  list: Appliance[];
  region: ExternalRegion;
  close: () => Promise<void>;
}> {
  const list = await Promise.all(
    Array.from({ length: K + M }, () =>
      Appliance.start({
        memory: '16MiB',
        nbd: { port: 0 },
        http: { port: 0 },
        defaultRegion: false,
        merge: false,
        auth: testAuth,
      }),
    ),
  );
  const urls = list.map((a) => `http://127.0.0.1:${a.httpAddress.port}`);
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls, requestTimeoutMs: 5000 });
  const close = async (): Promise<void> => {
    await fabric.close().catch(() => undefined);
    await Promise.all(list.map((a) => a.stop()));
  };
  try {
    const region = (await fabric.allocate({
      size: SIZE,
      redundancy: { data: K, parity: M },
    })) as ExternalRegion;
    return { list, region, close };
  } catch (error) {
    await close();
    throw error;
  }
}

test('coded 4+2: unaligned writes and reads, healthy and with any 1 or 2 shards lost, return exactly the bytes written', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(range, { minLength: 1, maxLength: 5 }),
      fc.uniqueArray(fc.integer({ min: 0, max: K + M - 1 }), { minLength: 1, maxLength: M }),
      fc.array(range, { maxLength: 3 }),
      fc.array(range, { minLength: 1, maxLength: 5 }),
      async (writes, lost, degradedWrites, reads) => {
        const { list, region, close } = await codedRegion();
        try {
          const model = Buffer.alloc(SIZE);
          const write = async (drawn: Range): Promise<void> => {
            const [offset, length] = place(drawn);
            const data = seededBytes(drawn.seed, length);
            await region.write(offset, data);
            data.copy(model, offset);
          };
          const check = async (what: string): Promise<void> => {
            for (const drawn of reads) {
              const [offset, length] = place(drawn);
              // Into a buffer at an odd offset, between guard bytes that must stay as they are.
              const out = Buffer.alloc(length + 10, 0xa5);
              await region.readInto(offset, out.subarray(3, 3 + length));
              assert.ok(
                out.subarray(3, 3 + length).equals(model.subarray(offset, offset + length)),
                `${what}: read at ${offset}+${length}`,
              );
              assert.ok(
                out.subarray(0, 3).every((b) => b === 0xa5) &&
                  out.subarray(3 + length).every((b) => b === 0xa5),
                `${what}: read at ${offset}+${length} wrote outside its buffer`,
              );
            }
          };
          for (const drawn of writes) await write(drawn);
          await check('healthy');
          const shards = region.health().shards;
          for (const index of lost) {
            await list
              .find((a) => `http://127.0.0.1:${a.httpAddress.port}` === shards[index]!.appliance)!
              .stop();
          }
          await check(`shards ${lost.join(', ')} lost`);
          assert.ok((await region.read(0, SIZE)).equals(model), 'a degraded read of everything');
          for (const drawn of degradedWrites) await write(drawn);
          await check(`written with shards ${lost.join(', ')} lost`);
          assert.equal(region.health().lost, lost.length);
        } finally {
          await close();
        }
      },
    ),
    {
      numRuns: process.env.MUTATION === '1' ? 4 : 12,
      examples: [
        // Data shard 0 lost (rebuilt by XOR); a write inside one page, one across the batch.
        [
          [
            { at: 0.5, length: 100, seed: 1 },
            { at: 0.1, length: MiB + 5000, seed: 2 },
          ],
          [0],
          [{ at: 0.3, length: 3 * PAGE + 7, seed: 3 }],
          [
            { at: 0.1, length: MiB + 5000, seed: 0 },
            { at: 0.5, length: 100, seed: 0 },
          ],
        ],
        // Two data shards lost (rebuilt by the coder); reads that start and end inside pages.
        [
          [{ at: 0, length: 2 * MiB, seed: 4 }],
          [1, 2],
          [{ at: 0.7, length: 9000, seed: 5 }],
          [
            { at: 0.2, length: 5 * PAGE + 3, seed: 0 },
            { at: 0.7, length: 9000, seed: 0 },
          ],
        ],
        // Data shards 0 and 1 lost, a read of shard 0's pages only: parity k+1 is among the
        // sources, so no XOR (this once returned wrong bytes).
        [[{ at: 0, length: 1, seed: 7 }], [0, 1], [], [{ at: 0, length: 1, seed: 0 }]],
        // A data shard and parity k lost: no XOR, the coder from parity k+1.
        [[{ at: 0.4, length: 70_000, seed: 6 }], [3, K], [], [{ at: 0.4, length: 70_000, seed: 0 }]],
      ],
    },
  );
});

test('coded 4+2: many writes in flight at once (more than the coding batches), healthy or degraded, each lands whole and nothing else moves', async () => {
  // A write holds a coding batch only while it codes, and its parity runs (a SendRuns) until
  // every shard answered: concurrent writes that share stripes (read-modify-write under the
  // stripe lock) or outnumber both pools must neither mix their parity runs nor their pages.
  // Ranges are disjoint, so the result does not depend on the order the writes run in.
  await fc.assert(
    fc.asyncProperty(
      fc.uniqueArray(fc.integer({ min: 0, max: SIZE }), { minLength: 2, maxLength: 40 }),
      fc.integer(),
      fc.uniqueArray(fc.integer({ min: 0, max: K + M - 1 }), { maxLength: M }),
      async (cuts, seed, lost) => {
        const { list, region, close } = await codedRegion();
        try {
          const model = seededBytes(seed, SIZE);
          await region.write(0, model);
          const shards = region.health().shards;
          for (const index of lost) {
            await list
              .find((a) => `http://127.0.0.1:${a.httpAddress.port}` === shards[index]!.appliance)!
              .stop();
          }
          const sorted = [...cuts].sort((x, y) => x - y);
          const segments: Array<[number, number]> = [];
          for (let i = 0; i + 1 < sorted.length; i += 1)
            segments.push([sorted[i]!, sorted[i + 1]! - sorted[i]!]);
          // Every other segment is written (the rest keep the first write's bytes), all at once.
          const written = segments.filter((_, i) => i % 2 === 0);
          const datas = written.map(([, length], i) => seededBytes(seed + i + 1, length));
          await Promise.all(written.map(([offset], i) => region.write(offset, datas[i]!)));
          written.forEach(([offset], i) => datas[i]!.copy(model, offset));
          const reads = await Promise.all(segments.map(([offset, length]) => region.read(offset, length)));
          segments.forEach(([offset, length], i) =>
            assert.ok(
              reads[i]!.equals(model.subarray(offset, offset + length)),
              `read at ${offset}+${length}`,
            ),
          );
          assert.ok((await region.read(0, SIZE)).equals(model), 'the whole region');
          assert.equal(region.health().lost, lost.length);
        } finally {
          await close();
        }
      },
    ),
    { numRuns: process.env.MUTATION === '1' ? 3 : 8 },
  );
});

test('coded 4+2: writes of whole stripes (coded from the caller buffer, at any byte alignment) agree with the batch path, scrub and degraded reads', async () => {
  // A write whose batch covers whole stripes codes its parity straight from the caller's bytes
  // into the runs it sends (SendRuns.codeWhole) when they are 8-byte aligned, else in a coding
  // batch. Drawn: whole-stripe writes at every alignment of the source buffer, across batch
  // boundaries, mixed with unaligned writes that read-modify-write the same stripes. Scrub then
  // recomputes every stripe's parity from the shards: any parity either path sent wrongly is a
  // mismatch. Losing two shards then reads everything back through parity.
  const STRIPE = K * PAGE;
  const stripes = Math.floor(SIZE / STRIPE);
  const whole = fc.record({
    first: fc.integer({ min: 0, max: stripes - 1 }),
    count: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 60, max: 2 * 64 + 3 })),
    shift: fc.integer({ min: 0, max: 15 }),
    seed: fc.integer(),
  });
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.oneof(whole, range), { minLength: 1, maxLength: 6 }),
      fc.uniqueArray(fc.integer({ min: 0, max: K + M - 1 }), { minLength: M, maxLength: M }),
      async (writes, lost) => {
        const { list, region, close } = await codedRegion();
        try {
          const model = Buffer.alloc(SIZE);
          for (const drawn of writes) {
            if ('first' in drawn) {
              const count = Math.min(drawn.count, stripes - drawn.first);
              const length = count * STRIPE;
              // The bytes at byte `shift` of a larger buffer: aligned to 8 or not.
              const source = seededBytes(drawn.seed, length + 16);
              const data = source.subarray(drawn.shift, drawn.shift + length);
              await region.write(drawn.first * STRIPE, data);
              data.copy(model, drawn.first * STRIPE);
            } else {
              const [offset, length] = place(drawn);
              const data = seededBytes(drawn.seed, length);
              await region.write(offset, data);
              data.copy(model, offset);
            }
          }
          assert.ok((await region.read(0, SIZE)).equals(model), 'healthy');
          const scrubbed = await region.scrub();
          assert.equal(scrubbed.mismatches, 0, 'every stripe parity agrees with its data');
          const shards = region.health().shards;
          for (const index of lost) {
            await list
              .find((a) => `http://127.0.0.1:${a.httpAddress.port}` === shards[index]!.appliance)!
              .stop();
          }
          assert.ok((await region.read(0, SIZE)).equals(model), `shards ${lost.join(', ')} lost`);
        } finally {
          await close();
        }
      },
    ),
    {
      numRuns: process.env.MUTATION === '1' ? 3 : 8,
      examples: [
        // One whole batch from an aligned and from an unaligned buffer, over the same stripes.
        [
          [
            { first: 0, count: 64, shift: 0, seed: 1 },
            { first: 32, count: 64, shift: 3, seed: 2 },
          ],
          [0, 1],
        ],
      ],
    },
  );
});
