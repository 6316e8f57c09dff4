/**
 * The 'migration-source' page store against a scripted page server over real TCP, in this
 * process (the store is async here: nothing blocks), so each race is played in a chosen order:
 * a push beating a fault's answer, a late push of a slot the pager had freed and reused, the
 * pager discarding a slot still on the source, the source lost with a fault in flight. The
 * scripted server sends distinct bytes for each copy of a slot (a real source sends the same
 * bytes twice), so the test can tell which copy won.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { MessageConnection } from '../../src/migrate/connection.js';
import {
  PAGES_FAULTED,
  PAGES_PREFIX_BYTES,
  PAGES_PUSHED,
  PS_ATTACH,
  PS_ATTACHED,
  PS_FETCH,
  PS_HAVE_ALL,
  PS_NOT_NEEDED,
  PS_PAGES,
  PS_SLOTS,
  ProgressCells,
  P_BY_FAULT,
  P_BY_PUSH,
  P_DUPLICATES,
  P_FAULTS,
  P_NOT_NEEDED,
  P_REMAINING,
  STATE_COMPLETE,
  STATE_LOST,
  createProgressBuffer,
  decodeSlots,
} from '../../src/migrate/postcopy-protocol.js';
import { PAGE_DATA, PageBatchWriter, decodeJson, encodeJsonFrame } from '../../src/migrate/wire.js';
import { MigrationSourceStore } from '../../src/tier/migration-source-store.js';
import { typedError } from '../typed-error.js';

const PAGE = 4096;
const SLOTS = 8;

interface Scripted {
  store: MigrationSourceStore;
  cells: ProgressCells;
  /** The next message the store sent, of `type`. */
  next(type: number): Promise<Buffer>;
  sendPages(reason: number, slot: number, fill: number): Promise<void>;
  peer: MessageConnection;
}

