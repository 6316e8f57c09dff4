/**
 * The fleet controller (src/catalog/controller.ts) with everything real: a 3-member etcd
 * cluster, seven `memfabric appliance --etcd ... --etcd-ttl 1` processes (each runs a
 * controller candidate, sharing one admin token file), and fleet-mode Fabric clients:
 *   - an appliance holding a shard of a region a client has open is SIGKILLed: the controller
 *     asks the owner, and the owner rebuilds it (nobody calls rebuild);
 *   - an appliance holding a shard of a detached region (no client) is SIGKILLed: the
 *     controller opens it, rebuilds it itself and detaches;
 *   - the controller leader's appliance is SIGKILLed: another candidate leads (the status key
 *     names it) and rebuilds the next loss;
 * each time every byte is read back and the catalog lists only live shards on live appliances.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CONTROLLER_STATUS_KEY, type ControllerStatus } from '../../src/catalog/controller.js';
import { EtcdCatalog } from '../../src/catalog/etcd-catalog.js';
import type { RegionDescriptor } from '../../src/catalog/descriptor.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { Fabric } from '../../src/fabric/fabric.js';
import type { ExternalRegion } from '../../src/fabric/external-region.js';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';

const WAIT_MS = 60_000;
const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const CODED = { data: 2, parity: 1 } as const;

test('the controller rebuilds lost shards: through the owner, by itself, and after a leader dies', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 3 });
  if (!cluster) return;
  const endpoints = cluster.endpoints;
  const apps = await Promise.all(
    Array.from({ length: 7 }, async () => {
      const app = await ApplianceProcess.start({
        memory: '48MiB',
        args: ['--etcd', endpoints.join(','), '--etcd-ttl', '1', '--no-merge'],
      });
      t.after(() => app.stop());
      return app;
    }),
  );
  const byUrl = new Map(apps.map((app) => [app.httpUrl, app]));
  const etcd = cluster.client();
  t.after(() => etcd.close());
  const catalog = new EtcdCatalog({ endpoints });
  t.after(() => catalog.close());
  const status = async (): Promise<ControllerStatus | undefined> => {
    const text = await etcd.get(CONTROLLER_STATUS_KEY).string();
    return text === null ? undefined : (JSON.parse(text) as ControllerStatus);
  };
  const leaderApp = (s: ControllerStatus | undefined): ApplianceProcess | undefined =>
    s ? byUrl.get(s.leader.slice(s.leader.indexOf('@') + 1)) : undefined;
  const liveUrls = () => new Set(apps.filter((app) => app.alive).map((app) => app.httpUrl));
  /** The region is healthy in the catalog: every shard live, each on a running appliance. */
  const healthy = async (name: string, after: number): Promise<RegionDescriptor | undefined> => {
    const entry = await catalog.get('default', name);
    const d = entry?.descriptor;
    const live = liveUrls();
    return d && d.generation > after && d.shards.every((s) => s.state === 'live' && live.has(s.appliance))
      ? d
      : undefined;
  };
  const shardApps = (d: RegionDescriptor) => d.shards.map((s) => byUrl.get(s.appliance)!);

  await until(
    'a controller leader to publish its status',
    async () => leaderApp(await status())?.alive === true,
    WAIT_MS,
  );
  const leader = leaderApp(await status())!;
  const others = apps.filter((app) => app !== leader);

  const owner = new Fabric({ etcd: endpoints, token: apps[0]!.token });
  t.after(() => owner.close());
  const detacher = new Fabric({ etcd: endpoints, token: apps[0]!.token });
  t.after(() => detacher.close());
  await until(
    'the fabric to see all seven appliances',
    async () => (await owner.appliances()).length === 7,
    WAIT_MS,
  );

  // "owned" stays open in this process; "idle" is detached (no client has it open).
  const ownedBytes = randomBytes(SIZE);
  const idleBytes = randomBytes(SIZE);
  const owned = (await owner.allocate({
    size: SIZE,
    redundancy: CODED,
    name: 'owned',
    placement: { appliances: others.slice(0, 3).map((app) => app.httpUrl) },
  })) as ExternalRegion;
  await owned.write(0, ownedBytes);
  const idle = (await detacher.allocate({
    size: SIZE,
    redundancy: CODED,
    name: 'idle',
    placement: { appliances: others.slice(3, 6).map((app) => app.httpUrl) },
  })) as ExternalRegion;
  await idle.write(0, idleBytes);
  await idle.detach();

  // 1. A shard of the open region: the owner rebuilds on the controller's request.
  const before1 = owned.descriptor.generation;
  await others[0]!.kill();
  const rebuilt1 = await waitHealthy('owned');
  // Completed by the owner: its rebuild() resolved and it deleted the request (the catalog may
  // show the last generation a moment before the owner's own publication returns).
  await until(
    'the status to list owned as completed by its owner',
    async () => (await status())?.completed.some((c) => c.name === 'owned' && c.by === 'owner') === true,
    WAIT_MS,
  );
  assert.ok(rebuilt1.generation > before1);
  assert.ok(owned.descriptor.generation >= rebuilt1.generation, 'the owner published the rebuild');
  assert.equal(owned.health().lost, 0);
  assert.ok(!shardApps(rebuilt1).includes(others[0]!));
  assert.ok(
    Buffer.from(await owned.read(0, SIZE)).equals(ownedBytes),
    'every byte of owned after its rebuild',
  );

  // 2. A shard of the detached region: the controller rebuilds it itself.
  const before2 = (await catalog.get('default', 'idle'))!.descriptor.generation;
  await others[3]!.kill();
  const rebuilt2 = await waitHealthy('idle', before2);
  assert.ok(!shardApps(rebuilt2).includes(others[3]!));
  await until(
    'the status to list idle as completed by the controller',
    async () => (await status())?.completed.some((c) => c.name === 'idle' && c.by === 'controller') === true,
    WAIT_MS,
  );
  await verifyReopened('idle', idleBytes);

  // 3. The controller leader dies: another candidate leads and still rebuilds.
  await leader.kill();
  await until(
    'another live candidate to lead',
    async () => {
      const next = leaderApp(await status());
      return next !== undefined && next !== leader && next.alive;
    },
    WAIT_MS,
  );
  const newLeader = leaderApp(await status())!;
  // Whatever the old leader's appliance held is rebuilt first; then one more loss.
  await waitHealthy('owned');
  const current = (await catalog.get('default', 'owned'))!.descriptor;
  const victim = shardApps(current).find((app) => app !== newLeader)!;
  await victim.kill();
  const rebuilt3 = await waitHealthy('owned', current.generation);
  assert.ok(!shardApps(rebuilt3).includes(victim));
  assert.ok(
    Buffer.from(await owned.read(0, SIZE)).equals(ownedBytes),
    'every byte of owned after the takeover',
  );
  assert.equal((await status())!.leader.endsWith(newLeader.httpUrl), true);

  async function waitHealthy(name: string, after = -1): Promise<RegionDescriptor> {
    let found: RegionDescriptor | undefined;
    await until(
      `${name} to be healthy again`,
      async () => (found = await healthy(name, after)) !== undefined,
      WAIT_MS,
    );
    return found!;
  }

  async function verifyReopened(name: string, bytes: Buffer): Promise<void> {
    const reader = new Fabric({ etcd: endpoints, token: apps[0]!.token });
    try {
      // The controller has detached; its appliance may count the NBD connection a moment longer.
      let region: ExternalRegion | undefined;
      await until(
        'the region to open',
        async () => (region = await openUnlessBusy(reader, name)) !== undefined,
        WAIT_MS,
      );
      region = region!;
      assert.equal(region.health().lost, 0);
      assert.ok(Buffer.from(await region.read(0, SIZE)).equals(bytes), `every byte of ${name}`);
      await region.detach();
    } finally {
      await reader.close();
    }
  }
});

/** The region opened, or undefined while a shard still counts another client's connection (MF_BUSY). */
async function openUnlessBusy(fabric: Fabric, name: string): Promise<ExternalRegion | undefined> {
  try {
    return await fabric.open(name);
  } catch (error) {
    if (error instanceof MemfabricError && error.code === ErrorCodes.BUSY) return undefined;
    throw error;
  }
}
