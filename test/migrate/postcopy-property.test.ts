/**
 * The post-copy invariant, over random interleavings of the destination's writes, trims and
 * reads with the source's pushes (released one batch at a time and landed before the next
 * operation, or left in flight while the next operations run): every read sees, and the final space equals, the source at the switchover
 * overlaid with the destination's writes. Pushes racing faults of the same page, pushes of pages
 * the destination overwrote, and evictions (a budget of 8 pages) are all in the mix.
 *
 * POSTCOPY_PROPERTY_RUNS (default 12) sets the number of migrations.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { expectedImage, type SourceShape } from './postcopy-fixture.js';
import { SourceChild, startMigration, until, type ChildMessage } from './postcopy-harness.js';

const PAGE_SIZE = 4096;
const PAGES = 48;
const SIZE = PAGES * PAGE_SIZE;
const RUNS = Number(process.env.POSTCOPY_PROPERTY_RUNS ?? 12);

type Op =
  | { kind: 'write'; at: number; length: number; fill: number }
  | { kind: 'u32'; at: number; value: number }
  | { kind: 'trim'; at: number; length: number; zero: boolean }
  | { kind: 'read'; at: number; length: number }
  | { kind: 'push'; batches: number }
  | { kind: 'pushInFlight'; batches: number };

const at = fc.integer({ min: 0, max: SIZE - 8 });
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('write' as const),
    at,
    length: fc.integer({ min: 1, max: 2 * PAGE_SIZE }),
    fill: fc.integer({ min: 0, max: 255 }),
  }),
  fc.record({ kind: fc.constant('u32' as const), at, value: fc.nat() }),
  fc.record({
    kind: fc.constant('trim' as const),
    at,
    length: fc.integer({ min: 0, max: 2 * PAGE_SIZE }),
    zero: fc.boolean(),
  }),
  fc.record({ kind: fc.constant('read' as const), at, length: fc.integer({ min: 1, max: 2 * PAGE_SIZE }) }),
  fc.record({ kind: fc.constant('push' as const), batches: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ kind: fc.constant('pushInFlight' as const), batches: fc.integer({ min: 1, max: 3 }) }),
);

let child: SourceChild;

before(async () => {
  child = await SourceChild.start();
});

after(async () => {
  await child.kill();
});

test('post-copy: the final space is the source at the switchover overlaid with the destination writes', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 1_000_000 }),
      fc.integer({ min: 1, max: 3 }),
      fc.array(op, { minLength: 5, maxLength: 40 }),
      async (seed, pushBatchPages, ops) => {
        child.clear();
        const shape: SourceShape = { seed, pages: PAGES, pageSize: PAGE_SIZE };
        const model = expectedImage(shape);
        const { destination } = await startMigration(child, shape, {
          budget: 8 * PAGE_SIZE,
          paced: true,
          pushBatchPages,
        });
        const { space, pager } = destination;
        try {
          // The pace call before the first batch.
          await nextPaced(destination.progress);
          for (const o of ops) {
            switch (o.kind) {
              case 'write': {
                const length = Math.min(o.length, SIZE - o.at);
                const bytes = Buffer.alloc(length, o.fill);
                space.write(o.at, bytes);
                bytes.copy(model, o.at);
                break;
              }
              case 'u32':
                space.writeU32(o.at, o.value);
                model.writeUInt32LE(o.value, o.at);
                break;
              case 'trim': {
                const length = Math.min(o.length, SIZE - o.at);
                if (o.zero) space.writeZeroes(o.at, length);
                else space.trim(o.at, length);
                model.fill(0, o.at, o.at + length);
                break;
              }
              case 'read': {
                const length = Math.min(o.length, SIZE - o.at);
                const got = Buffer.alloc(length);
                space.read(o.at, got);
                assert.ok(
                  got.equals(model.subarray(o.at, o.at + length)),
                  `read [${o.at}, +${length}) differs`,
                );
                break;
              }
              case 'push':
                // Each batch goes and lands in the store before the next operation.
                for (let i = 0; i < o.batches; i++) {
                  child.send({ cmd: 'push', batches: 1 });
                  await nextPaced(destination.progress);
                }
                break;
              case 'pushInFlight':
                // Released without waiting: the batches arrive while the operations that follow run.
                child.send({ cmd: 'push', batches: o.batches });
                await new Promise<void>((resolve) => setImmediate(resolve));
                break;
            }
          }
          child.send({ cmd: 'push', batches: 1_000_000 });
          const report = await destination.completed;
          assert.equal(report.remaining, 0);
          assert.equal(report.byFault + report.byPush + report.notNeeded, report.pages);
          await child.next('done');
          const got = Buffer.alloc(SIZE);
          space.read(0, got);
          assert.ok(got.equals(model), 'the final space differs from the model');
          pager.shrink(0);
          space.read(0, got);
          assert.ok(got.equals(model), 'the final space differs from the model once evicted');
        } finally {
          space.destroy();
          await pager.close();
        }
      },
    ),
    { numRuns: RUNS },
  );

  /**
   * Waits until the child's pace is called again (its last batch is on the wire) and that
   * batch is in the store, or until the push has nothing left to send.
   */
  async function nextPaced(
    progress: () => { pushBatches: number; remaining: number; state: string },
  ): Promise<void> {
    let paced: ChildMessage | undefined;
    await until(() => {
      paced ??= child.take('paced');
      return paced !== undefined || progress().state !== 'moving';
    }, 'the next push batch');
    if (paced === undefined) return;
    const sent = paced.pushBatches as number;
    await until(() => progress().pushBatches >= sent, 'the pushed batch is in the store');
  }
});
