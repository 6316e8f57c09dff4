/**
 * Deleting shards: ApplianceDirectory.deleteRegion retries MF_BUSY (a connection still counted)
 * for a bounded time, and ExternalRegion.close() deletes every shard and says which it could
 * not delete instead of swallowing the failure. Real appliances in-process, real NBD clients,
 * an admin proxy to observe the 409s.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Appliance } from '../../src/appliance/index.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { ApplianceDirectory, DELETE_BUSY_RETRY_MS } from '../../src/fabric/directory.js';
import { Fabric, type ExternalRegion } from '../../src/fabric/index.js';
import { NbdClient } from '../../src/nbd/index.js';
import { adminProxy } from './admin-proxy.js';
import { TEST_TOKEN, testAuth } from './harness.js';

const MiB = 1024 * 1024;

async function start(): Promise<{ appliance: Appliance; url: string }> {
  const appliance = await Appliance.start({
    memory: '32MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: false,
    auth: testAuth,
  });
  return { appliance, url: `http://127.0.0.1:${appliance.httpAddress.port}` };
}

test('deleteRegion retries MF_BUSY until the connection is gone, then deletes', async (t) => {
  const { appliance, url } = await start();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'r', size: MiB });
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'r' });
  t.after(() => client.destroy());
  const proxy = await adminProxy(url);
  t.after(() => proxy.close());
  const directory = new ApplianceDirectory([proxy.url], 5000, { token: TEST_TOKEN });

  const refused = proxy.answered((a) => a.method === 'DELETE' && a.status === 409);
  const deleting = directory.deleteRegion(proxy.url, 'r');
  await refused;
  assert.ok(appliance.registry.find('r'), 'still there while the connection is counted');
  client.destroy(); // abrupt: no NBD_CMD_DISC, released when the appliance sees the socket close
  await deleting;
  assert.equal(appliance.registry.find('r'), undefined);
  const deletes = proxy.answers.filter((a) => a.method === 'DELETE').map((a) => a.status);
  assert.ok(deletes.length >= 2, JSON.stringify(deletes));
  assert.deepEqual(deletes, [...Array<number>(deletes.length - 1).fill(409), 204]);
  // Anything but MF_BUSY is thrown at once.
  await assert.rejects(directory.deleteRegion(proxy.url, 'r'), { code: ErrorCodes.NOT_FOUND });
  assert.equal(proxy.answers.filter((a) => a.method === 'DELETE').length, deletes.length + 1);
});

test(`deleteRegion gives up after ${DELETE_BUSY_RETRY_MS} ms of MF_BUSY and says so`, async (t) => {
  const { appliance, url } = await start();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'held', size: MiB });
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'held' });
  t.after(() => client.destroy());
  const directory = new ApplianceDirectory([url], 5000, { token: TEST_TOKEN });
  await assert.rejects(directory.deleteRegion(url, 'held'), (error: unknown) => {
    assert.ok(error instanceof MemfabricError);
    assert.equal(error.code, ErrorCodes.BUSY);
    assert.match(error.message, /1 NBD connection/);
    assert.match(error.message, new RegExp(`after retrying for ${DELETE_BUSY_RETRY_MS} ms`));
    return true;
  });
  assert.ok(appliance.registry.find('held'), 'nothing was deleted');
});

test('close() deletes every shard it can and names each one left behind, with the first failure’s code', async (t) => {
  const started = await Promise.all([start(), start(), start()]);
  t.after(() => Promise.all(started.map(({ appliance }) => appliance.stop())));
  const fabric = new Fabric({
    token: TEST_TOKEN,
    appliances: started.map((s) => s.url),
    requestTimeoutMs: 5000,
  });
  t.after(() => fabric.close());

  // A clean close leaves nothing anywhere.
  const clean = (await fabric.allocate({
    size: 2 * MiB,
    redundancy: { data: 2, parity: 1 },
  })) as ExternalRegion;
  await clean.write(0, Buffer.alloc(MiB, 1));
  await clean.close();
  assert.deepEqual(
    started.map(({ appliance }) => appliance.registry.size),
    [0, 0, 0],
  );

  const region = (await fabric.allocate({
    size: 2 * MiB,
    redundancy: { data: 2, parity: 1 },
  })) as ExternalRegion;
  await region.write(0, Buffer.alloc(MiB, 2));
  const shards = region.health().shards;
  const byUrl = (u: string) => started.find((s) => s.url === u)!;
  // Shard 0's region is held by another client (MF_BUSY after retries); shard 1's appliance is
  // gone (MF_CONNECTION_CLOSED); shard 2 is deleted.
  const busy = byUrl(shards[0]!.appliance);
  const holder = await NbdClient.connect({
    port: busy.appliance.nbdAddress.port,
    exportName: shards[0]!.region,
  });
  t.after(() => holder.destroy());
  const gone = byUrl(shards[1]!.appliance);
  await gone.appliance.stop();
  const fine = byUrl(shards[2]!.appliance);

  await assert.rejects(region.close(), (error: unknown) => {
    assert.ok(error instanceof MemfabricError);
    assert.equal(error.code, ErrorCodes.BUSY, 'the first failure’s code (shard 0)');
    for (const shard of shards.slice(0, 2)) {
      assert.ok(error.message.includes(shard.region), `names ${shard.region}: ${error.message}`);
      assert.ok(error.message.includes(shard.appliance), `names ${shard.appliance}`);
    }
    assert.ok(!error.message.includes(shards[2]!.region), 'not the shard that was deleted');
    assert.match(error.message, /2 of its 3 shards/);
    assert.match(error.message, /memfabric region rm/);
    assert.ok(error.cause instanceof MemfabricError);
    return true;
  });
  assert.equal(fine.appliance.registry.find(shards[2]!.region), undefined);
  assert.ok(busy.appliance.registry.find(shards[0]!.region), 'the held shard is still there, as reported');
  await region.close(); // closed already: nothing more happens
  await holder.disconnect();
  await new ApplianceDirectory([busy.url], 5000, { token: TEST_TOKEN }).deleteRegion(
    busy.url,
    shards[0]!.region,
  );
  assert.equal(busy.appliance.registry.size, 0);
});

test('close() deletes a shard that migrated where it went, and its forwarding record, even before the region followed it', async (t) => {
  const a = await start();
  const b = await start();
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  // The fabric knows A through a proxy, so the test can hold the region's own lookup of where
  // its shard went (it would otherwise follow the shard to B by itself).
  const proxy = await adminProxy(a.url);
  t.after(() => proxy.close());
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: [proxy.url], requestTimeoutMs: 5000 });
  t.after(() => fabric.close());
  const region = (await fabric.allocate({ size: MiB, redundancy: 'none' })) as ExternalRegion;
  await region.write(0, Buffer.alloc(4096, 7));
  const shard = region.health().shards[0]!;
  const lookup = proxy.hold('GET', `/v1/regions/${shard.region}`);

  const migrate = await fetch(`${a.url}/v1/regions/${shard.region}/migrate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TEST_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: b.url, targetToken: TEST_TOKEN }),
  });
  assert.equal(migrate.status, 202);
  await lookup.held; // the region saw its connection end and asked where the shard went
  assert.ok(b.appliance.registry.find(shard.region), 'the shard is on B now');
  assert.equal(region.health().shards[0]!.appliance, proxy.url, 'the region has not followed yet');

  await region.close();
  lookup.release();
  assert.equal(b.appliance.registry.size, 0, 'deleted where it went');
  assert.equal(a.appliance.registry.movedRecord(shard.region), undefined, 'and the forwarding record');
  assert.equal(a.appliance.registry.size, 0);
});
