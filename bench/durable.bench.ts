/**
 * Durable fabric figures (issue 11), over real appliance processes on loopback:
 *   - reopening a coded 4+2 region by name (scan, descriptor, six NBD connections) beside
 *     connecting the same six shards directly (what any reopen must do at least);
 *   - allocate/close cycles per second beside the appliance calls alone (create and delete six
 *     shard regions), and the shards and names left behind after every cycle;
 *   - rebuilding a lost shard (reconstructing it from the survivors) beside copying a shard of
 *     the same size from one appliance to another with nbdcopy (raw NBD copy speed).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { ApplianceProcess } from '../test/interop/appliance-process.js';
import { EtcdCluster } from '../test/support/etcd-cluster.js';
import { Fabric, type ExternalRegion } from '../src/fabric/index.js';
import { NbdClient } from '../src/nbd/index.js';
import { median, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const CODED = { data: 4, parity: 2 } as const;
const run = promisify(execFile);

export const durableSuite: Suite = {
  name: 'durable',
  async run(context) {
    const regionBytes = (context.quick ? 64 : 256) * MiB;
    const shardBytes = regionBytes / CODED.data;
    const appliances = await Promise.all(
      Array.from({ length: 7 }, () =>
        ApplianceProcess.start({ memory: `${(2 * shardBytes) / MiB + 96}MiB`, merge: false }),
      ),
    );
    const token = appliances[0]!.token;
    const urls = appliances.slice(0, 6).map((a) => a.httpUrl);
    try {
      const fabric = new Fabric({ appliances: urls, token, requestTimeoutMs: 30_000 });

      // ---- open by name
      const kept = (await fabric.allocate({
        size: 4 * MiB,
        redundancy: CODED,
        name: 'kept',
      })) as ExternalRegion;
      const shards = kept.health().shards;
      await kept.detach();
      const opens: number[] = [];
      const direct: number[] = [];
      const samples = context.quick ? 15 : 41;
      for (let i = 0; i < samples; i++) {
        let started = performance.now();
        const region = await new Fabric({ appliances: urls, token }).open('kept');
        opens.push(performance.now() - started);
        await region.detach();
        started = performance.now();
        const clients = await Promise.all(
          shards.map((shard) => {
            const app = appliances.find((a) => a.httpUrl === shard.appliance)!;
            return NbdClient.connect({ host: app.nbdHost, port: app.nbdPort, exportName: shard.region });
          }),
        );
        direct.push(performance.now() - started);
        await Promise.all(clients.map((client) => client.disconnect()));
      }
      context.record({
        id: 'fabric open of a coded 4+2 region by name (embedded catalog, 6 appliances)',
        unit: 'ms',
        value: median(opens),
        baseline: 'connecting its 6 shards over NBD directly',
        baselineValue: median(direct),
        higherIsBetter: false,
        goal: '<= 50 ms',
      });
      await fabric.delete('kept');

      // ---- open by name in fleet mode: the descriptor from etcd (one member on loopback)
      const cleanups: Array<() => Promise<void>> = [];
      const cluster = await EtcdCluster.start(
        {
          after: (fn) => cleanups.push(fn),
          skip: (message) => context.log(`etcd figure skipped: ${message}`),
        },
        { members: 1 },
      );
      try {
        if (cluster) {
          const fleet = () => new Fabric({ etcd: cluster.endpoints, appliances: urls, token });
          const made = fleet();
          const region = (await made.allocate({
            size: 4 * MiB,
            redundancy: CODED,
            name: 'kept-etcd',
          })) as ExternalRegion;
          const etcdShards = region.health().shards;
          await region.detach();
          await made.close();
          const etcdOpens: number[] = [];
          const etcdDirect: number[] = [];
          for (let i = 0; i < samples; i++) {
            const client = fleet();
            let started = performance.now();
            await client.open('kept-etcd');
            etcdOpens.push(performance.now() - started);
            await client.close(); // detaches the region it opened
            started = performance.now();
            const clients = await Promise.all(
              etcdShards.map((shard) => {
                const app = appliances.find((a) => a.httpUrl === shard.appliance)!;
                return NbdClient.connect({ host: app.nbdHost, port: app.nbdPort, exportName: shard.region });
              }),
            );
            etcdDirect.push(performance.now() - started);
            await Promise.all(clients.map((c) => c.disconnect()));
          }
          context.record({
            id: 'fabric open of a coded 4+2 region by name (etcd catalog, new client each time)',
            unit: 'ms',
            value: median(etcdOpens),
            baseline: 'connecting its 6 shards over NBD directly',
            baselineValue: median(etcdDirect),
            higherIsBetter: false,
            goal: '<= 50 ms',
          });
          const remover = fleet();
          await remover.delete('kept-etcd');
          await remover.close();
        }
      } finally {
        for (const cleanup of cleanups) await cleanup();
      }

      // ---- allocate/close cycles
      const cycles = context.quick ? 60 : 300;
      const cycleRates: number[] = [];
      const rawRates: number[] = [];
      for (let r = 0; r < context.repeats; r++) {
        let started = performance.now();
        for (let i = 0; i < cycles / context.repeats; i++) {
          const region = await fabric.allocate({ size: MiB, redundancy: CODED, name: `cycle-${r}-${i}` });
          await region.close();
        }
        cycleRates.push(cycles / context.repeats / ((performance.now() - started) / 1000));
        started = performance.now();
        for (let i = 0; i < cycles / context.repeats; i++) {
          for (const [index, app] of appliances.slice(0, 6).entries()) {
            await app.api('POST', '/v1/regions', { name: `raw-${r}-${i}-${index}`, size: MiB / 4 });
          }
          await Promise.all(
            appliances
              .slice(0, 6)
              .map((app, index) => app.api('DELETE', `/v1/regions/raw-${r}-${i}-${index}`)),
          );
        }
        rawRates.push(cycles / context.repeats / ((performance.now() - started) / 1000));
      }
      let left = 0;
      for (const app of appliances) {
        const { regions } = (await app.api<{ regions: Array<{ name: string }> }>('GET', '/v1/regions')).body;
        left += regions.filter((region) => region.name !== 'default').length; // each process's own
        left += (await app.api<{ names: unknown[] }>('GET', '/v1/names')).body.names.length;
      }
      context.record({
        id: 'fabric allocate+close cycles of a coded 4+2 region',
        unit: 'cycles/s',
        value: median(cycleRates),
        baseline: 'creating and deleting its 6 shard regions through the admin API alone',
        baselineValue: median(rawRates),
        higherIsBetter: true,
      });
      context.log(`${cycles} allocate/close cycles left ${left} regions or names behind (goal 0)`);

      // ---- rebuild speed: each round kills the appliance of shard 0 and rebuilds onto a fresh one
      const rebuilds: number[] = [];
      const copies: number[] = [];
      const data = randomBytes(16 * MiB);
      let live = appliances.slice(0, 6);
      for (let r = 0; r < Math.min(context.repeats, 3); r++) {
        const spare = await ApplianceProcess.start({
          memory: `${(2 * shardBytes) / MiB + 96}MiB`,
          merge: false,
        });
        appliances.push(spare);
        const rebuilder = new Fabric({
          appliances: live.map((a) => a.httpUrl),
          token,
          requestTimeoutMs: 30_000,
        });
        const region = (await rebuilder.allocate({
          size: regionBytes,
          redundancy: CODED,
          name: `rebuild-${r}`,
        })) as ExternalRegion;
        for (let offset = 0; offset < regionBytes; offset += data.length) await region.write(offset, data);
        // Baseline: copy shard 1 to a fresh region on the spare appliance with nbdcopy.
        const source = region.health().shards[1]!;
        const from = live.find((a) => a.httpUrl === source.appliance)!;
        await spare.createRegion(`copy-${r}`, shardBytes);
        let started = performance.now();
        await run('nbdcopy', ['--requests=16', from.uri(source.region), spare.uri(`copy-${r}`)]);
        copies.push(shardBytes / ((performance.now() - started) / 1000) / 1e9);
        await spare.api('DELETE', `/v1/regions/copy-${r}`);
        // Lose shard 0 with its appliance; the next read notices, then rebuild onto the spare.
        const victim = live.find((a) => a.httpUrl === region.health().shards[0]!.appliance)!;
        await victim.kill();
        await region.read(0, 4096);
        live = [...live.filter((a) => a !== victim), spare];
        started = performance.now();
        await region.rebuild({ appliances: [spare.httpUrl] });
        rebuilds.push(shardBytes / ((performance.now() - started) / 1000) / 1e9);
        await region.close();
      }
      context.record({
        id: `fabric rebuild of one shard of a ${regionBytes / MiB} MiB coded 4+2 region`,
        unit: 'GB/s',
        value: median(rebuilds),
        baseline: 'nbdcopy of a shard of the same size between two appliances',
        baselineValue: median(copies),
        higherIsBetter: true,
        goal: '>= 0.5x',
      });
      await fabric.close();
    } finally {
      await Promise.all(appliances.map((a) => (a.alive ? a.stop() : undefined)));
    }
  },
};
