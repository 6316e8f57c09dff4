/**
 * The destage queue and the destager in one thread: the producer side (DestageQueue) and the
 * consumer (Destager) share the queue's SharedArrayBuffer exactly as they do across the store
 * worker, over an in-test PageStore double whose operations take chosen numbers of event-loop
 * turns. Writes use enqueueWriteAsync here (a blocking write would block the destager too).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { DestageQueue, DestageQueueConsumer } from '../../src/tier/destage-queue.js';
import { Destager } from '../../src/tier/destager.js';
import type { PageStore } from '../../src/tier/page-store.js';
import { SlotMap, MISSING } from '../../src/tier/slot-map.js';

const PAGE = 64;
const SLOTS = 4096;

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * A memory store whose writes and discards take `delay(kind, slot)` event-loop turns (and can
 * wait on a gate), that fails writes to chosen slots, logs completions, and counts any two
 * operations on one slot at once (the destager must never do that).
 */
class DoubleStore implements PageStore {
  readonly name = 'double';
  readonly pageSize = PAGE;
  readonly capacity = SLOTS;
  readonly data = new Map<number, Buffer>();
  readonly completions: ('w' | 'd')[] = [];
  readonly busy = new Set<number>();
  overlaps = 0;
  flushes = 0;
  gate: Promise<void> | undefined;
  failSlots = new Set<number>();
  delay: (kind: 'w' | 'd', slot: number) => number = () => 0;
  onComplete: ((kind: 'w' | 'd') => void) | undefined;

  private async hold(kind: 'w' | 'd', slot: number): Promise<void> {
    if (this.busy.has(slot)) this.overlaps++;
    this.busy.add(slot);
    if (this.gate) await this.gate;
    for (let i = this.delay(kind, slot); i > 0; i--) await turn();
  }

  async read(slot: number, dst: Uint8Array): Promise<void> {
    const bytes = this.data.get(slot);
    if (bytes) dst.set(bytes);
    else dst.fill(0);
  }

  async write(slot: number, src: Uint8Array): Promise<void> {
    await this.hold('w', slot);
    this.busy.delete(slot);
    this.completions.push('w');
    this.onComplete?.('w');
    if (this.failSlots.has(slot)) {
      throw new MemfabricError(ErrorCodes.STORE_FAILED, `double: write of slot ${slot} failed on purpose`);
    }
    // Copied at the end: staging must not change while the write is in flight.
    this.data.set(slot, Buffer.from(src));
  }

  async discard(slot: number): Promise<void> {
    await this.hold('d', slot);
    this.busy.delete(slot);
    this.completions.push('d');
    this.onComplete?.('d');
    this.data.delete(slot);
  }

  async flush(): Promise<void> {
    this.flushes++;
  }

  async close(): Promise<void> {}
}

interface Rig {
  queue: DestageQueue;
  store: DoubleStore;
  destager: Destager;
  stop(): void;
}

function rig(entries: number, options: { writeConcurrency?: number; deleteConcurrency?: number } = {}): Rig {
  const store = new DoubleStore();
  const queue = DestageQueue.create({
    pageSize: PAGE,
    slots: SLOTS,
    entries,
    waitSliceMs: 5,
    // Called only after `destager` below is initialised.
    failureDetail: () => (destager.firstError as Error | undefined)?.message,
  });
  const destager = new Destager(new DestageQueueConsumer(queue.sab), store, options);
  void destager.run();
  return {
    queue,
    store,
    destager,
    stop: () => {
      queue.close();
      destager.stop();
    },
  };
}

function page(seed: number): Buffer {
  const out = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += 4) out.writeUInt32LE((Math.imul(seed + 1, 0x9e3779b1) + i) >>> 0, i);
  return out;
}

const ZEROS = Buffer.alloc(PAGE);

/** What the program should read for `slot`: the queue's answer or else the store's. */
async function readBack(r: Rig, slot: number): Promise<Buffer> {
  const dst = Buffer.alloc(PAGE, 0xa5);
  if (!r.queue.lookup(slot, dst, 0)) await r.store.read(slot, dst);
  return dst;
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => error instanceof MemfabricError && error.code === code);
}

