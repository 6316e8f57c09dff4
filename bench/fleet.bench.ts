/**
 * Fleet controller figures (issue 11), everything real on loopback: one etcd member, five
 * `memfabric appliance --etcd ... --etcd-ttl 1` processes (each a controller candidate), and
 * two coded 2+1 regions of 256 MiB (64 MiB with --quick) written full, both with a shard on one
 * appliance: "owned" stays open in this process (its owner rebuilds on the controller's
 * request), "idle" is detached (the controller rebuilds it itself). That appliance is
 * SIGKILLed, and nobody calls rebuild:
 *   - the time from the SIGKILL to the first rebuild starting (a shard recorded `rebuilding`),
 *     beside two lease TTLs (the goal: it starts within 2 TTLs of the death);
 *   - the time from the SIGKILL to every affected region healthy again, beside the lease TTL;
 *   - rebuild throughput (a shard's bytes over the time its shard was `rebuilding`), beside an
 *     nbdcopy of one shard between two appliances in the same run (raw NBD copy; goal ≥ 0.5×).
 * One death per run (each costs a fleet), so these are single samples, not medians.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { CONTROLLER_STATUS_KEY, type ControllerStatus } from '../src/catalog/controller.js';
import { EtcdCatalog } from '../src/catalog/etcd-catalog.js';
import type { RegionDescriptor } from '../src/catalog/descriptor.js';
import { Fabric, type ExternalRegion } from '../src/fabric/index.js';
import { ApplianceProcess } from '../test/interop/appliance-process.js';
import { EtcdCluster, etcdMissing, until } from '../test/support/etcd-cluster.js';
import type { Suite } from './harness.js';

const MiB = 1024 * 1024;
const CODED = { data: 2, parity: 1 } as const;
const TTL_SECONDS = 1;
/**
 * The TTL etcd actually grants: it raises a TTL below 1.5 election timeouts to that, and the
 * test cluster's election timeout is 1 s (test/support/etcd-cluster.ts).
 */
const GRANTED_TTL_MS = Math.max(TTL_SECONDS * 1000, 1500);
const WAIT_MS = 300_000;
/** How often the catalog is looked at while the rebuilds run. */
const POLL_MS = 20;
const run = promisify(execFile);

