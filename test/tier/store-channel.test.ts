/**
 * StoreChannel through its real worker thread: memory, 'test' (slow and failing) and file
 * stores; reads into SharedArrayBuffer segments, read-your-writes, a full queue blocking a
 * write until the store drains, flush, startup errors, a crashing worker, close.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { openPageStore } from '../../src/tier/open-store.js';
import type { StoreSpec } from '../../src/tier/page-store.js';
import { StoreChannel, type StoreChannelOptions } from '../../src/tier/store-channel.js';

const PAGE = 4096;
const FRAMES = 64;
const CAPACITY = 1024;

function page(seed: number): Buffer {
  const out = Buffer.alloc(PAGE);
  for (let i = 0; i < PAGE; i += 4) out.writeUInt32LE((Math.imul(seed + 1, 0x9e3779b1) ^ i) >>> 0, i);
  return out;
}

const ZEROS = Buffer.alloc(PAGE);

interface Rig {
  channel: StoreChannel;
  segment: SharedArrayBuffer;
  /** The bytes of frame f of the segment. */
  frame(f: number): Buffer;
}

async function open(t: TestContext, spec: StoreSpec, extra: Partial<StoreChannelOptions> = {}): Promise<Rig> {
  const segment = new SharedArrayBuffer(PAGE * FRAMES);
  new Uint8Array(segment).fill(0xa5); // garbage, so a read that leaves a frame alone fails
  const channel = await StoreChannel.open({
    spec,
    pageSize: PAGE,
    capacity: CAPACITY,
    segments: [segment],
    ...extra,
  });
  t.after(() => channel.close().catch(() => undefined));
  return { channel, segment, frame: (f) => Buffer.from(segment, f * PAGE, PAGE) };
}

function isCode(code: string): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

test('memory store: readSync, readBatchSync and readAsync land in the shared segment', async (t) => {
  const { channel, frame } = await open(t, { kind: 'memory' });
  for (let s = 0; s < 40; s++) channel.enqueueWrite(s, page(s));
  channel.flushSync();
  assert.equal(channel.stats().writes, 40);

  channel.readSync(7, 0, 3 * PAGE);
  assert.deepEqual(frame(3), page(7));
  channel.readSync(CAPACITY - 1, 0, 4 * PAGE); // never written
  assert.deepEqual(frame(4), ZEROS);

  // 40 pages: more than one round of the 32 blocking-read descriptors.
  const slots = new Int32Array(40);
  const segments = new Int32Array(40);
  const offsets = new Float64Array(40);
  for (let i = 0; i < 40; i++) {
    slots[i] = 39 - i;
    offsets[i] = (10 + i) * PAGE;
  }
  channel.readBatchSync(slots, segments, offsets, 40);
  for (let i = 0; i < 40; i++) assert.deepEqual(frame(10 + i), page(39 - i));

  await channel.readAsync(12, 0, 5 * PAGE);
  assert.deepEqual(frame(5), page(12));
  const stats = channel.stats();
  assert.equal(stats.reads, 43);
  assert.equal(stats.bytesRead, 43 * PAGE);
  assert.equal(stats.bytesWritten, 40 * PAGE);
  assert.equal(stats.queued, 0);

  assert.throws(() => channel.readSync(CAPACITY, 0, 0), isCode(ErrorCodes.OUT_OF_RANGE));
  assert.throws(() => channel.readSync(0, 1, 0), isCode(ErrorCodes.OUT_OF_RANGE));
  assert.throws(() => channel.readSync(0, 0, FRAMES * PAGE - 1), isCode(ErrorCodes.OUT_OF_RANGE));
  await assert.rejects(channel.readAsync(-1, 0, 0), isCode(ErrorCodes.OUT_OF_RANGE));
});

test('read-your-writes while a slow write is still queued', async (t) => {
  const { channel, frame } = await open(t, { kind: 'test', writeDelayMs: 300, discardDelayMs: 100 });
  channel.enqueueWrite(3, page(1));
  channel.readSync(3, 0, 0);
  assert.deepEqual(frame(0), page(1));
  channel.enqueueDiscard(3);
  channel.readSync(3, 0, 0);
  assert.deepEqual(frame(0), ZEROS);
  channel.enqueueWrite(3, page(2));
  await channel.readAsync(3, 0, PAGE);
  assert.deepEqual(frame(1), page(2));
  assert.equal(channel.stats().reads, 0, 'nothing was asked of the store');
  assert.equal(channel.stats().readsFromQueue, 2 + 0 + 1);

  // A batch mixing a staged page and a page the store must read.
  channel.enqueueWrite(4, page(4));
  const slots = Int32Array.of(3, 4, 5);
  channel.readBatchSync(slots, new Int32Array(3), Float64Array.of(2 * PAGE, 3 * PAGE, 4 * PAGE), 3);
  assert.deepEqual(frame(2), page(2));
  assert.deepEqual(frame(3), page(4));
  assert.deepEqual(frame(4), ZEROS);

  await channel.flush();
  assert.equal(channel.stats().queued, 0);
  channel.readSync(3, 0, 5 * PAGE);
  assert.deepEqual(frame(5), page(2), 'write - discard - write ends with the last write');
});