test('SlotMap agrees with a Map under random sets and deletes', () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 300 }), fc.integer()), { maxLength: 400 }),
      (ops) => {
        const map = new SlotMap(4);
        const model = new Map<number, number>();
        for (const [set, key, value] of ops) {
          if (set) {
            map.set(key, value | 0);
            model.set(key, value | 0);
          } else {
            assert.equal(map.delete(key), model.delete(key));
          }
          assert.equal(map.size, model.size);
        }
        for (let key = 0; key <= 300; key++) assert.equal(map.get(key), model.get(key) ?? MISSING);
      },
    ),
    { numRuns: 200 },
  );
});

/**
 * Runs `count` operations, a share `writeShare` of them writes, and measures starvation: the
 * most completions of one kind in a row while the other kind had operations waiting.
 */
async function skewedRun(
  writeShare: number,
  slow: 'w' | 'd',
): Promise<{ maxRun: { w: number; d: number }; r: Rig }> {
  const q = 32;
  const r = rig(q, { writeConcurrency: 4, deleteConcurrency: 4 });
  r.store.delay = (kind) => (kind === slow ? 3 : 1);
  let writesAsked = 0;
  let discardsAsked = 0;
  const maxRun = { w: 0, d: 0 };
  const done = { w: 0, d: 0 };
  let run = 0;
  let last: 'w' | 'd' | undefined;
  r.store.onComplete = (kind) => {
    done[kind]++;
    const otherWaiting = kind === 'w' ? discardsAsked - done.d : writesAsked - done.w;
    // Count only completions made while the other kind was waiting.
    run = otherWaiting === 0 ? 0 : kind === last ? run + 1 : 1;
    last = kind;
    maxRun[kind] = Math.max(maxRun[kind], run);
  };
  let nextWriteSlot = 0;
  let nextDiscardSlot = SLOTS / 2;
  for (let i = 0; i < 1500; i++) {
    const isWrite = (Math.imul(i + 1, 0x9e3779b1) >>> 0) / 2 ** 32 < writeShare;
    if (isWrite) {
      writesAsked++;
      await r.queue.enqueueWriteAsync(nextWriteSlot, page(i));
      nextWriteSlot = (nextWriteSlot + 1) % (SLOTS / 2);
    } else {
      discardsAsked++;
      r.queue.enqueueDiscard(nextDiscardSlot++);
    }
    if (i % 50 === 0) await turn();
  }
  await r.queue.flush();
  assert.equal(r.store.completions.length, writesAsked + discardsAsked);
  assert.ok(r.queue.stats().queueHighWater <= q);
  assert.equal(r.store.overlaps, 0);
  r.stop();
  return { maxRun, r };
}

test('95% writes / 5% deletes: deletes are not starved, the queue stays bounded', async () => {
  for (const slow of ['w', 'd'] as const) {
    const { maxRun } = await skewedRun(0.95, slow);
    // While a discard waits, at most about a queue's worth of writes complete before it.
    assert.ok(maxRun.w <= 32, `writes ran ${maxRun.w} in a row past waiting deletes (slow ${slow})`);
  }
});

test('5% writes / 95% deletes: writes are not starved', async () => {
  for (const slow of ['w', 'd'] as const) {
    const { maxRun } = await skewedRun(0.05, slow);
    assert.ok(maxRun.d <= 32, `deletes ran ${maxRun.d} in a row past a waiting write (slow ${slow})`);
  }
});

test('a discard queued after a slower write to the same slot does not let the old bytes resurrect', async () => {
  const r = rig(8);
  r.store.delay = (kind) => (kind === 'w' ? 20 : 0);
  await r.queue.enqueueWriteAsync(5, page(1));
  r.queue.enqueueDiscard(5);
  assert.deepEqual(await readBack(r, 5), ZEROS);
  await r.queue.flush();
  assert.equal(r.store.data.has(5), false);
  assert.deepEqual(await readBack(r, 5), ZEROS);

  // write - discard - write ends with the last write.
  await r.queue.enqueueWriteAsync(6, page(2));
  r.queue.enqueueDiscard(6);
  await r.queue.enqueueWriteAsync(6, page(3));
  assert.deepEqual(await readBack(r, 6), page(3));
  await r.queue.flush();
  assert.deepEqual(r.store.data.get(6), page(3));
  assert.equal(r.store.overlaps, 0);
  r.stop();
});

type Op =
  { kind: 'w'; slot: number; seed: number } | { kind: 'd'; slot: number } | { kind: 'r'; slot: number };

const opArb = (slots: number): fc.Arbitrary<Op> =>
  fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({ kind: fc.constant('w' as const), slot: fc.nat(slots - 1), seed: fc.nat(1e6) }),
    },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('d' as const), slot: fc.nat(slots - 1) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('r' as const), slot: fc.nat(slots - 1) }) },
  );