export const fleetSuite: Suite = {
  name: 'fleet',
  async run(context) {
    const missing = etcdMissing();
    if (missing) {
      context.log(`fleet: skipped (${missing})`);
      return;
    }
    const regionBytes = (context.quick ? 64 : 256) * MiB;
    const shardBytes = regionBytes / CODED.data;
    const cleanups: Array<() => Promise<void>> = [];
    const cluster = (await EtcdCluster.start(
      { after: (fn) => cleanups.push(fn), skip: () => undefined },
      { members: 1 },
    ))!;
    try {
      const endpoints = cluster.endpoints;
      const apps = await Promise.all(
        Array.from({ length: 5 }, () =>
          ApplianceProcess.start({
            memory: `${(3 * shardBytes) / MiB + 64}MiB`,
            merge: false,
            args: ['--etcd', endpoints.join(','), '--etcd-ttl', String(TTL_SECONDS)],
          }),
        ),
      );
      cleanups.push(async () => {
        await Promise.all(apps.map((app) => app.stop()));
      });
      const etcd = cluster.client();
      cleanups.push(() => Promise.resolve(etcd.close()));
      const catalog = new EtcdCatalog({ endpoints });
      cleanups.push(() => catalog.close());
      const status = async (): Promise<ControllerStatus | undefined> => {
        const text = await etcd.get(CONTROLLER_STATUS_KEY).string();
        return text === null ? undefined : (JSON.parse(text) as ControllerStatus);
      };
      await until('a controller leader', async () => (await status()) !== undefined, WAIT_MS);
      const leaderUrl = (await status())!.leader.replace(/^[^@]*@/, '');
      const others = apps.filter((app) => app.httpUrl !== leaderUrl);
      const placed = others.slice(0, 3).map((app) => app.httpUrl);
      const token = apps[0]!.token;

      const owner = new Fabric({ etcd: endpoints, token, requestTimeoutMs: 30_000 });
      cleanups.push(() => owner.close());
      await until('five appliances discovered', async () => (await owner.appliances()).length === 5, WAIT_MS);
      const data = randomBytes(16 * MiB);
      const fill = async (region: ExternalRegion): Promise<void> => {
        for (let offset = 0; offset < regionBytes; offset += data.length) await region.write(offset, data);
      };
      const owned = (await owner.allocate({
        size: regionBytes,
        redundancy: CODED,
        name: 'owned',
        placement: { appliances: placed },
      })) as ExternalRegion;
      await fill(owned);
      const idleFabric = new Fabric({ etcd: endpoints, token, requestTimeoutMs: 30_000 });
      cleanups.push(() => idleFabric.close());
      const idle = (await idleFabric.allocate({
        size: regionBytes,
        redundancy: CODED,
        name: 'idle',
        placement: { appliances: placed },
      })) as ExternalRegion;
      await fill(idle);
      const idleShard = idle.health().shards[1]!;
      await idle.detach();

      // Baseline: nbdcopy of one shard (idle's shard 1) to a fresh region on a spare appliance.
      const from = apps.find((app) => app.httpUrl === idleShard.appliance)!;
      const spare = apps.find((app) => !placed.includes(app.httpUrl))!;
      await spare.createRegion('copy', shardBytes);
      const started = performance.now();
      await run('nbdcopy', ['--requests=16', from.uri(idleShard.region), spare.uri('copy')]);
      const copyGBps = shardBytes / ((performance.now() - started) / 1000) / 1e9;
      await spare.api('DELETE', '/v1/regions/copy');

      // The death: the appliance of shard 0 of both regions.
      const victim = apps.find((app) => app.httpUrl === placed[0])!;
      const names = ['owned', 'idle'];
      const rebuildingSince = new Map<string, number>();
      const healthyAt = new Map<string, number>();
      const killedAt = performance.now();
      await victim.kill();
      const live = () => new Set(apps.filter((app) => app.alive).map((app) => app.httpUrl));
      const healthy = (d: RegionDescriptor) =>
        d.shards.every((shard) => shard.state === 'live' && live().has(shard.appliance));
      await until(
        'both regions healthy again',
        async () => {
          const now = performance.now();
          for (const name of names) {
            if (healthyAt.has(name)) continue;
            const d = (await catalog.get('default', name))?.descriptor;
            if (!d) continue;
            if (!rebuildingSince.has(name) && d.shards.some((shard) => shard.state === 'rebuilding')) {
              rebuildingSince.set(name, now);
            }
            if (healthy(d) && !d.shards.some((shard) => shard.appliance === victim.httpUrl)) {
              healthyAt.set(name, now);
            }
          }
          return healthyAt.size === names.length;
        },
        WAIT_MS,
        POLL_MS,
      );
      const firstStart = Math.min(...names.map((name) => rebuildingSince.get(name) ?? Infinity)) - killedAt;
      const allHealthy = Math.max(...healthyAt.values()) - killedAt;
      const rates = names
        .filter((name) => rebuildingSince.has(name))
        .map((name) => shardBytes / ((healthyAt.get(name)! - rebuildingSince.get(name)!) / 1000) / 1e9);
      const rebuildGBps = rates.length > 0 ? Math.min(...rates) : Number.NaN;
      const ttlMs = GRANTED_TTL_MS;
      await until(
        'the status to list both rebuilds',
        async () => (await status())?.completed.length === 2,
        WAIT_MS,
      );
      const by = (await status())!.completed.map((c) => `${c.name} by ${c.by} in ${c.ms} ms`).join(', ');
      context.log(
        `fleet: one SIGKILL, 2 regions of ${regionBytes / MiB} MiB (coded 2+1); ${by}; --etcd-ttl ${TTL_SECONDS} ` +
          `is granted as ${GRANTED_TTL_MS} ms by etcd (its minimum, 1.5 election timeouts)`,
      );
      context.record({
        id: `time from an appliance's SIGKILL to the first automatic rebuild starting (lease TTL ${GRANTED_TTL_MS} ms)`,
        unit: 'ms',
        value: firstStart,
        baseline: 'two lease TTLs as etcd grants them',
        baselineValue: 2 * ttlMs,
        higherIsBetter: false,
        goal: '<= 1.0x (starts within 2 TTLs)',
      });
      context.record({
        id: `time from an appliance's SIGKILL to every affected region healthy (2 x ${regionBytes / MiB} MiB, coded 2+1)`,
        unit: 'ms',
        value: allHealthy,
        baseline: 'the lease TTL as etcd grants it',
        baselineValue: ttlMs,
        higherIsBetter: false,
      });
      context.record({
        id: 'automatic rebuild throughput (slower of the two regions, one shard each)',
        unit: 'GB/s',
        value: rebuildGBps,
        baseline: 'nbdcopy of a shard of the same size between two appliances',
        baselineValue: copyGBps,
        higherIsBetter: true,
        goal: '>= 0.5x',
      });
      const check = Buffer.from(await owned.read(0, data.length));
      if (!check.equals(data))
        throw new Error('fleet bench: owned region reads back wrong after its rebuild');
    } finally {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    }
  },
};