test('enqueueWrite blocks while the queue is full and resumes as the slow store drains', async (t) => {
  const { channel, frame } = await open(
    t,
    { kind: 'test', writeDelayMs: 250 },
    { queueEntries: 8, writeConcurrency: 2 },
  );
  // Counted, not timed: eight writes fit in eight entries without a wait; sixteen against a store
  // that takes 250 ms a write (two at a time) cannot all have found a free entry.
  for (let s = 0; s < 8; s++) channel.enqueueWrite(s, page(s));
  assert.equal(channel.stats().writeWaits, 0, 'eight writes fit in eight entries without waiting');
  for (let s = 8; s < 16; s++) channel.enqueueWrite(s, page(s));
  const stats = channel.stats();
  assert.ok(stats.writeWaits >= 1, 'a write waited for a free entry');
  assert.equal(stats.queueHighWater, 8, 'the queue filled and never held more than its entries');
  channel.flushSync();
  assert.equal(channel.stats().writes, 16);
  for (let s = 0; s < 16; s++) {
    channel.readSync(s, 0, 0);
    assert.deepEqual(frame(0), page(s));
  }
});

test('a failed write: flushSync and flush throw STORE_FAILED, writes are refused, the page stays readable', async (t) => {
  // The delay keeps slot 9's failure from landing before slot 10 is queued.
  const { channel, frame } = await open(t, { kind: 'test', failWriteSlots: [9], writeDelayMs: 100 });
  channel.enqueueWrite(9, page(9));
  channel.enqueueWrite(10, page(10));
  assert.throws(
    () => channel.flushSync(),
    (error: unknown) => isCode(ErrorCodes.STORE_FAILED)(error) && /slot 9/.test((error as Error).message),
  );
  await assert.rejects(channel.flush(), isCode(ErrorCodes.STORE_FAILED));
  assert.throws(() => channel.enqueueWrite(11, page(11)), isCode(ErrorCodes.STORE_FAILED));
  channel.readSync(9, 0, 0);
  assert.deepEqual(frame(0), page(9), 'served from the kept staging copy');
  channel.readSync(10, 0, PAGE);
  assert.deepEqual(frame(1), page(10));
  assert.equal(channel.stats().failedOps, 1);
  await assert.rejects(channel.close(), isCode(ErrorCodes.STORE_FAILED));
});