test('random op mixes and delays: reads see the last operation, the store ends equal to the model, high-water <= Q', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(4, 8, 16),
      fc.array(opArb(6), { minLength: 1, maxLength: 120 }),
      fc.array(fc.nat(4), { minLength: 6, maxLength: 6 }),
      fc.array(fc.nat(4), { minLength: 6, maxLength: 6 }),
      fc.boolean(),
      async (q, ops, writeDelays, discardDelays, waitSometimes) => {
        const r = rig(q, { writeConcurrency: 3, deleteConcurrency: 2 });
        // Per-slot delays: a write may be slower than the discard that follows it, or faster.
        r.store.delay = (kind, slot) => (kind === 'w' ? writeDelays[slot] : discardDelays[slot]);
        const model = new Map<number, Buffer>();
        try {
          for (let i = 0; i < ops.length; i++) {
            const op = ops[i];
            if (op.kind === 'w') {
              await r.queue.enqueueWriteAsync(op.slot, page(op.seed));
              model.set(op.slot, page(op.seed));
            } else if (op.kind === 'd') {
              r.queue.enqueueDiscard(op.slot);
              model.delete(op.slot);
            } else {
              assert.deepEqual(await readBack(r, op.slot), model.get(op.slot) ?? ZEROS);
            }
            if (waitSometimes && i % 7 === 0) await turn();
            assert.ok(r.queue.stats().queueHighWater <= q);
          }
          await r.queue.flush();
          for (let slot = 0; slot < 6; slot++) {
            assert.deepEqual(r.store.data.get(slot) ?? ZEROS, model.get(slot) ?? ZEROS, `slot ${slot}`);
            assert.deepEqual(await readBack(r, slot), model.get(slot) ?? ZEROS);
          }
          const stats = r.queue.stats();
          assert.ok(stats.queueHighWater <= q, `high-water ${stats.queueHighWater} > ${q}`);
          assert.equal(stats.queued, 0);
          assert.equal(stats.backlog, 0);
          assert.equal(r.store.overlaps, 0, 'two operations on one slot at once');
        } finally {
          r.stop();
        }
      },
    ),
    { numRuns: 150 },
  );
});

test('the delete allowance moves toward deletes when they pile up and back when writes do', async () => {
  const q = 64;
  const r = rig(q);
  let open!: () => void;
  r.store.gate = new Promise((resolve) => (open = resolve));
  const initial = r.queue.stats().deleteSlots;
  for (let slot = 0; slot < 1000; slot++) r.queue.enqueueDiscard(slot);
  const piled = r.queue.stats();
  assert.ok(piled.backlog > 0);
  assert.ok(piled.deleteSlots > initial, `deleteSlots ${piled.deleteSlots} after 1000 discards`);
  assert.equal(piled.deleteSlots, q - r.queue.writeFloor, 'deletes may take all but the writes floor');
  // The writes floor is still free: a write gets in at once although 900+ discards wait.
  await r.queue.enqueueWriteAsync(2000, page(1));

  const writes: Promise<void>[] = [];
  for (let i = 0; i < 5000; i++) writes.push(r.queue.enqueueWriteAsync(2001 + (i % 2000), page(i)));
  r.queue.pump();
  r.queue.writeAdmissible();
  const pressed = r.queue.stats();
  assert.ok(pressed.blockedWrites > 0);
  assert.ok(
    pressed.deleteSlots < piled.deleteSlots,
    `deleteSlots ${pressed.deleteSlots} with 5000 writes waiting`,
  );
  assert.ok(pressed.deleteSlots >= r.queue.deleteFloor);

  open();
  r.store.gate = undefined;
  await Promise.all(writes);
  await r.queue.flush();
  const after = r.queue.stats();
  assert.equal(after.backlog, 0);
  assert.ok(after.queueHighWater <= q);
  assert.equal(after.discardsDone, 1000);
  r.stop();
});

