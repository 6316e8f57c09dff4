/**
 * Lockstep standby in one process over real loopback TCP, with a proxy between primary and
 * standby to cut the network (standby-proxy.ts): bring-up while the primary writes, durable()
 * as the output gate (property: after durable() the standby equals the primary), a reset and a
 * silent cut failing over, an epoch cut off midway never applied, a heap's collections after
 * failover, a second standby behind an activated one, and the typed errors. Killed primary
 * processes are in standby-failover.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { once } from 'node:events';
import fc from 'fast-check';
import type { MemfabricError } from '../../src/index.js';
import { AddressSpace, FramePool, ErrorCodes } from '../../src/index.js';
import { Heap, HeapHashMap } from '../../src/heap/index.js';
import { replicate, type Replica } from '../../src/migrate/replica.js';
import { StandbyListener, type Standby } from '../../src/migrate/standby.js';
import { StandbyProxy } from './standby-proxy.js';

const PAGE = 4096;

function newSpace(pages: number): AddressSpace {
  return new AddressSpace(new FramePool({ capacity: pages * PAGE, pageSize: PAGE }), { size: pages * PAGE });
}

/** Asserts two spaces hold the same bytes and the same hole/zero/data layout. */
function assertSame(actual: AddressSpace, expected: AddressSpace): void {
  assert.equal(actual.size, expected.size);
  const a = Buffer.alloc(expected.size);
  const b = Buffer.alloc(expected.size);
  actual.read(0, a);
  expected.read(0, b);
  assert.ok(a.equals(b), 'the standby holds other bytes than the primary');
  const layout = (space: AddressSpace): string => {
    const out: string[] = [];
    space.extents(0, space.size, (length, flags) => out.push(`${length}:${flags}`));
    return out.join(',');
  };
  assert.equal(layout(actual), layout(expected));
}

interface Rig {
  listener: StandbyListener;
  proxy: StandbyProxy;
  replica: Replica;
  standby: Standby;
  close(): Promise<void>;
}

async function rig(
  target: AddressSpace | Heap,
  options: { heap?: string; heartbeatTimeoutMs?: number; standbyHeartbeatMs?: number } = {},
): Promise<Rig> {
  const listener = await StandbyListener.listen({
    host: '127.0.0.1',
    port: 0,
    ...(options.heap ? { heap: { path: options.heap, checkpointIntervalMs: 0 } } : {}),
    ...(options.standbyHeartbeatMs ? { heartbeatTimeoutMs: options.standbyHeartbeatMs } : {}),
  });
  const proxy = await StandbyProxy.start(listener.port);
  const accepted = listener.accept();
  const replica = await replicate(target, {
    host: '127.0.0.1',
    port: proxy.port,
    heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 10_000,
  });
  const standby = await accepted;
  return {
    listener,
    proxy,
    replica,
    standby,
    async close() {
      await replica.close();
      await standby.close();
      await proxy.close();
      await listener.close();
    },
  };
}