test("open rejects a bad spec and a corrupt swap file with the store's code and message", async (t) => {
  await assert.rejects(
    StoreChannel.open({
      spec: { kind: 'nope' } as unknown as StoreSpec,
      pageSize: PAGE,
      capacity: CAPACITY,
      segments: [],
    }),
    isCode(ErrorCodes.INVALID_ARGUMENT),
  );
  const dir = mkdtempSync(join(tmpdir(), 'mf-channel-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'not-swap.bin');
  writeFileSync(path, 'precious user data, not a swap file');
  const direct = await openPageStore({ kind: 'file', path }, { pageSize: PAGE, capacity: CAPACITY }).then(
    () => assert.fail('a corrupt file opened'),
    (error: unknown) => error as MemfabricError,
  );
  assert.equal(direct.code, ErrorCodes.CORRUPT_FILE);
  await assert.rejects(
    StoreChannel.open({ spec: { kind: 'file', path }, pageSize: PAGE, capacity: CAPACITY, segments: [] }),
    (error: unknown) => {
      assert.ok(error instanceof MemfabricError);
      assert.equal(error.code, direct.code);
      assert.equal(error.message, direct.message);
      return true;
    },
  );
});

test('file store in a temp dir: write, flush, read back, close', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-channel-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { channel, frame } = await open(t, { kind: 'file', path: join(dir, 'swap') });
  for (let s = 0; s < 20; s++) channel.enqueueWrite(s * 7, page(s));
  channel.enqueueDiscard(7);
  await channel.flush();
  const slots = new Int32Array(20);
  const offsets = new Float64Array(20);
  for (let s = 0; s < 20; s++) {
    slots[s] = s * 7;
    offsets[s] = s * PAGE;
  }
  channel.readBatchSync(slots, new Int32Array(20), offsets, 20);
  for (let s = 0; s < 20; s++) assert.deepEqual(frame(s), s === 1 ? ZEROS : page(s), `slot ${s * 7}`);
  await Promise.all([channel.readAsync(14, 0, 30 * PAGE), channel.readAsync(21, 0, 31 * PAGE)]);
  assert.deepEqual(frame(30), page(2));
  assert.deepEqual(frame(31), page(3));
  await channel.close();
  await channel.close(); // idempotent
  assert.throws(() => channel.readSync(0, 0, 0), isCode(ErrorCodes.STORE_CLOSED));
  assert.throws(() => channel.enqueueWrite(0, page(0)), isCode(ErrorCodes.STORE_CLOSED));
  // Freeing memory never fails for the store's state: a discard after close is dropped.
  const dropped = channel.stats().droppedDiscards;
  channel.enqueueDiscard(0);
  assert.equal(channel.stats().droppedDiscards, dropped + 1);
  assert.throws(() => channel.enqueueDiscard(-1), isCode(ErrorCodes.OUT_OF_RANGE));
  await assert.rejects(channel.flush(), isCode(ErrorCodes.STORE_CLOSED));
  assert.equal(channel.workerRunning, false);
});

test('many async reads at once (more than the async descriptors) and a segment added later', async (t) => {
  const { channel, frame } = await open(t, { kind: 'test', readDelayMs: 5 });
  for (let s = 0; s < 8; s++) channel.enqueueWrite(s, page(s));
  await channel.flush();
  const reads: Promise<void>[] = [];
  for (let i = 0; i < 250; i++) reads.push(channel.readAsync(i % 8, 0, (i % FRAMES) * PAGE));
  await Promise.all(reads);
  // Every read into frame f was of slot f % 8 (8 divides FRAMES).
  for (let f = 0; f < FRAMES; f++) assert.deepEqual(frame(f), page(f % 8));
  const grown = new SharedArrayBuffer(PAGE * 2);
  const index = channel.addSegment(grown);
  assert.equal(index, 1);
  channel.readSync(5, index, PAGE);
  assert.deepEqual(Buffer.from(grown, PAGE, PAGE), page(5));
});

test('a worker crash turns blocked and later calls into STORE_FAILED, not a hang', async (t) => {
  const { channel } = await open(t, { kind: 'test', readDelayMs: 5_000, writeDelayMs: 5_000 });
  channel.enqueueWrite(1, page(1));
  channel.crashWorkerForTest(100);
  const started = performance.now();
  assert.throws(
    () => channel.readSync(2, 0, 0),
    (error: unknown) =>
      isCode(ErrorCodes.STORE_FAILED)(error) && /crashed on purpose/.test((error as Error).message),
  );
  const waited = performance.now() - started;
  assert.ok(waited < 2_000, `the blocked read took ${waited.toFixed(0)} ms to fail`);
  assert.throws(() => channel.enqueueWrite(3, page(3)), isCode(ErrorCodes.STORE_FAILED));
  assert.throws(() => channel.flushSync(), isCode(ErrorCodes.STORE_FAILED));
  await assert.rejects(channel.readAsync(2, 0, 0), isCode(ErrorCodes.STORE_FAILED));
  await assert.rejects(channel.close(), isCode(ErrorCodes.STORE_FAILED));
});

test('a worker crash while a write is blocked and an async read waits', async (t) => {
  const { channel } = await open(
    t,
    { kind: 'test', readDelayMs: 5_000, writeDelayMs: 5_000 },
    { queueEntries: 4, writeConcurrency: 1 },
  );
  const pending = channel.readAsync(9, 0, 0);
  for (let s = 0; s < 4; s++) channel.enqueueWrite(s, page(s));
  channel.crashWorkerForTest(100);
  const started = performance.now();
  assert.throws(() => channel.enqueueWrite(4, page(4)), isCode(ErrorCodes.STORE_FAILED));
  await assert.rejects(pending, isCode(ErrorCodes.STORE_FAILED));
  assert.ok(performance.now() - started < 2_000);
  await assert.rejects(channel.flush(), isCode(ErrorCodes.STORE_FAILED));
});
