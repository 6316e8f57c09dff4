/**
 * The source's death during post-copy is reported as what it is. With the push held back so
 * some pages are still on the source, the source child is SIGKILLed (or stopped, so it neither
 * answers nor closes): the next fault of a page that had not moved fails with
 * MF_POSTCOPY_SOURCE_LOST, and so does the completion; every page that had moved (by the push,
 * by a fault, or because the destination overwrote it) still reads right, from memory and from
 * the store's local part; nothing hangs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../src/errors.js';
import { expectedImage, pageKind, type SourceShape } from './postcopy-fixture.js';
import { SourceChild, startMigration, until } from './postcopy-harness.js';
import { typedError } from '../typed-error.js';

const PAGE_SIZE = 4096;
const RUNS = Number(process.env.POSTCOPY_RUNS ?? 5);

for (let run = 0; run < RUNS; run++) {
  test(`SIGKILL of the source mid-post-copy (run ${run}): unmoved pages fail typed, moved pages stay`, async () => {
    const shape: SourceShape = { seed: 300 + run, pages: 256, pageSize: PAGE_SIZE };
    const image = expectedImage(shape);
    const child = await SourceChild.start();
    const { destination } = await startMigration(child, shape, {
      budget: 32 * PAGE_SIZE,
      paced: true,
      pushBatchPages: 4,
    });
    const { space, pager } = destination;
    try {
      // Some pages move by push (a few batches, all in the store before going on) ...
      const batches = 2 + run;
      child.send({ cmd: 'push', batches });
      // The child reports each pace call: one before the first batch, then one after each.
      for (let i = 0; i <= batches; i++) await child.next('paced');
      await until(
        () => destination.progress().pushBatches >= batches,
        'the released batches are in the store',
      );
      // ... some by a fault (every 16th page read), and one is overwritten here.
      const faulted: number[] = [];
      for (let page = run; page < shape.pages; page += 16) {
        const got = Buffer.alloc(PAGE_SIZE);
        space.read(page * PAGE_SIZE, got);
        assert.ok(got.equals(image.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)));
        faulted.push(page);
      }
      const overwritten = 5;
      space.write(overwritten * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 0x5a));
      image.fill(0x5a, overwritten * PAGE_SIZE, (overwritten + 1) * PAGE_SIZE);
      // The overwritten page's source slot is discarded through the store: let that land first,
      // and the pages read ahead of the faults.
      await pager.flush();
      await until(() => destination.progress().inFlight === 0, 'the read-ahead is in');
      const before = destination.progress();
      assert.ok(before.remaining > 0, 'pages are still on the source');
      assert.ok(before.byPush > 0 && before.byFault > 0);

      await child.kill('SIGKILL');
      await assert.rejects(
        destination.completed,
        typedError(ErrorCodes.POSTCOPY_SOURCE_LOST, 'lost its source'),
      );

      // Half the moved pages stay in frames, the others go out to the store's local part.
      pager.shrink(16 * PAGE_SIZE);
      let readable = 0;
      let lost = 0;
      for (let page = 0; page < shape.pages; page++) {
        const got = Buffer.alloc(PAGE_SIZE);
        try {
          space.read(page * PAGE_SIZE, got);
        } catch (error) {
          typedError(ErrorCodes.POSTCOPY_SOURCE_LOST, 'pages still on the source are gone')(error);
          assert.equal(pageKind(shape, page), 'data', `page ${page} is no data page, yet failed`);
          assert.ok(!faulted.includes(page) && page !== overwritten, `page ${page} had moved`);
          lost++;
          continue;
        }
        assert.ok(
          got.equals(image.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)),
          `page ${page} differs`,
        );
        readable++;
      }
      const after = destination.progress();
      assert.equal(after.state, 'lost');
      assert.equal(lost, before.remaining, 'exactly the pages that had not moved are lost');
      assert.equal(readable, shape.pages - before.remaining);
      // A whole-page write needs none of the lost bytes: it still works, and reads back.
      const page = [...Array(shape.pages).keys()].find((p) => {
        try {
          space.readU8(p * PAGE_SIZE);
          return false;
        } catch {
          return true;
        }
      })!;
      space.write(page * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 7));
      assert.equal(space.readU8(page * PAGE_SIZE + 100), 7);
    } finally {
      space.destroy();
      await pager.close();
      await child.kill();
    }
  });
}

test('a source that stops answering: the fault times out with MF_POSTCOPY_SOURCE_LOST, and so does the completion', async () => {
  const shape: SourceShape = { seed: 77, pages: 64, pageSize: PAGE_SIZE };
  const image = expectedImage(shape);
  const child = await SourceChild.start();
  const { destination } = await startMigration(child, shape, { paced: true, faultTimeoutMs: 300 });
  const { space, pager } = destination;
  try {
    const first = [...Array(shape.pages).keys()].find((p) => pageKind(shape, p) === 'data')!;
    assert.equal(space.readU32(first * PAGE_SIZE), image.readUInt32LE(first * PAGE_SIZE));
    // Stopped, the source's sockets stay open: only the fault's timeout can tell.
    await child.kill('SIGSTOP');
    // The last data page: far beyond the first fault's read-ahead.
    const second = [...Array(shape.pages).keys()].reverse().find((p) => pageKind(shape, p) === 'data')!;
    assert.throws(
      () => space.readU32(second * PAGE_SIZE),
      typedError(ErrorCodes.POSTCOPY_SOURCE_LOST, 'went unanswered for 300 ms'),
    );
    await assert.rejects(destination.completed, typedError(ErrorCodes.POSTCOPY_SOURCE_LOST));
    // Lost for good: the next fault fails at once, the page that moved still reads.
    assert.throws(() => space.readU32(second * PAGE_SIZE), typedError(ErrorCodes.POSTCOPY_SOURCE_LOST));
    assert.equal(space.readU32(first * PAGE_SIZE), image.readUInt32LE(first * PAGE_SIZE));
  } finally {
    space.destroy();
    await pager.close();
    await child.kill('SIGKILL');
  }
});
