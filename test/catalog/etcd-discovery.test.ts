/**
 * Discovery of live appliances from etcd (src/catalog/etcd-discovery.ts) with real appliance
 * processes started as `memfabric appliance --etcd URL,URL,URL --etcd-ttl 1` against a real
 * 3-member etcd cluster:
 *   - every started appliance appears, with its admin URL and NBD endpoint;
 *   - a SIGKILLed appliance's key vanishes once its lease expires and discovery drops it (a
 *     'down' event with its last record, as a controller would watch for), and placement
 *     over discovery's view no longer picks it;
 *   - a SIGTERMed appliance revokes its lease: dropped too, and it exits 0;
 *   - with the etcd leader killed, a new appliance still appears (the watch resumes);
 *   - an appliance restarted on its data directory keeps its id, and re-registers once the
 *     lease of its killed predecessor has expired;
 *   - a bad --etcd URL stops the CLI before it serves anything.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApplianceDiscovery, type DiscoveryEvent } from '../../src/catalog/etcd-discovery.js';
import { EtcdKeys } from '../../src/catalog/etcd.js';
import { ErrorCodes } from '../../src/errors.js';
import { place } from '../../src/fabric/placement.js';
import { ApplianceProcess, tempDir } from '../interop/appliance-process.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';

const WAIT_MS = 30_000;

test('discovery follows real appliance processes through etcd', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 3 });
  if (!cluster) return;
  const discovery = await ApplianceDiscovery.start({ endpoints: cluster.endpoints });
  t.after(() => discovery.close());
  const events: DiscoveryEvent[] = [];
  discovery.onChange((event) => events.push(event));
  const etcdArgs = ['--etcd', cluster.endpoints.join(','), '--etcd-ttl', '1', '--no-merge'];
  const start = async (dataDir?: string) => {
    const app = await ApplianceProcess.start({
      memory: '32MiB',
      args: etcdArgs,
      ...(dataDir ? { dataDir } : {}),
    });
    t.after(() => app.stop());
    return app;
  };
  const idOf = (app: ApplianceProcess) => discovery.live().find((a) => a.url === app.httpUrl)?.id;
  const listed = (app: ApplianceProcess) => idOf(app) !== undefined;

  const apps = await Promise.all([start(), start(), start()]);
  await until('three appliances in discovery', () => apps.every(listed), WAIT_MS);
  for (const app of apps) {
    const record = discovery.live().find((a) => a.url === app.httpUrl)!;
    assert.deepEqual(record.nbd, { host: app.nbdHost, port: app.nbdPort });
    assert.ok(record.capacityBytes === 32 * 1024 * 1024 && record.freeBytes > 0);
    const logged = app.logs.find((l) => l.msg === 'appliance listening');
    assert.equal(logged?.etcdKey, EtcdKeys.appliance(record.id));
  }
  assert.deepEqual(
    discovery
      .states()
      .map((s) => s.url)
      .sort(),
    apps.map((a) => a.httpUrl).sort(),
  );

  // SIGKILL: nothing revokes the lease; the key goes when it expires.
  const [victim, clean, survivor] = apps as [ApplianceProcess, ApplianceProcess, ApplianceProcess];
  const victimId = idOf(victim)!;
  await victim.kill();
  await until('the killed appliance to drop out', () => !listed(victim), WAIT_MS);
  const down = events.find((e) => e.type === 'down' && e.appliance.id === victimId);
  assert.equal(down?.appliance.url, victim.httpUrl, 'a down event carries the last record');
  const client = cluster.client();
  t.after(() => client.close());
  assert.equal(await client.get(EtcdKeys.appliance(victimId)).string(), null, 'its key is gone from etcd');
  assert.ok(listed(survivor) && listed(clean));
  // Placement over discovery's view uses only the live appliances.
  const placed = place(discovery.states(), { shards: 2, shardBytes: 1024 * 1024 }).map((a) => a.url);
  assert.deepEqual(placed.sort(), [clean.httpUrl, survivor.httpUrl].sort());
  assert.throws(() => place(discovery.states(), { shards: 3, shardBytes: 1024 * 1024 }), {
    code: ErrorCodes.PLACEMENT_FAILED,
  });

  // SIGTERM: the lease is revoked on the way out.
  const cleanId = idOf(clean)!;
  assert.deepEqual(await clean.stop(), { code: 0, signal: null });
  await until('the stopped appliance to drop out', () => !listed(clean), WAIT_MS);
  assert.ok(!clean.logs.some((l) => /could not revoke/.test(String(l.msg))), 'revoked cleanly');
  assert.equal(await client.get(EtcdKeys.appliance(cleanId)).string(), null);

  // The etcd leader dies; a new appliance still shows up (the watch moved to a survivor).
  await cluster.kill(await cluster.leader());
  const newcomer = await start();
  await until('the newcomer in discovery after the etcd failover', () => listed(newcomer), WAIT_MS);
  assert.ok(events.some((e) => e.type === 'up' && e.appliance.url === newcomer.httpUrl));
  assert.ok(listed(survivor), 'the survivor kept its registration through the failover');

  // A data directory keeps the id; a restart right after a SIGKILL waits out the old lease.
  const dataDir = tempDir(t, 'memfabric-disc-');
  const first = await start(dataDir);
  await until('the data-dir appliance in discovery', () => listed(first), WAIT_MS);
  const stableId = idOf(first)!;
  await first.kill();
  const second = await start(dataDir);
  await until('the restarted appliance under its old id', () => idOf(second) === stableId, WAIT_MS);
  assert.equal(discovery.live().filter((a) => a.id === stableId).length, 1);

  // The CLI refuses what cannot be an etcd client URL before serving anything.
  await assert.rejects(
    ApplianceProcess.start({ args: ['--etcd', '10.0.0.1:2379'] }),
    /exited.*before listening[\s\S]*not an etcd client URL/,
  );
});