/** Writes random pages for as long as `running()` says, yielding to the event loop between writes. */
async function writer(space: AddressSpace, seed: number, running: () => boolean): Promise<number> {
  let x = seed >>> 0 || 1;
  let writes = 0;
  const page = Buffer.alloc(PAGE);
  while (running()) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const at = (x % space.pages) * PAGE;
    if (x % 11 === 0) space.trim(at, PAGE);
    else if (x % 7 === 0) space.writeZeroes(at, PAGE);
    else {
      page.fill(x & 0xff);
      page.writeUInt32LE(x, 0);
      space.write(at, page);
    }
    writes++;
    if (writes % 16 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  return writes;
}

test('bring-up while the primary writes; after durable() the standby holds exactly the primary; a reset fails over', async () => {
  const space = newSpace(2048);
  // Data, zero pages and holes before replication starts.
  space.write(0, Buffer.alloc(300 * PAGE, 7));
  space.writeZeroes(400 * PAGE, 50 * PAGE);
  space.trim(10 * PAGE, 5 * PAGE);
  let running = true;
  const writing = writer(space, 12345, () => running);
  const r = await rig(space);
  try {
    assert.ok(r.replica.stats().bringUp.pages >= 345, 'round 0 sent every page that holds something');
    // The writer keeps going through several epochs.
    while (r.replica.stats().epochsAcked < 5) await r.replica.durable();
    running = false;
    const writes = await writing;
    assert.ok(writes > 0);
    await r.replica.durable();
    assertSame(r.standby.space!, space);
    const stats = r.replica.stats();
    assert.ok(stats.epochsAcked >= 5 && stats.epochPages.count === stats.epochsCut);
    assert.ok(stats.durableCalls >= 1 && stats.cutMs.count === stats.epochsCut);
    assert.equal(r.standby.stats().epoch, stats.epochsAcked);

    const activated = r.standby.activated;
    r.proxy.reset();
    const activation = await activated;
    assert.equal(activation.heap, undefined);
    assert.equal(activation.epoch, stats.epochsAcked);
    assertSame(activation.space, space);
    await assert.rejects(
      r.replica.durable(),
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_LOST,
    );
  } finally {
    running = false;
    await writing;
    await r.close();
  }
});

test('property: whatever the writes, once durable() resolves the standby equals the primary', async () => {
  const op = fc.record({
    kind: fc.constantFrom('write', 'zero', 'trim', 'durable'),
    page: fc.nat(63),
    pages: fc.integer({ min: 1, max: 8 }),
    byte: fc.integer({ min: 1, max: 255 }),
  });
  const space = newSpace(64);
  const r = await rig(space);
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 30 }), async (ops) => {
        for (const { kind, page, pages, byte } of ops) {
          const length = Math.min(pages, 64 - page) * PAGE;
          if (kind === 'write') space.write(page * PAGE, Buffer.alloc(length, byte));
          else if (kind === 'zero') space.writeZeroes(page * PAGE, length);
          else if (kind === 'trim') space.trim(page * PAGE, length);
          else await r.replica.durable();
        }
        await r.replica.durable();
        assertSame(r.standby.space!, space);
      }),
      { numRuns: 25 },
    );
  } finally {
    await r.close();
  }
});

test('an epoch cut off in the middle is never applied: the standby takes over at the one before', async () => {
  const space = newSpace(1024);
  const r = await rig(space);
  try {
    space.write(0, Buffer.alloc(1024 * PAGE, 0xa1));
    await r.replica.durable();
    const before = Buffer.alloc(space.size);
    space.read(0, before);
    const epoch = r.standby.epoch;
    // The next epoch holds 4 MiB; the network goes after 1 MiB of it.
    r.proxy.cutAfter(1024 * 1024);
    const activated = r.standby.activated;
    space.write(0, Buffer.alloc(1024 * PAGE, 0xb2));
    const lost = assert.rejects(
      r.replica.durable(),
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_LOST,
    );
    const activation = await activated;
    await lost;
    assert.equal(activation.epoch, epoch);
    const after = Buffer.alloc(space.size);
    activation.space.read(0, after);
    assert.ok(after.equals(before), 'part of the cut-off epoch was applied');
  } finally {
    await r.close();
  }
});

test('a silent network cut fails over after the heartbeat timeout; the primary reports its standby lost', async () => {
  const space = newSpace(64);
  const r = await rig(space, { heartbeatTimeoutMs: 300, standbyHeartbeatMs: 300 });
  try {
    space.write(0, Buffer.alloc(PAGE, 3));
    await r.replica.durable();
    const lost = new Promise<MemfabricError>((resolve) => r.replica.once('lost', resolve));
    r.proxy.silence();
    space.write(PAGE, Buffer.alloc(PAGE, 4));
    const unconfirmed = assert.rejects(
      r.replica.durable(),
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_LOST,
    );
    const activation = await r.standby.activated;
    assert.match(activation.reason, /nothing came from the primary/);
    assert.equal(activation.space.readU8(0), 3);
    assert.equal((await lost).code, ErrorCodes.STANDBY_LOST);
    await unconfirmed;
  } finally {
    await r.close();
  }
});

