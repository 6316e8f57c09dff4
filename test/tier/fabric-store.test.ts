/**
 * The fabric store beyond the shared contract: where its region lives, that close gives it back,
 * and how fabric failures reach the pager (STORE_FAILED, the fabric's error as cause). In-process
 * appliances keep this quick; the conformance suite runs the store on appliance processes.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Appliance, ErrorCodes, MemfabricError } from '../../src/index.js';
import { FabricPageStore } from '../../src/tier/fabric-store.js';
import { TEST_TOKEN, testAuth } from '../appliance/harness.js';

const PAGE_SIZE = 4096;
const CAPACITY = 64;

async function appliances(t: TestContext, count: number): Promise<{ list: Appliance[]; urls: string[] }> {
  const list = await Promise.all(
    Array.from({ length: count }, () =>
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
  t.after(() => Promise.all(list.map((a) => a.stop())));
  return { list, urls: list.map((a) => `http://127.0.0.1:${a.httpAddress.port}`) };
}

function storeFailed(...fragments: string[]) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, ErrorCodes.STORE_FAILED, error.message);
    assert.ok(error.cause instanceof MemfabricError, 'the fabric error is kept as cause');
    for (const fragment of fragments)
      assert.ok(error.message.includes(fragment), `"${fragment}" in: ${error.message}`);
    return true;
  };
}

test('the store is one region per shard, named from the spec, and close deletes it', async (t) => {
  const { list, urls } = await appliances(t, 2);
  const store = await FabricPageStore.open(
    { kind: 'fabric', appliances: urls, token: TEST_TOKEN, redundancy: { copies: 2 }, name: 'swap-test' },
    { pageSize: PAGE_SIZE, capacity: CAPACITY },
  );
  assert.match(store.name, /^fabric swap-test-[0-9a-f]{8} \(2 copies\)$/);
  assert.equal(store.region.size, CAPACITY * PAGE_SIZE);
  const shards = list.map((appliance) => appliance.registry.all().map((region) => region.name));
  assert.equal(shards.flat().length, 2, 'one copy on each appliance');
  assert.ok(
    shards
      .flat()
      .every((name) => name.startsWith(`${store.region.name}-`) && /^swap-test-[0-9a-f]{8}-[01]$/.test(name)),
    shards.flat().join(', '),
  );
  await store.write(CAPACITY - 1, randomBytes(PAGE_SIZE));
  await store.close();
  for (const appliance of list)
    assert.equal(appliance.registry.size, 0, 'swap is scratch: the region is gone');
});

test('no reachable appliance: open is STORE_FAILED with the placement error as cause', async () => {
  await assert.rejects(
    FabricPageStore.open(
      { kind: 'fabric', appliances: ['http://127.0.0.1:1'], requestTimeoutMs: 2000 },
      { pageSize: PAGE_SIZE, capacity: CAPACITY },
    ),
    (error: unknown) =>
      storeFailed('allocating')(error) &&
      ((error as MemfabricError).cause as MemfabricError).code === ErrorCodes.PLACEMENT_FAILED,
  );
});

test('a mirrored store keeps its pages when an appliance is lost', async (t) => {
  const { list, urls } = await appliances(t, 2);
  const store = await FabricPageStore.open(
    {
      kind: 'fabric',
      appliances: urls,
      token: TEST_TOKEN,
      redundancy: { copies: 2 },
      requestTimeoutMs: 2000,
    },
    { pageSize: PAGE_SIZE, capacity: CAPACITY },
  );
  const data = randomBytes(PAGE_SIZE);
  await store.write(9, data);
  await list[0]!.stop();
  const back = Buffer.alloc(PAGE_SIZE);
  await store.read(9, back);
  assert.ok(back.equals(data));
  const later = randomBytes(PAGE_SIZE);
  await store.write(10, later); // and goes on taking pages
  assert.equal(store.region.health().degraded, true);
  await store.read(10, back);
  assert.ok(back.equals(later), 'a page written after the loss reads back from the live copy');
  await store.read(9, back);
  assert.ok(back.equals(data), 'and the earlier page is unchanged');
  // Closing deletes the live copy and says which shard it could not delete (its appliance is gone).
  await assert.rejects(store.close(), storeFailed('close', urls[0]!, 'memfabric region rm'));
  assert.equal(list[1]!.registry.size, 0);
});

test('losing more than the redundancy covers is STORE_FAILED naming the slot, the fabric error as cause', async (t) => {
  const { list, urls } = await appliances(t, 1);
  const store = await FabricPageStore.open(
    { kind: 'fabric', appliances: urls, token: TEST_TOKEN, requestTimeoutMs: 2000 },
    { pageSize: PAGE_SIZE, capacity: CAPACITY },
  );
  await store.write(3, randomBytes(PAGE_SIZE));
  await list[0]!.stop();
  await assert.rejects(store.read(3, Buffer.alloc(PAGE_SIZE)), storeFailed(store.name, 'read of slot 3'));
  await assert.rejects(store.write(4, randomBytes(PAGE_SIZE)), storeFailed('write of slot 4'));
  await assert.rejects(store.discard(4), storeFailed('discard of slot 4'));
  // Argument errors stay the caller's, even on a broken store.
  await assert.rejects(store.read(CAPACITY, Buffer.alloc(PAGE_SIZE)), { code: ErrorCodes.OUT_OF_RANGE });
  // Closing a store whose appliance is gone names the shard left behind; the store is closed anyway.
  await assert.rejects(store.close(), storeFailed('close', urls[0]!));
  await assert.rejects(store.flush(), { code: ErrorCodes.STORE_CLOSED });
});