test('a failing write: FAILED, bytes still readable from staging, flush rejects with STORE_FAILED', async () => {
  const r = rig(8);
  r.store.failSlots.add(3);
  await r.queue.enqueueWriteAsync(3, page(7));
  await r.queue.enqueueWriteAsync(4, page(8));
  await rejectsWith(r.queue.flush(), ErrorCodes.STORE_FAILED);
  const failure = r.queue.failure();
  assert.ok(failure);
  assert.match(failure.message, /slot 3/);
  assert.match(failure.message, /failed on purpose/);
  assert.equal(r.queue.stats().failed, 1);
  // The program still reads what it wrote, from the kept staging buffer.
  assert.deepEqual(await readBack(r, 3), page(7));
  assert.deepEqual(await readBack(r, 4), page(8));
  // No more writes, and nothing changes.
  const before = r.queue.stats();
  await rejectsWith(r.queue.enqueueWriteAsync(9, page(9)), ErrorCodes.STORE_FAILED);
  assert.throws(
    () => r.queue.enqueueWrite(9, page(9)),
    (error: unknown) => error instanceof MemfabricError && error.code === ErrorCodes.STORE_FAILED,
  );
  assert.deepEqual(r.queue.stats(), before);
  // Flush keeps reporting the failure; a discard of the failed slot is not sent to the failed
  // store but lets go of the kept entry, and the slot reads as zeros again.
  const dropped = r.queue.stats().dropped;
  r.queue.enqueueDiscard(3);
  assert.equal(r.queue.stats().dropped, dropped + 1);
  assert.equal(r.queue.stats().queued, 0, 'the kept failed write is freed');
  await rejectsWith(r.queue.flush(), ErrorCodes.STORE_FAILED);
  assert.deepEqual(await readBack(r, 3), ZEROS);
  r.stop();
  assert.throws(
    () => r.queue.enqueueDiscard(1),
    (error: unknown) => error instanceof MemfabricError && error.code === ErrorCodes.STORE_CLOSED,
  );
});

test('arguments: slot range and page length', () => {
  const r = rig(4);
  assert.throws(() => r.queue.enqueueWrite(SLOTS, page(1)), { code: ErrorCodes.OUT_OF_RANGE });
  assert.throws(() => r.queue.enqueueWrite(-1, page(1)), { code: ErrorCodes.OUT_OF_RANGE });
  assert.throws(() => r.queue.enqueueWrite(0, Buffer.alloc(PAGE - 1)), { code: ErrorCodes.INVALID_ARGUMENT });
  assert.throws(() => r.queue.enqueueDiscard(1.5), { code: ErrorCodes.OUT_OF_RANGE });
  assert.throws(() => DestageQueue.create({ pageSize: PAGE, slots: 1, entries: 6 }), {
    code: ErrorCodes.INVALID_ARGUMENT,
  });
  r.stop();
});

test('stopping hands back every entry not started, including those chained behind one in flight', async () => {
  const r = rig(16, { writeConcurrency: 1 });
  let open!: () => void;
  r.store.gate = new Promise<void>((resolve) => (open = resolve));
  for (let slot = 0; slot < 6; slot++) await r.queue.enqueueWriteAsync(slot, page(slot));
  await r.queue.enqueueWriteAsync(0, page(100)); // chained behind slot 0's write
  r.queue.enqueueDiscard(1); // chained behind slot 1's write
  // Wait until slot 0's write is in flight (held by the gate), then stop.
  while (r.destager.inFlight === 0) await turn();
  r.stop();
  open();
  // The one in flight finishes; everything else comes back without reaching the store.
  while (r.destager.inFlight > 0) await turn();
  r.queue.retire();
  const stats = r.queue.stats();
  assert.equal(stats.queued, 0, 'every entry is back with the producer');
  assert.equal(stats.writesDone, 1);
  assert.equal(stats.failed, 0, 'abandoned entries are not store failures');
  assert.equal(r.queue.failure(), undefined);
  assert.deepEqual(r.store.completions, ['w']);
});

test('after a failure the discard backlog is dropped and flush answers at once', async () => {
  const r = rig(16, { deleteConcurrency: 1 });
  r.store.failSlots.add(0);
  let open!: () => void;
  r.store.gate = new Promise<void>((resolve) => (open = resolve));
  await r.queue.enqueueWriteAsync(0, page(0));
  for (let slot = 100; slot < 400; slot++) r.queue.enqueueDiscard(slot); // most wait in the backlog
  assert.ok(r.queue.stats().backlog > 0);
  open();
  await rejectsWith(r.queue.flush(), ErrorCodes.STORE_FAILED);
  const stats = r.queue.stats();
  assert.equal(stats.backlog, 0, 'nothing waits for a failed store');
  assert.ok(stats.dropped > 0);
  assert.ok(stats.discardsDone + stats.dropped + stats.failed >= 300 - stats.queued);
  await rejectsWith(r.queue.flush(), ErrorCodes.STORE_FAILED);
  r.stop();
});
