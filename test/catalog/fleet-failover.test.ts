/**
 * The "kill the etcd leader during allocations: nothing lost, operations continue",
 * with everything real: a 3-member etcd cluster, six `memfabric appliance --etcd ...`
 * processes, and two fleet-mode Fabric clients each running a loop of allocate (coded 2+1),
 * write, read back, then detach (kept) or close (freed). The etcd leader is SIGKILLed once both
 * clients have done a few rounds; every client keeps going (no operation fails), and at the end
 * every kept region reopens by name from a third client with every byte, the catalog lists
 * exactly the kept regions, and none is left half-made.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Fabric } from '../../src/fabric/fabric.js';
import type { ExternalRegion } from '../../src/fabric/external-region.js';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';

const WAIT_MS = 60_000;
/** Rounds each client does before the kill, and at least after it. */
const ROUNDS_BEFORE = 3;
const ROUNDS_AFTER = 5;
/** The whole loop's bound. */
const LOOP_MS_MAX = 90_000;
const SIZE = 1024 * 1024;

test(
  'the etcd leader is killed during allocations: nothing lost, operations continue',
  { timeout: 300_000 },
  async (t) => {
    // Hooks run in the order they are registered, and the cluster registers its stop when it
    // starts: this one, registered first, closes the clients and stops the appliances while etcd
    // is still up. (In the other order a client's close met a dead cluster and the run hung.)
    const fabrics: Fabric[] = [];
    const processes: ApplianceProcess[] = [];
    t.after(async () => {
      await Promise.allSettled(fabrics.map((fabric) => fabric.close()));
      await Promise.allSettled(processes.map((app) => app.stop()));
    });
    const cluster = await EtcdCluster.start(t, { members: 3 });
    if (!cluster) return;
    const endpoints = cluster.endpoints;
    const apps = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const app = await ApplianceProcess.start({
          memory: '48MiB',
          args: ['--etcd', endpoints.join(','), '--etcd-ttl', '2', '--no-merge'],
        });
        processes.push(app);
        return app;
      }),
    );
    const token = apps[0]!.token;
    const clients = ['a', 'b'].map((name) => {
      const fabric = new Fabric({ etcd: endpoints, token });
      fabrics.push(fabric);
      return { name, fabric, rounds: 0, roundsAfterKill: 0 };
    });
    await until(
      'both clients to see the six appliances',
      async () =>
        (await Promise.all(clients.map((c) => c.fabric.appliances()))).every((list) => list.length === 6),
      WAIT_MS,
    );

    const kept = new Map<string, Buffer>();
    let killed = false;
    let killing: Promise<void> | undefined;
    const deadline = Date.now() + LOOP_MS_MAX;
    await Promise.all(
      clients.map(async (client) => {
        while (client.roundsAfterKill < ROUNDS_AFTER) {
          assert.ok(
            Date.now() < deadline,
            `client ${client.name}: ${client.roundsAfterKill} rounds after the kill in ${LOOP_MS_MAX} ms`,
          );
          const name = `${client.name}-${client.rounds}`;
          const bytes = randomBytes(SIZE);
          const region = (await client.fabric.allocate({
            size: SIZE,
            redundancy: { data: 2, parity: 1 },
            name,
          })) as ExternalRegion;
          await region.write(0, bytes);
          assert.ok(Buffer.from(await region.read(0, SIZE)).equals(bytes), `${name} reads back`);
          if (client.rounds % 2 === 0) {
            await region.detach();
            kept.set(name, bytes);
          } else {
            await region.close();
          }
          const afterKill = killed;
          client.rounds++;
          if (afterKill) client.roundsAfterKill++;
          if (!killing && clients.every((c) => c.rounds >= ROUNDS_BEFORE)) {
            killing = cluster.leader().then(async (leader) => {
              await cluster.kill(leader);
              killed = true;
            });
          }
          if (killing && !killed) await killing;
        }
      }),
    );

    // A third client finds every kept region, and only those, with every byte.
    const reader = new Fabric({ etcd: endpoints, token });
    fabrics.push(reader);
    const listed = await reader.list();
    assert.deepEqual(
      listed.map((r) => r.name).sort(),
      [...kept.keys()].sort(),
      'the catalog lists exactly the kept regions',
    );
    assert.ok(listed.every((r) => r.state === 'ready' && !r.degraded));
    for (const [name, bytes] of kept) {
      const region = await reader.open(name);
      assert.ok(Buffer.from(await region.read(0, SIZE)).equals(bytes), `every byte of ${name}`);
      await region.detach();
    }
  },
);
