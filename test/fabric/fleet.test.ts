/**
 * The fabric in fleet mode (`new Fabric({ etcd })`): a real etcd member, real appliance
 * processes that register themselves with `--etcd`, and fabrics that are given no appliance at
 * all — they discover them. Regions are recorded in etcd's catalog (and still carried by their
 * shards), names are unique by one etcd transaction, and an appliance whose lease expired is
 * no longer a placement candidate. The controller and etcd failover are in test/catalog/.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EtcdKeys } from '../../src/catalog/etcd.js';
import { ErrorCodes } from '../../src/errors.js';
import { Fabric, type ExternalRegion } from '../../src/fabric/index.js';
import { ApplianceProcess, MiB, waitFor } from '../interop/appliance-process.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { seededBytes } from './seeded-bytes.js';

test('fleet mode: discovered appliances, regions in the etcd catalog, unique names, reopen by name', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 1 });
  if (!cluster) return;
  const etcdArgs = ['--etcd', cluster.endpoints.join(','), '--etcd-ttl', '1', '--no-merge'];
  const appliances = await Promise.all(
    Array.from({ length: 4 }, () => ApplianceProcess.start({ memory: '64MiB', args: etcdArgs })),
  );
  t.after(() => Promise.all(appliances.map((a) => (a.alive ? a.kill() : undefined))));
  const token = appliances[0]!.token;
  const fleet = () => new Fabric({ etcd: cluster.endpoints, token });

  const a = fleet();
  const b = fleet();
  t.after(() => Promise.all([a.close(), b.close()]));
  await waitFor('every appliance to be discovered', async () => (await a.appliances()).length === 4, 30_000);

  // One name, two fabrics at once: one etcd transaction decides.
  const size = 4 * MiB;
  const results = await Promise.allSettled([
    a.allocate({ size, redundancy: { data: 2, parity: 1 }, name: 'fleet-region' }),
    b.allocate({ size, redundancy: { data: 2, parity: 1 }, name: 'fleet-region' }),
  ]);
  const won = results.filter((r): r is PromiseFulfilledResult<ExternalRegion> => r.status === 'fulfilled');
  assert.equal(won.length, 1, 'exactly one allocation wins');
  const lost = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')!;
  assert.equal(lost.reason.code, ErrorCodes.ALREADY_EXISTS);
  const region = won[0]!.value as ExternalRegion;
  await region.write(0, seededBytes(5, size));

  // The catalog entry is etcd's: the same descriptor the region holds.
  const stored = await cluster.client().get(EtcdKeys.region('default', 'fleet-region')).string();
  assert.ok(stored, 'the region is in etcd');
  assert.equal(JSON.parse(stored).generation, region.descriptor.generation);
  assert.equal(JSON.parse(stored).state, 'ready');
  const listed = await b.list();
  assert.deepEqual(
    listed.map((r) => [r.name, r.id]),
    [['fleet-region', region.id]],
  );

  await region.detach();
  const reopened = await b.open('fleet-region');
  assert.ok(
    (await reopened.read(0, size)).equals(seededBytes(5, size)),
    'every byte, reopened by another fabric',
  );

  // An appliance whose lease expired is no placement candidate: with one of four gone, a 2+2
  // region (four shards) cannot be placed; 2+1 still can, without it.
  const spare = appliances.find((app) => !reopened.health().shards.some((s) => s.appliance === app.httpUrl))!;
  await spare.kill();
  await waitFor(
    "the dead appliance's lease to expire",
    async () =>
      !Object.values(await cluster.client().getAll().prefix(EtcdKeys.appliances).strings()).some(
        (value) => (JSON.parse(value) as { url: string }).url === spare.httpUrl,
      ),
    30_000,
  );
  await assert.rejects(
    b.allocate({ size, redundancy: { data: 2, parity: 2 }, name: 'too-wide' }),
    (error: { code?: string }) => error.code === ErrorCodes.PLACEMENT_FAILED,
  );
  const other = (await b.allocate({
    size,
    redundancy: { data: 2, parity: 1 },
    name: 'narrow',
  })) as ExternalRegion;
  assert.ok(other.health().shards.every((s) => s.appliance !== spare.httpUrl));
  await other.close();

  // close() frees the shards and the catalog entry; delete() does the same by name.
  await reopened.detach();
  const deleted = await b.delete('fleet-region');
  assert.equal(deleted.shardsDeleted, 3);
  assert.equal(await cluster.client().get(EtcdKeys.region('default', 'fleet-region')).string(), null);
  assert.equal(await cluster.client().get(EtcdKeys.region('default', 'narrow')).string(), null);
  assert.deepEqual(await b.list(), []);
});