test('a heap fails over with its collections intact, and a second standby comes up behind the activated one', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-standby-'));
  const heap = await Heap.create({ path: join(dir, 'primary.heap'), size: '64MiB', checkpointIntervalMs: 0 });
  try {
    const map = HeapHashMap.create(heap, { keys: 'string', values: 'number' });
    heap.setRoot('map', map.address);
    const r = await rig(heap, { heap: join(dir, 'standby.heap') });
    for (let i = 0; i < 2000; i++) {
      map.set(`key${i}`, i);
      if (i % 500 === 499) await r.replica.durable();
    }
    r.proxy.reset();
    const activation = await r.standby.activated;
    const second = activation.heap!;
    assert.ok(second, 'a heap replica activates as a heap');
    const copy = HeapHashMap.open<string, number>(second, second.root('map'));
    assert.equal(copy.size, 2000);
    assert.deepEqual(copy.check().problems, []);
    assert.equal(copy.get('key1999'), 1999);
    assert.ok((await second.check()).ok);
    await r.close();

    // The activated heap is the new primary: replicate it again.
    const r2 = await rig(second, { heap: join(dir, 'third.heap') });
    copy.set('after-failover', 1);
    await r2.replica.durable();
    r2.proxy.reset();
    const third = (await r2.standby.activated).heap!;
    const map3 = HeapHashMap.open<string, number>(third, third.root('map'));
    assert.equal(map3.size, 2001);
    assert.equal(map3.get('after-failover'), 1);
    assert.deepEqual(map3.check().problems, []);
    await r2.close();
    await third.close();
    await second.close();
  } finally {
    await heap.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a standby that stops acknowledging is dropped after lagTimeoutMs with MF_STANDBY_BEHIND', async () => {
  const space = newSpace(64);
  const listener = await StandbyListener.listen({ port: 0, heartbeatTimeoutMs: 60_000 });
  const proxy = await StandbyProxy.start(listener.port);
  const accepted = listener.accept();
  const replica = await replicate(space, {
    host: '127.0.0.1',
    port: proxy.port,
    heartbeatTimeoutMs: 60_000,
    lagTimeoutMs: 300,
  });
  const standby = await accepted;
  try {
    proxy.silence();
    space.write(0, Buffer.alloc(PAGE, 1));
    await assert.rejects(
      replica.durable(),
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_BEHIND,
    );
    assert.equal(replica.stats().state, 'lost');
    await assert.rejects(
      replica.durable(),
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_BEHIND,
    );
  } finally {
    await standby.close();
    await proxy.close();
    await listener.close();
  }
});

test('a connection that never says hello is dropped; garbage never makes a standby take over', async () => {
  const listener = await StandbyListener.listen({ port: 0, heartbeatTimeoutMs: 200 });
  try {
    const silent = connect({ host: '127.0.0.1', port: listener.port });
    await once(silent, 'connect');
    silent.resume();
    await once(silent, 'close');
    // A real primary, then garbage on its stream: the standby fails, it does not activate.
    const space = newSpace(16);
    const proxy = await StandbyProxy.start(listener.port);
    const accepted = listener.accept();
    const replica = await replicate(space, { host: '127.0.0.1', port: proxy.port });
    const standby = await accepted;
    const failed = new Promise<MemfabricError>((resolve) => standby.once('failed', resolve));
    proxy.inject(Buffer.from('this is not a frame, not at all'));
    assert.equal((await failed).code, ErrorCodes.MIGRATION_PROTOCOL);
    await assert.rejects(
      standby.activated,
      (error: MemfabricError) => error.code === ErrorCodes.MIGRATION_PROTOCOL,
    );
    await assert.rejects(
      replica.durable(),
      (error: MemfabricError) =>
        error.code === ErrorCodes.MIGRATION_PROTOCOL || error.code === ErrorCodes.STANDBY_LOST,
    );
    await proxy.close();
  } finally {
    await listener.close();
  }
});

test('typed errors: a heap without a place on the standby, and a primary lost during bring-up', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-standby-'));
  const heap = await Heap.create({ path: join(dir, 'h.heap'), size: '16MiB', checkpointIntervalMs: 0 });
  const listener = await StandbyListener.listen({ port: 0 });
  try {
    await assert.rejects(
      replicate(heap, { host: '127.0.0.1', port: listener.port }),
      (error: MemfabricError) =>
        error.code === ErrorCodes.INVALID_ARGUMENT && /heap: \{ path \}/.test(error.message),
    );
    // The network goes halfway through the bring-up copy: the standby has nothing consistent.
    const space = newSpace(1024);
    space.write(0, Buffer.alloc(1024 * PAGE, 9));
    const proxy = await StandbyProxy.start(listener.port);
    proxy.cutAfter(1024 * 1024);
    const accepted = listener.accept();
    await assert.rejects(
      replicate(space, { host: '127.0.0.1', port: proxy.port }),
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_LOST,
    );
    const standby = await accepted;
    await assert.rejects(
      standby.activated,
      (error: MemfabricError) => error.code === ErrorCodes.STANDBY_NOT_SYNCED,
    );
    await proxy.close();
    await assert.rejects(
      replicate(space, { host: '127.0.0.1', port: 1, epochMs: -1 }),
      (error: MemfabricError) => error.code === ErrorCodes.INVALID_ARGUMENT,
    );
  } finally {
    await listener.close();
    await heap.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
