/**
 * The test cluster itself (test/support/etcd-cluster.ts): three real members on free loopback
 * ports elect a leader; killing the leader by PID elects another that still serves what was
 * written; the killed member rejoins on restart and catches up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Etcd3 } from 'etcd3';
import { EtcdCluster, until } from '../support/etcd-cluster.js';

test('a 3-member cluster fails over when its leader is killed, and the member rejoins', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 3 });
  if (!cluster) return;
  assert.equal(cluster.endpoints.length, 3);
  for (const url of cluster.endpoints) assert.doesNotMatch(url, /:(2379|2380)$/);
  const client = cluster.client();
  t.after(() => client.close());
  await client.put('/memfabric-test/a').value('1');

  const first = await cluster.leader();
  const pid = cluster.pid(first)!;
  await cluster.kill(first);
  assert.throws(() => process.kill(pid, 0), /ESRCH/, 'the leader process is gone');
  const second = await cluster.leader();
  assert.notEqual(second, first, 'another member leads');
  // The survivors still hold the write and take new ones (the client skips the dead member).
  await until(
    'a write through the survivors',
    async () => {
      await client
        .put('/memfabric-test/b')
        .value('2')
        .options({ deadline: Date.now() + 2000 });
      return true;
    },
    20_000,
  );
  assert.equal(await client.get('/memfabric-test/a').string(), '1');

  await cluster.restart(first);
  const own = new Etcd3({ hosts: cluster.endpoint(first) });
  t.after(() => own.close());
  await until(
    'the restarted member to catch up',
    async () =>
      (await own
        .get('/memfabric-test/b')
        .options({ deadline: Date.now() + 2000 })
        .string()) === '2',
    20_000,
  );
});
