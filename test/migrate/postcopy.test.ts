/**
 * Post-copy over real TCP on 127.0.0.1, with the source in a child process (postcopy-child.ts):
 * every byte is checked after a migration during which the destination wrote, trimmed and read
 * (faulting) while the source pushed; after completion the source is killed and the space must
 * still read whole. The source's gate refuses writes for good after the switchover.
 *
 * POSTCOPY_RUNS (default 5) sets the number of migrations (npm run test:soak uses more).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../src/errors.js';
import { expectedImage, type SourceShape } from './postcopy-fixture.js';
import { SourceChild, startMigration } from './postcopy-harness.js';

const RUNS = Number(process.env.POSTCOPY_RUNS ?? 5);
const PAGE_SIZE = 4096;
const PAGES = 1536;

let child: SourceChild;

before(async () => {
  child = await SourceChild.start();
});

after(async () => {
  await child.kill();
});

/** A small deterministic generator, so a failing run can be replayed from its seed. */
function generator(seed: number): () => number {
  let x = seed * 2654435761 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

for (let run = 0; run < RUNS; run++) {
  test(`post-copy run ${run}: every byte is the source's at the switchover overlaid with the destination's writes`, async () => {
    const seed = 1000 + run;
    const shape: SourceShape = { seed, pages: PAGES, pageSize: PAGE_SIZE };
    const random = generator(seed);
    const model = expectedImage(shape);
    const { destination } = await startMigration(child, shape, {
      // A budget well under the space: the destination evicts (to the store's local part) while pages move.
      budget: 128 * PAGE_SIZE,
      paced: true,
      pushBatchPages: 4,
    });
    const { space, pager } = destination;
    try {
      const gated = await child.next('gated');
      assert.equal(gated.code, ErrorCodes.MIGRATING, String(gated.message));

      // The writer and reader: random writes (scalar, within a page, across pages), trims and
      // zeroings, and reads checked against the model, while the push is released a few
      // batches at a time. Reads and partial writes of pages not here yet fault.
      let complete = false;
      void destination.completed.then(
        () => (complete = true),
        () => (complete = true),
      );
      let operations = 0;
      while (!complete && operations < 20_000) {
        for (let i = 0, n = 1 + Math.floor(random() * 12); i < n; i++, operations++) {
          const choice = random();
          const at = Math.floor(random() * (model.length - 8));
          if (choice < 0.3) {
            const value = Math.floor(random() * 2 ** 32);
            space.writeU32(at, value);
            model.writeUInt32LE(value, at);
          } else if (choice < 0.5) {
            const length = 1 + Math.floor(random() * Math.min(3 * PAGE_SIZE, model.length - at));
            const bytes = Buffer.alloc(length, Math.floor(random() * 256));
            space.write(at, bytes);
            bytes.copy(model, at);
          } else if (choice < 0.55) {
            const length = Math.floor(random() * 2 * PAGE_SIZE);
            const end = Math.min(model.length, at + length);
            if (random() < 0.5) space.trim(at, end - at);
            else space.writeZeroes(at, end - at);
            model.fill(0, at, end);
          } else {
            const length = 1 + Math.floor(random() * 2 * PAGE_SIZE);
            const end = Math.min(model.length, at + length);
            const got = Buffer.alloc(end - at);
            space.read(at, got);
            assert.ok(got.equals(model.subarray(at, end)), `bytes [${at}, ${end}) differ mid-migration`);
          }
        }
        child.send({ cmd: 'push', batches: 1 + Math.floor(random() * 4) });
        // Let the pushed pages and the source's messages in before the next round.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      // Whatever is left goes now.
      child.send({ cmd: 'push', batches: 1_000_000 });
      const report = await destination.completed;
      const done = await child.next('done');
      const sourceReport = done.report as {
        served: number;
        pushed: number;
        notNeeded: number;
        pages: number;
      };

      assert.equal(report.state, 'complete');
      assert.equal(report.remaining, 0);
      assert.equal(report.byFault + report.byPush + report.notNeeded, report.pages);
      assert.ok(report.byFault > 0, 'some pages moved by a fault');
      assert.ok(report.byPush > 0, 'some pages moved by the push');
      assert.equal(sourceReport.pages, report.pages);
      assert.ok(sourceReport.served + sourceReport.pushed + sourceReport.notNeeded >= report.pages);

      // The space no longer needs the source: kill it, evict everything, and read every byte.
      await child.kill();
      pager.shrink(0);
      const got = Buffer.alloc(model.length);
      space.read(0, got);
      for (let page = 0; page < PAGES; page++) {
        const from = page * PAGE_SIZE;
        assert.ok(
          got.subarray(from, from + PAGE_SIZE).equals(model.subarray(from, from + PAGE_SIZE)),
          `page ${page} differs after the migration (seed ${seed})`,
        );
      }
    } finally {
      space.destroy();
      await pager.close();
      if (child.process.exitCode !== null || child.process.signalCode !== null) {
        child = await SourceChild.start();
      }
    }
  });
}

test('the destination continues the source epoch: its writes are dirty since the switchover, moved pages are not', async () => {
  const shape: SourceShape = { seed: 5, pages: 64, pageSize: PAGE_SIZE };
  const { destination, hello } = await startMigration(child, shape, { paced: true });
  const { space, pager } = destination;
  try {
    assert.ok(space.epoch >= hello.epoch);
    const switchEpoch = space.epoch;
    space.writeU32(3 * PAGE_SIZE + 8, 0xdeadbeef);
    assert.deepEqual([...space.dirtyPages(switchEpoch)], [3]);
    child.send({ cmd: 'push', batches: 1_000_000 });
    await destination.completed;
    await child.next('done');
    assert.equal(space.readU32(3 * PAGE_SIZE + 8), 0xdeadbeef);
  } finally {
    space.destroy();
    await pager.close();
  }
});

test('a space whose size is not a whole number of pages moves whole, its partial last page too', async () => {
  // 40 pages, the last one 1000 bytes long; seed 2 makes the last page a data page.
  const shape: SourceShape = { seed: 2, pages: 40, pageSize: PAGE_SIZE, size: 39 * PAGE_SIZE + 1000 };
  const model = expectedImage(shape);
  const { destination } = await startMigration(child, shape, { paced: true });
  const { space, pager } = destination;
  try {
    assert.equal(space.size, shape.size);
    const tail = Buffer.alloc(1000);
    space.read(39 * PAGE_SIZE, tail); // a fault of the partial page
    assert.ok(tail.equals(model.subarray(39 * PAGE_SIZE)));
    child.send({ cmd: 'push', batches: 1_000_000 });
    await destination.completed;
    await child.next('done');
    const got = Buffer.alloc(model.length);
    space.read(0, got);
    assert.ok(got.equals(model));
  } finally {
    space.destroy();
    await pager.close();
  }
});

test('once every page has moved, the untouched ones come into frames in the background: their first read takes no fault', async () => {
  const shape: SourceShape = { seed: 9, pages: 256, pageSize: PAGE_SIZE };
  const model = expectedImage(shape);
  const { destination } = await startMigration(child, shape, { paced: true, budget: 512 * PAGE_SIZE });
  const { space, pager } = destination;
  try {
    child.send({ cmd: 'push', batches: 1_000_000 });
    await destination.completed;
    await child.next('done');
    // Written while the warming runs: the warming must not bring the old bytes back over it.
    space.write(10 * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 0xab));
    model.fill(0xab, 10 * PAGE_SIZE, 11 * PAGE_SIZE);
    await destination.warmed;
    const faults = pager.stats().faults;
    const got = Buffer.alloc(model.length);
    space.read(0, got);
    assert.ok(got.equals(model));
    assert.equal(pager.stats().faults, faults, 'no page faulted after warming');
    assert.ok(pager.stats().asyncLoads > 0);
  } finally {
    space.destroy();
    await pager.close();
  }
});
