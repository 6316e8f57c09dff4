/**
 * The pager after its store fails, with failures injected in-process (the test store breaks
 * for good after a random number of operations, as a disk or an appliance dies): over random
 * sequences of writes, reads, evictions, forks, trims, flushes and destroys, every call
 * settles — returns, or throws/rejects MF_STORE_FAILED with the injected EIO as cause — and
 * nothing hangs; a read that succeeds returns what the program last wrote; destroying spaces
 * always works; close settles, ends the I/O worker, leaves the destage queue empty, and every
 * frame is back in the pool. The same with real appliances killed with SIGKILL is in
 * pager-appliance-failure.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { Pager } from '../../src/tier/pager.js';
import type { AddressSpace } from '../../src/memory/address-space.js';

const PAGE = 4096;
const PAGES = 96; // per space: more than the budget (32 pages), so pages move out and back
/** A generous bound for one call to settle: a hang fails the run, a slow machine does not. */
const SETTLE_MS = 30_000;

/** Resolves with the promise's outcome, or with 'hung' if it has not settled within SETTLE_MS. */
async function settle(promise: Promise<unknown>): Promise<{ error?: unknown; hung?: true }> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<{ hung: true }>((resolve) => {
    timer = setTimeout(() => resolve({ hung: true }), SETTLE_MS);
  });
  try {
    return await Promise.race([
      promise.then(
        () => ({}),
        (error: unknown) => ({ error }),
      ),
      hung,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A failure must be STORE_FAILED with a cause (the injected EIO underneath). */
function assertStoreFailed(error: unknown, what: string): void {
  assert.ok(error instanceof MemfabricError, `${what}: expected a MemfabricError, got ${String(error)}`);
  assert.equal(error.code, ErrorCodes.STORE_FAILED, `${what}: ${error.message}`);
  const cause = error.cause as { code?: string } | undefined;
  assert.ok(cause !== undefined, `${what}: STORE_FAILED without a cause: ${error.message}`);
  assert.equal(cause.code, 'EIO', `${what}: cause ${String(cause)}`);
}

function pageBytes(value: number): Buffer {
  const bytes = Buffer.alloc(PAGE, value & 0xff);
  bytes.writeUInt32LE(value, 0);
  return bytes;
}

type Op =
  | { kind: 'write'; space: number; page: number; value: number }
  | { kind: 'read'; space: number; page: number }
  | { kind: 'readAsync'; space: number; page: number }
  | { kind: 'trim'; space: number; page: number }
  | { kind: 'fork'; space: number }
  | { kind: 'destroy'; space: number }
  | { kind: 'shrink' }
  | { kind: 'flush' };

const spaceIndex = fc.nat(3);
const page = fc.nat(PAGES - 1);
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      space: spaceIndex,
      page,
      value: fc.nat(1_000_000),
    }),
  },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('read' as const), space: spaceIndex, page }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('readAsync' as const), space: spaceIndex, page }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('trim' as const), space: spaceIndex, page }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('fork' as const), space: spaceIndex }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('destroy' as const), space: spaceIndex }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'shrink' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
);

test('after an injected store failure every call settles, reads stay right, close releases everything (property)', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.nat(400),
      fc.array(op, { minLength: 20, maxLength: 160 }),
      async (failAfterOps, ops) => {
        const pager = await Pager.open({
          budget: 32 * PAGE,
          prefetch: 2,
          evictBatch: 4,
          queueEntries: 16,
          store: { kind: 'test', failAfterOps },
        });
        const base = pager.pool.used;
        const spaces: Array<{ space: AddressSpace; model: Map<number, number> } | undefined> = [
          { space: pager.createSpace({ size: PAGES * PAGE }), model: new Map() },
        ];
        const scratch = Buffer.alloc(PAGE);
        const expectRead = (at: { model: Map<number, number> }, p: number, what: string): void => {
          const value = at.model.get(p);
          assert.ok(
            scratch.equals(value === undefined ? Buffer.alloc(PAGE) : pageBytes(value)),
            `${what}: page ${p} reads ${scratch.readUInt32LE(0)}, expected ${value ?? 0}`,
          );
        };
        try {
          for (const [i, o] of ops.entries()) {
            const what = `op ${i} ${JSON.stringify(o)} (failAfterOps ${failAfterOps})`;
            if (o.kind === 'shrink') {
              try {
                pager.shrink(0);
              } catch (error) {
                assertStoreFailed(error, what);
              }
              continue;
            }
            if (o.kind === 'flush') {
              const outcome = await settle(pager.flush());
              assert.ok(!outcome.hung, `${what}: flush did not settle`);
              if ('error' in outcome) assertStoreFailed(outcome.error, what);
              continue;
            }
            const at = spaces[o.space % spaces.length];
            if (at === undefined) continue;
            const { space, model } = at;
            switch (o.kind) {
              case 'write':
                try {
                  space.write(o.page * PAGE, pageBytes(o.value));
                  model.set(o.page, o.value);
                } catch (error) {
                  assertStoreFailed(error, what); // and the write changed nothing
                }
                break;
              case 'read':
                try {
                  space.read(o.page * PAGE, scratch);
                  expectRead(at, o.page, what);
                } catch (error) {
                  if (error instanceof assert.AssertionError) throw error;
                  assertStoreFailed(error, what);
                }
                break;
              case 'readAsync': {
                const outcome = await settle(space.readAsync(o.page * PAGE, scratch));
                assert.ok(!outcome.hung, `${what}: readAsync did not settle`);
                if ('error' in outcome) assertStoreFailed(outcome.error, what);
                else expectRead(at, o.page, what);
                break;
              }
              case 'trim':
                try {
                  space.trim(o.page * PAGE, PAGE);
                  model.delete(o.page);
                } catch (error) {
                  assertStoreFailed(error, what);
                }
                break;
              case 'fork':
                if (spaces.length < 4) spaces.push({ space: space.fork(), model: new Map(model) });
                break;
              case 'destroy':
                space.destroy(); // freeing memory never fails, whatever the store's state
                spaces[o.space % spaces.length] = undefined;
                break;
            }
          }
        } finally {
          for (const at of spaces) at?.space.destroy();
          const closed = await settle(pager.close());
          assert.ok(!closed.hung, 'close did not settle');
          if ('error' in closed) assertStoreFailed(closed.error, 'close');
        }
        assert.equal(pager.storeWorkerRunning, false, 'close ends the I/O worker');
        assert.equal(pager.pool.used, base, 'every frame is back in the pool');
        const store = pager.stats().store;
        assert.equal(store.queued, 0, 'the destage queue is empty');
        assert.equal(store.backlog, 0, 'no discard waits');
        assert.equal(pager.stats().slotsInUse, 0);
      },
    ),
    { numRuns: 25 },
  );
});