async function scripted(faultTimeoutMs = 60_000, readAhead = 0): Promise<Scripted> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection').then(([socket]) => new MessageConnection(socket as Socket));
  const progress = createProgressBuffer();
  const queue: { type: number; payload: Buffer }[] = [];
  let wake: (() => void) | undefined;
  const attached = accepted.then((peer) => {
    peer.onMessage((type, payload) => {
      if (type === PS_ATTACH) {
        assert.equal(decodeJson<{ migrationId: string }>(payload).migrationId, 'mid');
        peer.post(encodeJsonFrame(PS_ATTACHED, {}));
        return;
      }
      queue.push({ type, payload: Buffer.from(payload) });
      wake?.();
    });
    return peer;
  });
  const store = await MigrationSourceStore.open(
    {
      kind: 'migration-source',
      host: '127.0.0.1',
      port,
      migrationId: 'mid',
      local: { kind: 'memory' },
      progress,
      faultTimeoutMs,
      readAhead,
    },
    { pageSize: PAGE, capacity: 64 },
  );
  const peer = await attached;
  server.close();
  peer.post(encodeJsonFrame(PS_SLOTS, { slots: SLOTS }));
  return {
    store,
    cells: new ProgressCells(progress),
    peer,
    async next(type) {
      for (;;) {
        const at = queue.findIndex((message) => message.type === type);
        if (at >= 0) return queue.splice(at, 1)[0]!.payload;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
    async sendPages(reason, slot, fill) {
      const writer = new PageBatchWriter({
        pageSize: PAGE,
        maxDataPages: 1,
        prefixBytes: PAGES_PREFIX_BYTES,
      });
      writer.prefix.writeUInt32LE(reason, 0);
      writer.prefix.writeUInt32LE(0, 4);
      writer.add(slot, PAGE_DATA)!.fill(fill);
      await peer.send(writer.seal(PS_PAGES));
    },
  };
}

async function read(store: MigrationSourceStore, slot: number): Promise<number> {
  const page = Buffer.alloc(PAGE, 0xff);
  await store.read(slot, page);
  assert.ok(
    page.every((byte) => byte === page[0]),
    `slot ${slot} holds one copy whole`,
  );
  return page[0]!;
}

test('a push that beats a fault answers it; the fault answer that follows is dropped', async () => {
  const s = await scripted();
  const reading = read(s.store, 3);
  assert.deepEqual([...decodeSlots(await s.next(PS_FETCH), SLOTS)], [3]);
  await s.sendPages(PAGES_PUSHED, 3, 0x11);
  assert.equal(await reading, 0x11);
  await s.sendPages(PAGES_FAULTED, 3, 0x22);
  // The late copy is counted once it is in; the slot keeps the first.
  const again = read(s.store, 4);
  await s.next(PS_FETCH);
  await s.sendPages(PAGES_FAULTED, 4, 0x44);
  assert.equal(await again, 0x44);
  assert.equal(await read(s.store, 3), 0x11);
  assert.equal(s.cells.f64[P_BY_PUSH], 1);
  assert.equal(s.cells.f64[P_BY_FAULT], 1);
  assert.equal(s.cells.f64[P_DUPLICATES], 1);
  await s.store.close();
});

test('two reads of one slot on the source send one fault and see the same copy', async () => {
  const s = await scripted();
  const a = read(s.store, 6);
  const b = read(s.store, 6);
  assert.deepEqual([...decodeSlots(await s.next(PS_FETCH), SLOTS)], [6]);
  await s.sendPages(PAGES_FAULTED, 6, 0x66);
  assert.deepEqual(await Promise.all([a, b]), [0x66, 0x66]);
  assert.equal(s.cells.f64[P_BY_FAULT], 1);
  await s.store.close();
});

test('a slot the pager freed and reused is never overwritten by a late push; the source hears it is not needed', async () => {
  const s = await scripted();
  await s.store.discard(5);
  await s.store.write(5, Buffer.alloc(PAGE, 0x55));
  assert.deepEqual([...decodeSlots(await s.next(PS_NOT_NEEDED), SLOTS)], [5]);
  await s.sendPages(PAGES_PUSHED, 5, 0x99);
  // A later message lands after the late push was handled: then slot 5 is checked.
  const other = read(s.store, 2);
  await s.next(PS_FETCH);
  await s.sendPages(PAGES_FAULTED, 2, 0x22);
  await other;
  assert.equal(await read(s.store, 5), 0x55);
  assert.equal(s.cells.f64[P_NOT_NEEDED], 1);
  assert.equal(s.cells.f64[P_DUPLICATES], 1);
  await s.store.close();
});

test('when every slot has moved the store says so, closes the connection and serves on alone', async () => {
  const s = await scripted();
  for (let slot = 0; slot < SLOTS - 1; slot++) await s.sendPages(PAGES_PUSHED, slot, slot + 1);
  await s.store.discard(SLOTS - 1);
  await s.next(PS_HAVE_ALL);
  await s.peer.closed;
  assert.equal(s.cells.state, STATE_COMPLETE);
  assert.equal(s.cells.f64[P_REMAINING], 0);
  for (let slot = 0; slot < SLOTS - 1; slot++) assert.equal(await read(s.store, slot), slot + 1);
  assert.equal(await read(s.store, SLOTS - 1), 0);
  // Its own slots (beyond the source's) work as any store's.
  await s.store.write(40, Buffer.alloc(PAGE, 0x40));
  assert.equal(await read(s.store, 40), 0x40);
  await s.store.close();
});

test('the source lost with a fault in flight: the fault, and every later one, fail typed; moved slots stay', async () => {
  const s = await scripted();
  await s.sendPages(PAGES_PUSHED, 1, 0x01);
  const moved = read(s.store, 1);
  assert.equal(await moved, 0x01);
  const pending = read(s.store, 2);
  await s.next(PS_FETCH);
  s.peer.destroy();
  await assert.rejects(
    pending,
    typedError(ErrorCodes.POSTCOPY_SOURCE_LOST, 'pages still on the source are gone'),
  );
  await assert.rejects(read(s.store, 3), typedError(ErrorCodes.POSTCOPY_SOURCE_LOST));
  assert.equal(s.cells.state, STATE_LOST);
  assert.equal(await read(s.store, 1), 0x01);
  await s.store.close();
});

test('a fault the source leaves unanswered fails after faultTimeoutMs', async () => {
  const s = await scripted(200);
  const pending = read(s.store, 0);
  await s.next(PS_FETCH);
  await assert.rejects(pending, typedError(ErrorCodes.POSTCOPY_SOURCE_LOST, 'went unanswered for 200 ms'));
  await s.store.close();
});

test('a page server that refuses the id fails the open with its error', async () => {
  const server = createServer((socket) => {
    const peer = new MessageConnection(socket);
    peer.onMessage(() => peer.abort(new MemfabricError(ErrorCodes.FORBIDDEN, 'not this migration')));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  await assert.rejects(
    MigrationSourceStore.open(
      { kind: 'migration-source', host: '127.0.0.1', port, migrationId: 'x', local: { kind: 'memory' } },
      { pageSize: PAGE, capacity: 16 },
    ),
    typedError(ErrorCodes.FORBIDDEN, 'not this migration'),
  );
  server.close();
});

test('closing the store with a fault waiting ends the fault at once (STORE_CLOSED), not at its timeout', async () => {
  const s = await scripted(600_000);
  const pending = read(s.store, 4);
  await s.next(PS_FETCH);
  await s.store.close();
  await assert.rejects(pending, typedError(ErrorCodes.STORE_CLOSED));
  await s.peer.closed;
});

test('a fault reads ahead the slots after it still on the source; a later read of one takes no fault', async () => {
  const s = await scripted(60_000, 3);
  await s.sendPages(PAGES_PUSHED, 2, 0x02);
  await s.sendPages(PAGES_PUSHED, 6, 0x06);
  // Slot 2 is here: a fault of slot 0 asks for 0 and 1 only (read-ahead stops at a moved slot).
  const first = read(s.store, 0);
  assert.deepEqual([...decodeSlots(await s.next(PS_FETCH), SLOTS)], [0, 1]);
  await s.sendPages(PAGES_FAULTED, 0, 0x10);
  await s.sendPages(PAGES_FAULTED, 1, 0x11);
  assert.equal(await first, 0x10);
  // Slot 3: asks for 3, 4, 5 (three ahead would be 6, which is here).
  const second = read(s.store, 3);
  assert.deepEqual([...decodeSlots(await s.next(PS_FETCH), SLOTS)], [3, 4, 5]);
  for (const slot of [3, 4, 5]) await s.sendPages(PAGES_FAULTED, slot, 0x20 + slot);
  assert.equal(await second, 0x23);
  assert.equal(await read(s.store, 1), 0x11);
  assert.equal(await read(s.store, 5), 0x25);
  assert.equal(s.cells.f64[P_FAULTS], 2, 'two faults were asked for; the read-ahead slots are not faults');
  assert.equal(s.cells.f64[P_BY_FAULT], 5);
  await s.store.close();
});
