/**
 * The source's side of post-copy against a hand-written destination over real TCP (both in
 * this process: nothing here blocks the event loop): the page server serves only its own
 * migration (a wrong id is refused, a second store too, garbage closes just that connection),
 * the gate stays open until the switchover and closes for good then, the page map names every
 * data, zero and hole page right, faults are answered with the right bytes, and the push comes
 * most recently written first.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { once } from 'node:events';
import { ErrorCodes } from '../../src/errors.js';
import { MessageConnection } from '../../src/migrate/connection.js';
import { runPostCopySource } from '../../src/migrate/postcopy-source.js';
import {
  PAGES_FAULTED,
  PAGES_PREFIX_BYTES,
  PC_COMPLETE,
  PC_OFFER,
  PC_PREPARED,
  PC_PROGRESS,
  PC_RESUMED,
  PC_SWITCHOVER,
  PS_ATTACH,
  PS_ATTACHED,
  PS_FETCH,
  PS_HAVE_ALL,
  PS_PAGES,
  PS_SLOTS,
  decodeSwitchover,
  encodeSlots,
} from '../../src/migrate/postcopy-protocol.js';
import { PAGE_DATA, decodeJson, encodeJsonFrame, readPageBatch } from '../../src/migrate/wire.js';
import { buildSource, pageBytes, pageKind, type SourceShape } from './postcopy-fixture.js';
import { typedError } from '../typed-error.js';

interface Received {
  type: number;
  payload: Buffer;
}

/** A connection whose messages are queued for `next`. */
function inbox(connection: MessageConnection): (type?: number) => Promise<Received> {
  const queue: Received[] = [];
  let wake: (() => void) | undefined;
  connection.onMessage((type, payload) => {
    if (type === PC_PROGRESS) return; // the source's heartbeat
    queue.push({ type, payload: Buffer.from(payload) });
    wake?.();
  });
  void connection.closed.then(() => wake?.());
  return async (type) => {
    for (;;) {
      const message = queue.shift();
      if (message) {
        if (type !== undefined) assert.equal(message.type, type, `expected message ${type}`);
        return message;
      }
      if (!connection.isOpen) throw connection.error!;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
}

test('post-copy source: page server, gate, map, faults and push order', async () => {
  const shape: SourceShape = { seed: 42, pages: 200, pageSize: 4096 };
  const space = buildSource(shape);
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
  const { port } = server.address() as { port: number };
  const sourceSide = await MessageConnection.connect({ host: '127.0.0.1', port });
  const main = new MessageConnection(await accepted);
  server.close();
  const nextMain = inbox(main);
  const running = runPostCopySource(space, sourceSide, { migrationId: 'the-id', pushBatchPages: 8 });
  running.catch(() => undefined);

  const offer = decodeJson<{ port: number; size: number; pageSize: number; migrationId: string }>(
    (await nextMain(PC_OFFER)).payload,
  );
  assert.deepEqual([offer.size, offer.pageSize, offer.migrationId], [space.size, 4096, 'the-id']);

  // Garbage on the page server closes that connection only.
  const garbage = connect({ host: '127.0.0.1', port: offer.port });
  garbage.on('error', () => undefined);
  garbage.resume();
  garbage.write(Buffer.alloc(64, 0xee));
  await once(garbage, 'close');

  // A wrong id is refused.
  const stranger = await MessageConnection.connect({ host: '127.0.0.1', port: offer.port });
  const nextStranger = inbox(stranger);
  stranger.post(encodeJsonFrame(PS_ATTACH, { migrationId: 'not-the-id' }));
  await assert.rejects(nextStranger(), typedError(ErrorCodes.FORBIDDEN, 'the id presented is not its id'));

  // The right id attaches; a second store with it is refused.
  const store = await MessageConnection.connect({ host: '127.0.0.1', port: offer.port });
  const nextStore = inbox(store);
  store.post(encodeJsonFrame(PS_ATTACH, { migrationId: 'the-id' }));
  await nextStore(PS_ATTACHED);
  const second = await MessageConnection.connect({ host: '127.0.0.1', port: offer.port });
  const nextSecond = inbox(second);
  second.post(encodeJsonFrame(PS_ATTACH, { migrationId: 'the-id' }));
  await assert.rejects(nextSecond(), typedError(ErrorCodes.CONFLICT, 'attached'));

  // Until the switchover the source runs: it writes a page (which the map must then carry).
  const written = shape.pages - 1;
  space.advanceEpoch();
  space.write(written * 4096, pageBytes(shape, 9999));
  const epochs = Array.from({ length: shape.pages }, (_, page) => space.pageEpoch(page));
  main.post(encodeJsonFrame(PC_PREPARED, {}));
  const { header, runs } = decodeSwitchover((await nextMain(PC_SWITCHOVER)).payload, shape.pages);
  main.post(encodeJsonFrame(PC_RESUMED, {}));
  assert.throws(() => space.writeU8(0, 1), typedError(ErrorCodes.MIGRATING, 'has moved'));
  assert.throws(() => space.trim(0, 4096), typedError(ErrorCodes.MIGRATING));
  assert.equal(header.epoch, space.epoch);

  // The map: every page's kind, and the data pages' order, which numbers the slots.
  const kinds = new Array<string>(shape.pages).fill('hole');
  const slotPage: number[] = [];
  for (const run of runs) {
    for (let page = run.first; page < run.first + run.count; page++) {
      kinds[page] = run.kind === PAGE_DATA ? 'data' : 'zero';
      if (run.kind === PAGE_DATA) slotPage.push(page);
    }
  }
  for (let page = 0; page < shape.pages; page++) {
    assert.equal(kinds[page], page === written ? 'data' : pageKind(shape, page), `page ${page}'s kind`);
  }
  assert.equal(header.slots, slotPage.length);
  assert.equal(decodeJson<{ slots: number }>((await nextStore(PS_SLOTS)).payload).slots, header.slots);

  const expected = (slot: number): Buffer => {
    const page = slotPage[slot]!;
    return page === written ? pageBytes(shape, 9999) : pageBytes(shape, page);
  };
  // A fault of the last slot is answered with its bytes.
  const faultedSlot = header.slots - 1;
  store.post(encodeSlots(PS_FETCH, [faultedSlot]));
  const received = new Map<number, Buffer>();
  const pushOrder: number[] = [];
  let faultAnswered = false;
  while (received.size < header.slots || !faultAnswered) {
    const { payload } = await nextStore(PS_PAGES);
    const reason = payload.readUInt32LE(0);
    readPageBatch(payload.subarray(PAGES_PREFIX_BYTES), 4096, header.slots, (first, count, kind, data) => {
      assert.equal(kind, PAGE_DATA);
      for (let i = 0; i < count; i++) {
        const slot = first + i;
        const bytes = Buffer.from(data.subarray(i * 4096, (i + 1) * 4096));
        assert.ok(bytes.equals(expected(slot)), `slot ${slot}'s bytes`);
        if (reason === PAGES_FAULTED) {
          assert.equal(slot, faultedSlot);
          faultAnswered = true;
        } else pushOrder.push(slot);
        received.set(slot, bytes);
      }
    });
  }
  // Most recently written first: the pushed pages' epochs never rise.
  for (let i = 1; i < pushOrder.length; i++) {
    const [a, b] = [slotPage[pushOrder[i - 1]!]!, slotPage[pushOrder[i]!]!];
    assert.ok(epochs[a]! > epochs[b]! || (epochs[a] === epochs[b] && a < b), `push order at ${i}`);
  }
  assert.equal(slotPage[pushOrder[0]!], written, 'the page written last goes first');

  store.post(encodeJsonFrame(PS_HAVE_ALL, {}));
  await nextMain(PC_COMPLETE);
  await main.close();
  const report = await running;
  assert.equal(report.pages, header.slots);
  assert.equal(report.served + report.pushed, header.slots);
  assert.equal(report.served <= 1, true);
  assert.equal(report.remaining, 0);
  await store.close();
  // Reads still see the state at the switchover.
  assert.equal(space.readU32(written * 4096), pageBytes(shape, 9999).readUInt32LE(0));
  space.destroy();
});

test('post-copy source: a destination that never prepares leaves the source running', async () => {
  const shape: SourceShape = { seed: 43, pages: 16, pageSize: 4096 };
  const space = buildSource(shape);
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
  const { port } = server.address() as { port: number };
  const sourceSide = await MessageConnection.connect({ host: '127.0.0.1', port });
  const main = new MessageConnection(await accepted);
  server.close();
  const nextMain = inbox(main);
  const running = runPostCopySource(space, sourceSide, { migrationId: 'x' });
  await nextMain(PC_OFFER);
  main.destroy();
  await assert.rejects(running, (error: unknown) => (error as { code?: string }).code !== undefined);
  space.writeU8(0, 1);
  assert.equal(space.readU8(0), 1);
  space.destroy();
});

test('post-copy source: the destination lost after the switchover fails the migration; the space stays moved, readable as of the switchover', async () => {
  const shape: SourceShape = { seed: 44, pages: 32, pageSize: 4096 };
  const space = buildSource(shape);
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
  const { port } = server.address() as { port: number };
  const sourceSide = await MessageConnection.connect({ host: '127.0.0.1', port });
  const main = new MessageConnection(await accepted);
  server.close();
  const nextMain = inbox(main);
  const running = runPostCopySource(space, sourceSide, {
    migrationId: 'y',
    pace: () => new Promise(() => undefined),
  });
  running.catch(() => undefined);
  const offer = decodeJson<{ port: number }>((await nextMain(PC_OFFER)).payload);
  const store = await MessageConnection.connect({ host: '127.0.0.1', port: offer.port });
  const nextStore = inbox(store);
  store.post(encodeJsonFrame(PS_ATTACH, { migrationId: 'y' }));
  await nextStore(PS_ATTACHED);
  main.post(encodeJsonFrame(PC_PREPARED, {}));
  await nextMain(PC_SWITCHOVER);
  main.post(encodeJsonFrame(PC_RESUMED, {}));
  // The destination dies: both its connections go at once.
  store.destroy();
  main.destroy();
  await assert.rejects(
    running,
    typedError(ErrorCodes.CONNECTION_CLOSED, 'the space now lives at the destination'),
  );
  assert.throws(() => space.writeU8(0, 1), typedError(ErrorCodes.MIGRATING));
  const first = [...Array(shape.pages).keys()].find((p) => pageKind(shape, p) === 'data')!;
  assert.equal(space.readU32(first * 4096), pageBytes(shape, first).readUInt32LE(0));
  space.destroy();
});
