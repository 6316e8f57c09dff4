/**
 * Rebalancing when an appliance joins (src/catalog/rebalance.ts): the planning rule as a
 * property, and the whole thing with real parts — an etcd member, appliance processes that
 * register with --etcd and run controller candidates, a fleet client that keeps one region
 * open while two others are detached. A fourth appliance joins: the controller moves shards
 * onto it until it holds its share, and every byte of every region reads back after.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { sealDescriptor, DESCRIPTOR_FORMAT, type RegionDescriptor } from '../../src/catalog/descriptor.js';
import { EtcdCatalog } from '../../src/catalog/etcd-catalog.js';
import { CONTROLLER_STATUS_KEY } from '../../src/catalog/controller.js';
import { planRebalance } from '../../src/catalog/rebalance.js';
import { Fabric, type ExternalRegion } from '../../src/fabric/index.js';
import { ApplianceProcess, MiB, waitFor } from '../interop/appliance-process.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { seededBytes } from '../fabric/seeded-bytes.js';

function region(id: number, appliances: string[]): RegionDescriptor {
  return sealDescriptor({
    format: DESCRIPTOR_FORMAT,
    id: `r${id}`,
    name: `r${id}`,
    tenant: 'default',
    size: MiB,
    pageSize: 4096,
    redundancy: { data: appliances.length - 1, parity: 1 },
    generation: 1,
    state: 'ready',
    shards: appliances.map((appliance, index) => ({
      index,
      appliance,
      region: `r${id}-${index}`,
      nbd: { host: '127.0.0.1', port: 1 },
      state: 'live',
    })),
    createdAt: 0,
  });
}

test('planRebalance: the new appliance gets at most its share, never two shards of one region, only from fuller ones', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 6 }),
      fc.array(fc.tuple(fc.integer({ min: 2, max: 4 }), fc.integer({ min: 0, max: 1000 })), {
        maxLength: 12,
      }),
      (old, specs) => {
        const urls = Array.from({ length: old }, (_, i) => `http://a${i}`);
        const joined = 'http://new';
        const entries = specs
          .filter(([width]) => width <= old)
          .map(([width, seed], id) => {
            const picked = urls
              .map((u, i) => [u, (i * 7919 + seed) % 1009] as const)
              .sort((a, b) => a[1] - b[1]);
            return {
              descriptor: region(
                id,
                picked.slice(0, width).map(([u]) => u),
              ),
              shardsFound: [],
            };
          });
        const live = new Set([...urls, joined]);
        const moves = planRebalance(entries, live, joined);
        const total = entries.reduce((n, e) => n + e.descriptor.shards.length, 0);
        assert.ok(moves.length <= Math.floor(total / live.size), 'at most its share');
        assert.equal(new Set(moves.map((m) => m.name)).size, moves.length, 'one shard per region');
        const count = new Map(urls.map((u) => [u, 0]));
        for (const e of entries)
          for (const s of e.descriptor.shards) count.set(s.appliance, count.get(s.appliance)! + 1);
        let onNew = 0;
        for (const move of moves) {
          assert.ok(count.get(move.from)! >= onNew + 2, 'only from an appliance with two more shards');
          count.set(move.from, count.get(move.from)! - 1);
          onNew++;
        }
      },
    ),
  );
});

test('an appliance joins: the controller moves shards onto it; open and detached regions keep every byte', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 1 });
  if (!cluster) return;
  const args = ['--etcd', cluster.endpoints.join(','), '--etcd-ttl', '1', '--no-merge'];
  const start = () => ApplianceProcess.start({ memory: '64MiB', args });
  const appliances = await Promise.all([start(), start(), start()]);
  t.after(() => Promise.all(appliances.map((a) => (a.alive ? a.stop() : undefined))));
  const token = appliances[0]!.token;
  const fabric = new Fabric({ etcd: cluster.endpoints, token });
  t.after(() => fabric.close());
  await waitFor('three appliances discovered', async () => (await fabric.appliances()).length === 3, 30_000);

  const size = 2 * MiB;
  const names = ['kept-a', 'open-b', 'kept-c'];
  const regions = new Map<string, ExternalRegion>();
  for (const [i, name] of names.entries()) {
    const made = (await fabric.allocate({
      size,
      redundancy: { data: 2, parity: 1 },
      name,
    })) as ExternalRegion;
    await made.write(0, seededBytes(60 + i, size));
    regions.set(name, made);
  }
  await regions.get('kept-a')!.detach();
  await regions.get('kept-c')!.detach();
  const open = regions.get('open-b')!;

  const joined = await start();
  appliances.push(joined);
  const catalog = new EtcdCatalog({ endpoints: cluster.endpoints });
  t.after(() => catalog.close());
  const onJoined = async () =>
    (await catalog.list()).reduce(
      (n, e) =>
        n + e.descriptor.shards.filter((s) => s.appliance === joined.httpUrl && s.state === 'live').length,
      0,
    );
  // Nine shards over four appliances: its share is two.
  await waitFor('two shards recorded on the new appliance', async () => (await onJoined()) === 2, 90_000);
  await waitFor('the status to list the moves', async () => {
    const now = JSON.parse((await cluster.client().get(CONTROLLER_STATUS_KEY).string())!) as {
      rebalanced: Array<{ to: string }>;
    };
    return now.rebalanced.filter((m) => m.to === joined.httpUrl).length === 2;
  });

  for (const entry of await catalog.list()) {
    const places = entry.descriptor.shards.map((s) => s.appliance);
    assert.equal(new Set(places).size, places.length, `${entry.descriptor.name}: one shard per appliance`);
    assert.ok(
      entry.descriptor.shards.every((s) => s.state === 'live'),
      `${entry.descriptor.name} healthy`,
    );
  }
  assert.ok((await open.read(0, size)).equals(seededBytes(61, size)), 'the open region, through its owner');
  assert.equal(open.health().degraded, false);
  const reader = new Fabric({ etcd: cluster.endpoints, token });
  t.after(() => reader.close());
  for (const name of ['kept-a', 'kept-c']) {
    const again = await reader.open(name);
    assert.equal(again.health().degraded, false, name);
    assert.ok((await again.read(0, size)).equals(seededBytes(60 + names.indexOf(name), size)), name);
    await again.detach();
  }
});
