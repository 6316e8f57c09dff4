/**
 * Multi-conn against our appliance: a group of 4 connections spreads requests over all of
 * them; writes on one connection are visible to reads on another after the group's flush; a
 * failing member takes the group down; reconnect() reopens every member.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Appliance } from '../../src/appliance/index.js';
import { ErrorCodes } from '../../src/errors.js';
import { NbdConnectionGroup } from '../../src/nbd/index.js';
import { MiB, pipelinedWorkload } from './client-suite.js';

test('a group of 4 connections to the appliance: spread, flush, visibility across connections', async (t) => {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    merge: false,
  });
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'mc', size: 16 * MiB });
  const group = await NbdConnectionGroup.connect({
    port: appliance.nbdAddress.port,
    exportName: 'mc',
    connections: 4,
  });
  t.after(() => group.destroy());
  assert.equal(group.clients.length, 4);
  assert.equal(group.size, 16 * MiB);
  assert.equal(appliance.nbdServer.stats().connectionsOpen, 4);

  // Writes on one connection, flushed through the group, read on every other one.
  const [a, b, c, d] = group.clients;
  await a.write(MiB + 3, Buffer.from('written on connection a'));
  await group.flush();
  for (const other of [b, c, d]) {
    assert.equal((await other.read(MiB + 3, 23)).toString(), 'written on connection a');
  }

  // Calls spread over the members: each one serves some of 400 pipelined writes.
  const before = group.clients.map(() => 0);
  const counting = group.clients.map((client, i) => {
    const write = client.write.bind(client);
    client.write = (...args: Parameters<typeof write>) => {
      before[i]++;
      return write(...args);
    };
    return () => (client.write = write);
  });
  const writes = Array.from({ length: 400 }, (_, i) => group.write(i * 4096, Buffer.alloc(4096, i & 0xff)));
  assert.ok(group.inFlight > 4, 'many requests in flight over the group');
  await Promise.all(writes);
  for (const restore of counting) restore();
  assert.ok(
    before.every((n) => n > 20),
    `every connection took a share: ${before.join(', ')}`,
  );
  await group.flush();
  for (let i = 0; i < 400; i += 37) assert.equal((await d.read(i * 4096, 1))[0], i & 0xff);

  // A model-checked workload on one member (it ends by checking the export against its model);
  // then every other member reads what the appliance holds, and that is not what was there before.
  const untouched = await a.read(0, 4 * MiB);
  await pipelinedWorkload(c, 0xc0ffee, 300, 4 * MiB);
  await group.flush();
  const held = Buffer.alloc(4 * MiB);
  appliance.registry.require('mc').read(0, held);
  assert.ok(!held.equals(untouched), 'the workload changed the export');
  assert.ok(
    (await c.read(0, 4 * MiB)).equals(held),
    'the model-checked member reads what the appliance holds',
  );
  for (const other of [a, b, d])
    assert.ok((await other.read(0, 4 * MiB)).equals(held), 'another member agrees');

  await group.disconnect();
  assert.equal(await group.closed, undefined);
  assert.equal(group.isOpen, false);
});

test('a group lives and dies as one, and reconnect() reopens every member', async (t) => {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    merge: false,
  });
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'mc', size: 4 * MiB });
  const group = await NbdConnectionGroup.connect({ port: appliance.nbdAddress.port, exportName: 'mc' });
  t.after(() => group.destroy());
  assert.equal(group.clients.length, 4, 'four connections by default');
  await group.write(0, Buffer.from('kept'));
  const pending = group.clients.map((client) => client.read(0, 4));
  group.clients[1].destroy(); // one member fails ...
  const reason = await group.closed;
  assert.equal(reason?.code, ErrorCodes.CONNECTION_CLOSED);
  const results = await Promise.allSettled(pending);
  assert.ok(results.some((r) => r.status === 'rejected'));
  for (const client of group.clients) assert.equal(client.isOpen, false, '... and takes the others down');
  await assert.rejects(group.read(0, 4), { code: ErrorCodes.CONNECTION_CLOSED });

  await group.reconnect();
  assert.ok(group.isOpen);
  assert.ok(group.clients.every((client) => client.isOpen));
  assert.equal((await group.read(0, 4)).toString(), 'kept');
  await group.disconnect();
});
